{# Daily partitions: Dagster passes min_day/max_day (inclusive ISO dates) of the partition range.
   Without them every day is built. #}

{% macro has_day_range() -%}
  {{ return(var('min_day') is not none and var('min_day') != '') }}
{%- endmacro %}

{% macro target_days(col) -%}
  {%- if has_day_range() -%}
    {{ col }} between cast('{{ var("min_day") }}' as date) and cast('{{ var("max_day") }}' as date)
  {%- else -%}
    true
  {%- endif -%}
{%- endmacro %}

{# The days a window feature needs as context: `days_back` days before the first target day. #}
{% macro context_days(col, days_back) -%}
  {%- if has_day_range() -%}
    {{ col }} between {{ add_days("cast('" ~ var('min_day') ~ "' as date)", -days_back) }}
      and cast('{{ var("max_day") }}' as date)
  {%- else -%}
    true
  {%- endif -%}
{%- endmacro %}

{# Incremental models delete the days they are about to rebuild, so a day can be re-run idempotently. #}
{% macro delete_target_days(col='event_date') -%}
  {%- if is_incremental() -%}
    delete from {{ this }} where {{ target_days(col) }}
  {%- else -%}
    select 1
  {%- endif -%}
{%- endmacro %}
