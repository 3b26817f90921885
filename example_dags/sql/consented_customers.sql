-- Everyone who currently agrees to marketing. Whoever withdraws consent (or closes their account) leaves
-- this model, and the delete sync removes them from the audience.
SELECT
    external_id,
    email,
    phone
FROM {{ params.customers_table }}
WHERE marketing_consent = 1
