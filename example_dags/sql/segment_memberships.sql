-- Engage-style: the segmentation tool keeps one row per customer and segment, with a boolean that says
-- whether the customer belongs to the segment today. True adds, false removes.
SELECT
    c.external_id,
    c.email,
    c.phone,
    c.first_name,
    c.last_name,
    c.zip,
    c.country,
    m.in_audience
FROM {{ params.memberships_table }} AS m
JOIN {{ params.customers_table }} AS c ON c.external_id = m.external_id
WHERE m.segment = '{{ params.segment }}'
