-- Customers who signed up in the {{ params.lookback_days }} days up to the run's date and agreed to
-- marketing. The window rolls forward every day; the upsert sync keeps everyone it ever added.
SELECT
    external_id,
    email,
    phone,
    first_name,
    last_name,
    zip,
    country
FROM {{ params.customers_table }}
WHERE signed_up_on > '{{ macros.ds_add(ds, -params.lookback_days) }}'
  AND signed_up_on <= '{{ ds }}'
  AND marketing_consent = 1
