{# Features joined with labels as of label maturity: a transaction is in the training set once
   label_maturity_days have passed (as of `as_of`, default the newest event), and it is labelled
   fraud only if its fraud label was known by then. #}
{%- set maturity = var('label_maturity_days') | int -%}
with as_of as (
    {% if var('as_of') -%}
    select cast('{{ var("as_of") }}' as timestamp) as as_of_time
    {%- else -%}
    select max(event_time) as as_of_time from {{ ref('stg_transactions') }}
    {%- endif %}
),

fraud_labels as (
    select transaction_id, min(label_time) as fraud_label_time
    from {{ ref('stg_labels') }}
    where label = 1
    group by 1
)

select
    f.*,
    {{ add_days_ts('f.event_time', maturity) }} as label_mature_time,
    case when l.fraud_label_time <= {{ add_days_ts('f.event_time', maturity) }} then 1 else 0 end as label
from {{ ref('transaction_features') }} as f
left join fraud_labels as l on l.transaction_id = f.transaction_id
cross join as_of
where {{ add_days_ts('f.event_time', maturity) }} <= as_of.as_of_time
