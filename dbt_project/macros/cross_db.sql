{# Small cross-database helpers (DuckDB locally, Snowflake in production). #}

{% macro epoch_us(ts) -%}{{ adapter.dispatch('epoch_us')(ts) }}{%- endmacro %}
{% macro default__epoch_us(ts) -%}date_part(epoch_microsecond, {{ ts }}){%- endmacro %}
{% macro duckdb__epoch_us(ts) -%}epoch_us({{ ts }}){%- endmacro %}

{% macro day_number(d) -%}datediff('day', cast('1970-01-01' as date), {{ d }}){%- endmacro %}

{% macro add_days(d, n) -%}{{ adapter.dispatch('add_days')(d, n) }}{%- endmacro %}
{% macro default__add_days(d, n) -%}dateadd(day, {{ n }}, {{ d }}){%- endmacro %}
{% macro duckdb__add_days(d, n) -%}cast({{ d }} + to_days(cast({{ n }} as integer)) as date){%- endmacro %}

{% macro add_days_ts(ts, n) -%}{{ adapter.dispatch('add_days_ts')(ts, n) }}{%- endmacro %}
{% macro default__add_days_ts(ts, n) -%}dateadd(day, {{ n }}, {{ ts }}){%- endmacro %}
{% macro duckdb__add_days_ts(ts, n) -%}({{ ts }} + to_days(cast({{ n }} as integer))){%- endmacro %}

{% macro iso_day_of_week(ts) -%}{{ adapter.dispatch('iso_day_of_week')(ts) }}{%- endmacro %}
{% macro default__iso_day_of_week(ts) -%}dayofweekiso({{ ts }}){%- endmacro %}
{% macro duckdb__iso_day_of_week(ts) -%}isodow({{ ts }}){%- endmacro %}
