-- Everything partitiond must know about the server before doing anything, in one round trip.
-- family_digest hashes the bodies of the functions named in %(family)s exactly as sqlfiles.family_digest
-- hashes the shipped ones; ensure_ours tells partitiond's ensure_gateway_parts_v4 (whatever its version:
-- it calls partitiond_* helpers) from one that someone else put in its place.
WITH ensure AS (
    SELECT p.oid, p.prosrc, p.proowner
    FROM pg_catalog.pg_proc AS p
    JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
    WHERE n.nspname = %(schema)s
      AND p.proname = 'ensure_gateway_parts_v4'
      AND p.proargtypes = '23 20 20'::pg_catalog.oidvector
),
family AS (  -- the installer's functions only: an overload someone else planted is not partitiond's
    SELECT p.proname, p.prosrc
    FROM pg_catalog.pg_proc AS p
    JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
    WHERE n.nspname = %(schema)s AND p.proname = ANY (%(family)s::name[])
      AND p.proowner = (SELECT ensure.proowner FROM ensure)
)
SELECT pg_catalog.pg_is_in_recovery() AS in_recovery,
       pg_catalog.current_setting('server_version_num')::int AS server_version,
       (SELECT s.setting::int FROM pg_catalog.pg_settings AS s WHERE s.name = 'deadlock_timeout') AS deadlock_timeout_ms,
       pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %(schema)s::text, 'gateway_envelopes_meta')) IS NOT NULL AS has_meta,
       pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %(schema)s::text, 'gateway_envelopes_blob')) IS NOT NULL AS has_blob,
       pg_catalog.to_regclass(pg_catalog.format('%%I.%%I', %(schema)s::text, 'gateway_envelopes_latest')) IS NOT NULL AS has_latest,
       (SELECT pg_catalog.obj_description(ensure.oid, 'pg_proc') FROM ensure) AS function_marker,
       EXISTS (SELECT FROM ensure) AS has_function,
       COALESCE((SELECT ensure.prosrc LIKE '%%partitiond\_%%' FROM ensure), false) AS ensure_ours,
       (SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
                   pg_catalog.string_agg(family.proname || E'\n' || family.prosrc, E'\n' ORDER BY family.proname),
                   'UTF8')), 'hex')
        FROM family) AS family_digest
