-- What partitiond's role (current_user) lacks for a pass, in one read-only round trip.  Everything is read
-- from the catalog and the has_*_privilege functions, so the query itself needs no privilege (to_regclass
-- would fail on a schema the role may not use).
--   role            current_user
--   usage           USAGE on the schema (true when the schema does not exist: the table check says so)
--   unreadable      tables the position read needs that the role may not SELECT from (a grant on the columns
--                   read is enough): gateway_envelopes_latest, or without it the L1 partitions of
--                   gateway_envelopes_meta (probed with max())
--   not_executable  entry points the role may not EXECUTE, schema-qualified (the functions parameter lists
--                   their signatures as "name(type, ...)")
--   absent          entry points that are not installed in the schema, schema-qualified
--   owns_tables     the role is (a member of) the owner of gateway_envelopes_meta: it could create bands
--                   with the caller's rights; any other role needs SECURITY DEFINER entry points
--   not_definer     installed entry points that are not SECURITY DEFINER, schema-qualified
--   wrong_owner     installed entry points not owned by the owner of gateway_envelopes_meta (their
--                   partitions would belong to another role), schema-qualified
WITH s AS (
    SELECT n.oid FROM pg_catalog.pg_namespace AS n WHERE n.nspname = %(schema)s
), rel AS (
    SELECT c.oid, c.relname::text AS relname
    FROM pg_catalog.pg_class AS c
    JOIN s ON c.relnamespace = s.oid
    WHERE c.relname IN ('gateway_envelopes_latest', 'gateway_envelopes_meta')
), needs_select AS (
    SELECT rel.oid FROM rel WHERE rel.relname = 'gateway_envelopes_latest'
    UNION ALL
    SELECT i.inhrelid
    FROM rel
    JOIN pg_catalog.pg_inherits AS i ON i.inhparent = rel.oid
    WHERE rel.relname = 'gateway_envelopes_meta'
      AND NOT EXISTS (SELECT 1 FROM rel AS l WHERE l.relname = 'gateway_envelopes_latest')
), tables_owner AS (
    SELECT c.relowner FROM rel JOIN pg_catalog.pg_class AS c ON c.oid = rel.oid
    WHERE rel.relname = 'gateway_envelopes_meta'
), entry AS (
    SELECT f.sig, f.n, p.oid, p.prosecdef, p.proowner
    FROM unnest(%(functions)s::text[]) WITH ORDINALITY AS f(sig, n)
    LEFT JOIN (pg_catalog.pg_proc AS p JOIN s ON p.pronamespace = s.oid)
        ON format('%%s(%%s)', p.proname, pg_catalog.oidvectortypes(p.proargtypes)) = f.sig
)
SELECT current_user::text AS role,
       coalesce((SELECT pg_catalog.has_schema_privilege(s.oid, 'USAGE') FROM s), true) AS usage,
       ARRAY(SELECT format('%%I.%%I', %(schema)s::text, c.relname)
             FROM needs_select AS t
             JOIN pg_catalog.pg_class AS c ON c.oid = t.oid
             WHERE NOT pg_catalog.has_any_column_privilege(t.oid, 'SELECT')
             ORDER BY c.relname) AS unreadable,
       ARRAY(SELECT format('%%I.%%s', %(schema)s::text, e.sig) FROM entry AS e
             WHERE e.oid IS NOT NULL AND NOT pg_catalog.has_function_privilege(e.oid, 'EXECUTE')
             ORDER BY e.n) AS not_executable,
       ARRAY(SELECT format('%%I.%%s', %(schema)s::text, e.sig) FROM entry AS e
             WHERE e.oid IS NULL ORDER BY e.n) AS absent,
       COALESCE((SELECT pg_catalog.pg_has_role(t.relowner, 'MEMBER') FROM tables_owner AS t), false) AS owns_tables,
       ARRAY(SELECT format('%%I.%%s', %(schema)s::text, e.sig) FROM entry AS e
             WHERE e.oid IS NOT NULL AND NOT e.prosecdef ORDER BY e.n) AS not_definer,
       ARRAY(SELECT format('%%I.%%s', %(schema)s::text, e.sig) FROM entry AS e, tables_owner AS t
             WHERE e.oid IS NOT NULL AND e.proowner <> t.relowner ORDER BY e.n) AS wrong_owner
