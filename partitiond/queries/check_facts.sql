-- What `partitiond check` verifies beyond the partition inventory, in one round trip and read-only.
-- One row per fact: (kind, relation, name, detail).
--   l1               an L1 child of a tree: relation = tree, name = child, detail = its LIST bound
--   default          a DEFAULT partition anywhere in the trees: relation = its parent, name = the partition
--   detach_pending   a partition an interrupted DETACH ... CONCURRENTLY left behind (PostgreSQL 14+; read
--                    through to_jsonb so the query also runs where pg_inherits has no such column)
--   unattached       a table named like a partition (or like partitiond's never-committed staging tables)
--                    that is no partition at all: name, detail = relkind
--   seed_constraint  a leftover oid_check / seq_id_check: relation = its table, detail = its definition
--   foreign_key      a TOP-LEVEL foreign key into gateway_envelopes_meta from gateway_envelopes_blob or
--                    blockchain_messages: relation = referencing table, detail = ON DELETE action (c = cascade)
--   foreign_key_not_valid  such a key that is still NOT VALID (rows from before it were never checked)
--   table            blockchain_messages exists
WITH RECURSIVE refs AS (
    SELECT to_regclass(format('%%I.%%I', %(schema)s::text, 'gateway_envelopes_meta')) AS meta,
           to_regclass(format('%%I.%%I', %(schema)s::text, 'gateway_envelopes_blob')) AS blob,
           to_regclass(format('%%I.%%I', %(schema)s::text, 'blockchain_messages')) AS messages
), members AS (
    SELECT t.tree, i.inhparent AS parent, i.inhrelid AS relid, 1 AS level,
           coalesce((to_jsonb(i) ->> 'inhdetachpending')::boolean, false) AS pending
    FROM refs
    CROSS JOIN LATERAL (VALUES ('gateway_envelopes_meta', refs.meta),
                               ('gateway_envelopes_blob', refs.blob)) AS t(tree, rel)
    JOIN pg_catalog.pg_inherits AS i ON i.inhparent = t.rel
    UNION ALL
    SELECT m.tree, i.inhparent, i.inhrelid, m.level + 1,
           coalesce((to_jsonb(i) ->> 'inhdetachpending')::boolean, false)
    FROM members AS m
    JOIN pg_catalog.pg_inherits AS i ON i.inhparent = m.relid
), described AS (
    SELECT m.tree, m.level, m.pending, p.relname::text AS parent_name, c.relname::text AS child_name,
           pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound
    FROM members AS m
    JOIN pg_catalog.pg_class AS c ON c.oid = m.relid
    JOIN pg_catalog.pg_class AS p ON p.oid = m.parent
)
SELECT 'l1' AS kind, d.tree AS relation, d.child_name AS name, d.bound AS detail
FROM described AS d WHERE d.level = 1
UNION ALL
SELECT 'default', d.parent_name, d.child_name, NULL FROM described AS d WHERE d.bound = 'DEFAULT'
UNION ALL
SELECT 'detach_pending', d.parent_name, d.child_name, NULL FROM described AS d WHERE d.pending
UNION ALL
SELECT 'unattached', c.relname::text, c.relname::text, c.relkind::text
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s
  AND c.relname ~ '^(gateway_envelopes_(meta|blob)_o|partitiond_stage_)'
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT c.relispartition
UNION ALL
SELECT 'seed_constraint', c.relname::text, k.conname::text, pg_catalog.pg_get_constraintdef(k.oid)
FROM pg_catalog.pg_constraint AS k
JOIN pg_catalog.pg_class AS c ON c.oid = k.conrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND k.conname IN ('oid_check', 'seq_id_check')
UNION ALL
SELECT 'foreign_key', c.relname::text, k.conname::text, k.confdeltype::text
FROM refs
JOIN pg_catalog.pg_constraint AS k ON k.confrelid = refs.meta AND k.contype = 'f' AND k.conparentid = 0
JOIN pg_catalog.pg_class AS c ON c.oid = k.conrelid
WHERE k.conrelid IN (refs.blob, refs.messages)
UNION ALL
SELECT 'foreign_key_not_valid', c.relname::text, k.conname::text, NULL
FROM refs
JOIN pg_catalog.pg_constraint AS k ON k.confrelid = refs.meta AND k.contype = 'f' AND k.conparentid = 0
JOIN pg_catalog.pg_class AS c ON c.oid = k.conrelid
WHERE k.conrelid IN (refs.blob, refs.messages) AND NOT k.convalidated
UNION ALL
SELECT 'table', 'blockchain_messages', NULL, NULL FROM refs WHERE refs.messages IS NOT NULL
