select
    cast(transaction_id as varchar) as transaction_id,
    cast(event_time as timestamp) as event_time,
    cast(event_date as date) as event_date,
    cast(customer_id as varchar) as customer_id,
    cast(merchant_id as varchar) as merchant_id,
    cast(amount as double) as amount,
    currency,
    channel,
    country,
    merchant_category,
    device_id
from {{ source('raw', 'transactions') }}
