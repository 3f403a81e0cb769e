{{ config(materialized='incremental', incremental_strategy='append', on_schema_change='fail',
          pre_hook="{{ delete_target_days('as_of_date') }}") }}
{{ label_rate_feature_view('merchant_risk') }}
