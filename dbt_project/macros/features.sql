{# Feature SQL generated from the feature specification (macros/generated/feature_spec.sql).
   The semantics are documented in mlp_platform/features/feature_spec.yaml; the online store
   implements the same ones, and tests compare both with an independent computation. #}

{% macro spec_view(view_name) -%}
  {%- for v in feature_spec()['views'] if v['name'] == view_name -%}
    {{ return(v) }}
  {%- endfor -%}
  {{ exceptions.raise_compiler_error("feature view '" ~ view_name ~ "' is not in the feature spec") }}
{%- endmacro %}

{% macro spec_entity_key(view) -%}
  {{ return(feature_spec()['entities'][view['entity']]['key']) }}
{%- endmacro %}

{% macro _window_seconds(view) -%}
  {%- set ws = [] -%}
  {%- for f in view['features'] if f['window_seconds'] is not none and f['window_seconds'] not in ws -%}
    {%- do ws.append(f['window_seconds']) -%}
  {%- endfor -%}
  {{ return(ws) }}
{%- endmacro %}

{# A streaming view: one row per transaction with the entity's window features, ordered by
   (event_time, transaction_id); windows are (t - w, t] in time and end at the transaction itself. #}
{% macro streaming_feature_view(view_name) %}
{%- set view = spec_view(view_name) -%}
{%- set key = spec_entity_key(view) -%}
{%- set lookback_us = view['lookback_seconds'] * 1000000 -%}
{%- set lookback_days = (view['lookback_seconds'] / 86400) | round(0, 'ceil') | int -%}
{%- set windows = _window_seconds(view) -%}
{%- set columns = [] -%}
{%- for f in view['features'] if f['column'] is not none and f['column'] not in columns and f['column'] != key -%}
  {%- do columns.append(f['column']) -%}
{%- endfor -%}
{%- set order = 'partition by entity_key order by t_us, transaction_id' -%}
with events as (
    select
        transaction_id,
        event_date,
        {{ key }} as entity_key,
        {{ epoch_us('event_time') }} as t_us{% for c in columns %},
        {{ c }}{% endfor %}
    from {{ ref('stg_transactions') }}
    where {{ key }} is not null and {{ context_days('event_date', lookback_days) }}
),

framed as (
    select
        *,
        count(*) over (partition by entity_key, t_us)
          - row_number() over (partition by entity_key, t_us order by transaction_id) as later_ties
        {%- for w in windows %},
        count(*) over (partition by entity_key order by t_us
                       range between {{ w * 1000000 - 1 }} preceding and current row) as n_range_{{ w }}
        {%- endfor %}
    from events
),

offsets as (
    select
        *{% for w in windows %},
        n_range_{{ w }} - later_ties - 1 as off_{{ w }}{% endfor %}
    from framed
),

aggregated as (
    select
        transaction_id,
        event_date{% for c in columns %},
        {{ c }}{% endfor %}
        {%- for f in view['features'] %}
        {%- set frame = 'rows between off_' ~ f['window_seconds'] ~ ' preceding and current row' %}
        {%- if f['kind'] == 'window_agg' and f['agg'] == 'count' %},
        off_{{ f['window_seconds'] }} + 1 as {{ f['name'] }}
        {%- elif f['kind'] == 'window_agg' and f['agg'] == 'sum' %},
        sum({{ f['column'] }}) over ({{ order }} {{ frame }}) as {{ f['name'] }}
        {%- elif f['kind'] == 'window_agg' and f['agg'] == 'mean' %},
        avg({{ f['column'] }}) over ({{ order }} {{ frame }}) as {{ f['name'] }}
        {%- elif f['kind'] == 'window_agg' and f['agg'] == 'max' %},
        max({{ f['column'] }}) over ({{ order }} {{ frame }}) as {{ f['name'] }}
        {%- elif f['kind'] == 'window_distinct' %},
        count(distinct {{ f['column'] }}) over ({{ order }} {{ frame }}) as {{ f['name'] }}
        {%- elif f['kind'] == 'seconds_since_previous' %},
        case when lag(t_us) over ({{ order }}) > t_us - {{ lookback_us }}
             then (t_us - lag(t_us) over ({{ order }})) / 1000000.0 end as {{ f['name'] }}
        {%- elif f['kind'] == 'first_time' %},
        case when {{ f['column'] }} is null then 0
             when coalesce(lag(t_us) over (partition by entity_key, {{ f['column'] }} order by t_us, transaction_id)
                           <= t_us - {{ lookback_us }}, true) then 1
             else 0 end as {{ f['name'] }}
        {%- endif %}
        {%- endfor %}
    from offsets
)

select
    transaction_id,
    event_date
    {%- for f in view['features'] %},
    {% if f['kind'] == 'ratio_to_feature' -%}
    {{ f['column'] }} / nullif({{ f['denominator'] }}, 0)
    {%- elif f['dtype'] == 'int' -%}
    cast({{ f['name'] }} as bigint)
    {%- else -%}
    cast({{ f['name'] }} as double)
    {%- endif %} as {{ f['name'] }}
    {%- endfor %}
from aggregated
where {{ target_days('event_date') }}
{% endmacro %}


{# A batch view of label rates: per entity and day D, as of the start of D, from the transactions of
   the w whole days ending label_delay_days before D (days D-delay-w .. D-delay-1) and the fraud
   labels known (label_time) at that instant. #}
{% macro label_rate_feature_view(view_name) %}
{%- set view = spec_view(view_name) -%}
{%- set key = spec_entity_key(view) -%}
{%- set delay = var('label_delay_days') | int -%}
{%- set windows = _window_seconds(view) -%}
{%- set max_days = ((windows | max) / 86400) | int -%}
with daily as (
    select {{ key }} as entity_key, event_date, {{ day_number('event_date') }} as day_num, count(*) as n_tx
    from {{ ref('stg_transactions') }}
    where {{ key }} is not null and {{ context_days('event_date', delay + max_days) }}
    group by 1, 2, 3
),

denominators as (
    select
        entity_key,
        event_date,
        day_num{% for w in windows %},
        coalesce(sum(n_tx) over (partition by entity_key order by day_num
            range between {{ delay + (w / 86400) | int }} preceding and {{ delay + 1 }} preceding), 0) as n_tx_{{ w }}
        {%- endfor %}
    from daily
),

{# one row per fraudulent transaction, known from its first fraud label on #}
fraud_labels as (
    select transaction_id, min(label_time) as label_time
    from {{ ref('stg_labels') }}
    where label = 1
    group by 1
),

known_frauds as (
    select t.{{ key }} as entity_key, {{ day_number('t.event_date') }} as day_num, l.label_time
    from {{ ref('stg_transactions') }} as t
    inner join fraud_labels as l on l.transaction_id = t.transaction_id
    where t.{{ key }} is not null and {{ context_days('t.event_date', delay + max_days) }}
),

numerators as (
    select
        d.entity_key,
        d.event_date{% for w in windows %},
        count(case when f.day_num >= d.day_num - {{ delay + (w / 86400) | int }} then 1 end) as n_fraud_{{ w }}
        {%- endfor %}
    from denominators as d
    inner join known_frauds as f
        on f.entity_key = d.entity_key
        and f.day_num between d.day_num - {{ delay + max_days }} and d.day_num - {{ delay + 1 }}
        and f.label_time <= cast(d.event_date as timestamp)
    group by 1, 2
)

select
    d.entity_key as {{ key }},
    d.event_date as as_of_date
    {%- for f in view['features'] %},
    cast(case when d.n_tx_{{ f['window_seconds'] }} > 0
              then coalesce(n.n_fraud_{{ f['window_seconds'] }}, 0) / d.n_tx_{{ f['window_seconds'] }}
              else 0 end as double) as {{ f['name'] }}
    {%- endfor %}
from denominators as d
left join numerators as n on n.entity_key = d.entity_key and n.event_date = d.event_date
where {{ target_days('d.event_date') }}
{% endmacro %}


{# On-demand features: computed from the transaction row itself (alias `t`). #}
{% macro on_demand_feature(f) -%}
  {%- if f['kind'] == 'request_value' -%}
    cast(t.{{ f['column'] }} as double)
  {%- elif f['kind'] == 'hour_of_day' -%}
    cast(extract(hour from t.event_time) as bigint)
  {%- elif f['kind'] == 'is_night' -%}
    {%- set start, end = f['params']['start_hour'], f['params']['end_hour'] -%}
    {%- set op = 'or' if start > end else 'and' -%}
    cast(case when extract(hour from t.event_time) >= {{ start }}
               {{ op }} extract(hour from t.event_time) < {{ end }} then 1 else 0 end as bigint)
  {%- elif f['kind'] == 'is_weekend' -%}
    cast(case when {{ iso_day_of_week('t.event_time') }} in (6, 7) then 1 else 0 end as bigint)
  {%- else -%}
    {{ exceptions.raise_compiler_error("unknown on-demand feature kind " ~ f['kind']) }}
  {%- endif -%}
{%- endmacro %}


{# All features of a transaction, joined from their views, in the spec's canonical column order. #}
{% macro transaction_features() %}
{%- set spec = feature_spec() -%}
select
    t.transaction_id,
    t.event_time,
    t.event_date,
    t.customer_id,
    t.merchant_id,
    t.channel,
    t.country,
    t.merchant_category,
    t.currency
    {%- for v in spec['views'] %}{% for f in v['features'] %},
    {% if v['mode'] == 'on_demand' -%}
    {{ on_demand_feature(f) }}
    {%- elif v['mode'] == 'batch' -%}
    coalesce({{ v['name'] }}.{{ f['name'] }}, 0)
    {%- else -%}
    {{ v['name'] }}.{{ f['name'] }}
    {%- endif %} as {{ f['name'] }}
    {%- endfor %}{% endfor %},
    '{{ feature_spec_hash() }}' as feature_spec_hash
from {{ ref('stg_transactions') }} as t
{%- for v in spec['views'] %}
{%- if v['mode'] == 'streaming' %}
left join {{ ref('fv_' ~ v['name']) }} as {{ v['name'] }}
    on {{ v['name'] }}.transaction_id = t.transaction_id and {{ target_days(v['name'] ~ '.event_date') }}
{%- elif v['mode'] == 'batch' %}
{%- set key = spec['entities'][v['entity']]['key'] %}
left join {{ ref('fv_' ~ v['name']) }} as {{ v['name'] }}
    on {{ v['name'] }}.{{ key }} = t.{{ key }} and {{ v['name'] }}.as_of_date = t.event_date
    and {{ target_days(v['name'] ~ '.as_of_date') }}
{%- endif %}
{%- endfor %}
where {{ target_days('t.event_date') }}
{% endmacro %}
