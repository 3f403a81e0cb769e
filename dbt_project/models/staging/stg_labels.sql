{# The labels of the transaction decider, from two sources, each with the time it became known:
   chargebacks and confirmed frauds of the source (raw.labels, label_source 'chargeback') and the
   outcomes analysts recorded on review cases (raw.analyst_labels, label_source 'analyst', known when
   the case was resolved). Only label_time may decide when a label is usable. An analyst label names a
   transaction the warehouse holds and is not known before it happened; one for a transaction not
   ingested yet waits for it. fraud_scenario is label metadata: kept for analysis (backtests by
   scenario), never a feature input. #}
select
    cast(l.transaction_id as varchar) as transaction_id,
    cast(l.label as integer) as label,
    cast(l.label_time as timestamp) as label_time,
    l.fraud_scenario,
    cast(l.event_date as date) as event_date,
    'chargeback' as label_source
from {{ source('raw', 'labels') }} as l

union all

select
    cast(a.entity_id as varchar) as transaction_id,
    cast(a.label as integer) as label,
    cast(a.label_time as timestamp) as label_time,
    cast(null as varchar) as fraud_scenario,
    t.event_date,
    'analyst' as label_source
from {{ source('raw', 'analyst_labels') }} as a
inner join {{ ref('stg_transactions') }} as t on t.transaction_id = a.entity_id
where a.decider = '{{ var("labels_decider") }}'
  and cast(a.label_time as timestamp) >= t.event_time
