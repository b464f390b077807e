-- Least privilege (install-sql --security-definer): the entry points run with the rights of their owner,
-- who must BE the owner of the envelope tables (ATTACH PARTITION needs ownership of the parent, and every
-- partition they create must belong to that role), so the role partitiond connects as needs no table
-- privileges at all -- only EXECUTE on the entry points.  The install schema must not be writable by any
-- role that is not trusted with the tables (see partitiond_untrusted_creators).
DO $$
DECLARE
    v_meta    CONSTANT regclass := pg_catalog.to_regclass(
                  pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_meta'));
    v_owner   name;
    v_writers text;
BEGIN
    IF v_meta IS NULL THEN
        RAISE EXCEPTION 'gateway_envelopes_meta not found in schema %', pg_catalog.current_schema()
            USING ERRCODE = 'undefined_table',
                  HINT = 'A SECURITY DEFINER install goes into the schema that holds the envelope tables.';
    END IF;
    v_owner := (SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class AS c WHERE c.oid = v_meta);
    IF current_user <> v_owner THEN
        RAISE EXCEPTION 'a SECURITY DEFINER install must be run as the owner of % (%), not as %',
                        v_meta, v_owner, current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = pg_catalog.format('Connect as %I, or pass --owner %s (the connecting role must be a member of it).',
                                           v_owner, v_owner);
    END IF;
    v_writers := (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(w), ', ')
                  FROM partitiond_untrusted_creators() AS w);
    IF v_writers IS NOT NULL THEN
        RAISE EXCEPTION 'schema % is writable by roles that do not own the envelope tables: %',
                        pg_catalog.current_schema(), v_writers
            USING ERRCODE = 'insufficient_privilege',
                  HINT = pg_catalog.format('A SECURITY DEFINER function runs as the table owner, and a role that can '
                                           'create objects in its schema could make it run code of its own: '
                                           'REVOKE CREATE ON SCHEMA %I FROM PUBLIC (and from each role named).',
                                           pg_catalog.current_schema());
    END IF;
END
$$;

ALTER FUNCTION ensure_gateway_parts_v4(integer, bigint, bigint) SECURITY DEFINER;
ALTER FUNCTION partitiond_ensure(integer, bigint, bigint) SECURITY DEFINER;
-- The executor's "did this band exist?" check reads only the catalog, through helpers revoked below.
ALTER FUNCTION partitiond_band_exists(integer, bigint, bigint) SECURITY DEFINER;
-- The executor's own creation path: before key 5 look for lock holders, stage a band's tables, warm the
-- caches and wait out the readers of the blob L1; under key 5 attach them; afterwards drop what an
-- interrupted attempt left behind.
ALTER FUNCTION partitiond_preflight(integer, bigint, boolean) SECURITY DEFINER;
ALTER FUNCTION partitiond_stage_table(integer, bigint, bigint, boolean) SECURITY DEFINER;
ALTER FUNCTION partitiond_warm(integer, integer) SECURITY DEFINER;
ALTER FUNCTION partitiond_tables_free(integer, boolean) SECURITY DEFINER;
ALTER FUNCTION partitiond_attach_staged(integer, bigint, bigint, boolean) SECURITY DEFINER;
ALTER FUNCTION partitiond_unstage(integer, bigint) SECURITY DEFINER;
-- Dropping an empty band (partitiond prune) keeps the foreign keys that xmtpd's pruner's CASCADE loses;
-- finding the bands the pruner would drop reads one row at most of each band, as the tables' owner.
ALTER FUNCTION partitiond_drop_band(integer, bigint) SECURITY DEFINER;
ALTER FUNCTION partitiond_prunable_bands() SECURITY DEFINER;
-- And `check`'s look at who else may create objects in the schema (read-only).
ALTER FUNCTION partitiond_untrusted_creators() SECURITY DEFINER;

-- Nobody but the roles granted below may call the family (PUBLIC has EXECUTE on new functions).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
        WHERE p.pronamespace = partitiond_namespace()
          AND (p.proname LIKE 'partitiond\_%' OR p.proname = 'ensure_gateway_parts_v4')
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
