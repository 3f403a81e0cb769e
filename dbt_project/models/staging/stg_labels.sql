{# fraud_scenario is label metadata: kept for analysis (backtests by scenario), never a feature input. #}
select
    cast(l.transaction_id as varchar) as transaction_id,
    cast(l.label as integer) as label,
    cast(l.label_time as timestamp) as label_time,
    l.fraud_scenario,
    cast(l.event_date as date) as event_date
from {{ source('raw', 'labels') }} as l
