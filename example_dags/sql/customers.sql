-- One row per customer: the model of the mirror sync. Every column is mapped to a Meta match key in the
-- DAG; the provider normalizes and hashes them, so select them as they are stored.
SELECT
    external_id,
    email,
    phone,
    first_name,
    last_name,
    city,
    state,
    zip,
    country,
    date_of_birth,
    gender
FROM {{ params.customers_table }}
