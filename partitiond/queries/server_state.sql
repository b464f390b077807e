-- Everything partitiond must know about the server before doing anything, in one round trip.
SELECT pg_is_in_recovery() AS in_recovery,
       current_setting('server_version_num')::int AS server_version,
       (SELECT setting::int FROM pg_settings WHERE name = 'deadlock_timeout') AS deadlock_timeout_ms,
       to_regclass(format('%%I.%%I', %(schema)s::text, 'gateway_envelopes_meta')) IS NOT NULL AS has_meta,
       to_regclass(format('%%I.%%I', %(schema)s::text, 'gateway_envelopes_blob')) IS NOT NULL AS has_blob,
       to_regclass(format('%%I.%%I', %(schema)s::text, 'gateway_envelopes_latest')) IS NOT NULL AS has_latest,
       (SELECT obj_description(p.oid, 'pg_proc')
        FROM pg_proc AS p
        JOIN pg_namespace AS n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s
          AND p.proname = 'ensure_gateway_parts_v4'
          AND p.proargtypes = '23 20 20'::oidvector) AS function_marker,
       EXISTS (SELECT 1 FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
               WHERE n.nspname = %(schema)s AND p.proname = 'ensure_gateway_parts_v4'
                 AND p.proargtypes = '23 20 20'::oidvector) AS has_function
