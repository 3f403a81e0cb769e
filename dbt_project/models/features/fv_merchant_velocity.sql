{{ config(materialized='incremental', incremental_strategy='append', on_schema_change='fail',
          pre_hook="{{ delete_target_days('event_date') }}") }}
{{ streaming_feature_view('merchant_velocity') }}
