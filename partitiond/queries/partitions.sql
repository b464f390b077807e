-- Every L1 and L2 partition of both envelope trees, identified by BOUND (never by name: names longer than
-- 63 bytes are truncated by PostgreSQL, and v3-era children may be named differently).
-- One row per L2 band; an L1 without bands yields one row with NULL bounds.
WITH trees AS (
    SELECT t.tree, to_regclass(format('%%I.%%I', %(schema)s::text, t.tree)) AS rel
    FROM unnest(ARRAY['gateway_envelopes_meta', 'gateway_envelopes_blob']) AS t(tree)
), l1 AS (
    SELECT trees.tree, c.oid AS relid, c.relname::text AS l1_name,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), '^FOR VALUES IN \(''?(-?[0-9]+)''?\)$'))[1]::int
               AS originator
    FROM trees
    JOIN pg_inherits AS i ON i.inhparent = trees.rel
    JOIN pg_class AS c ON c.oid = i.inhrelid
)
SELECT l1.tree, l1.originator, l1.l1_name, l2.relname::text AS l2_name,
       b[1]::bigint AS band_start, b[2]::bigint AS band_end
FROM l1
LEFT JOIN (pg_inherits AS i2 JOIN pg_class AS l2 ON l2.oid = i2.inhrelid AND l2.relkind IN ('r', 'p'))
    ON i2.inhparent = l1.relid
LEFT JOIN LATERAL regexp_match(pg_get_expr(l2.relpartbound, l2.oid),
    '^FOR VALUES FROM \(''?(-?[0-9]+)''?\) TO \(''?(-?[0-9]+)''?\)$') AS b ON true
WHERE l1.originator IS NOT NULL
ORDER BY l1.originator, l1.tree, band_start
