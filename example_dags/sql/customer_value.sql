-- What each customer spent in the {{ params.lookback_days }} days up to the run's date: the value Meta
-- weighs when it builds a value-based lookalike.
SELECT
    c.external_id,
    c.email,
    c.phone,
    c.first_name,
    c.last_name,
    c.zip,
    c.country,
    ROUND(SUM(o.amount), 2) AS purchase_value
FROM {{ params.customers_table }} AS c
JOIN {{ params.orders_table }} AS o ON o.external_id = c.external_id
WHERE o.ordered_on > '{{ macros.ds_add(ds, -params.lookback_days) }}'
  AND o.ordered_on <= '{{ ds }}'
GROUP BY c.external_id, c.email, c.phone, c.first_name, c.last_name, c.zip, c.country
