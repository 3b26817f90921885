-- Everyone who has ever bought: the people an acquisition campaign should not pay to reach again.
SELECT
    c.external_id,
    c.email,
    c.phone,
    c.first_name,
    c.last_name,
    c.zip,
    c.country
FROM {{ params.customers_table }} AS c
WHERE EXISTS (SELECT 1 FROM {{ params.orders_table }} AS o WHERE o.external_id = c.external_id)
