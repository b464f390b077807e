-- Least privilege (install-sql --security-definer): ensure_gateway_parts_v4 runs with the rights of its
-- owner, who must own the envelope tables (ATTACH PARTITION needs ownership of the parent), so the role
-- partitiond connects as needs no table privileges at all -- only EXECUTE on the entry points.
DO $$
DECLARE
    v_meta regclass := to_regclass(format('%I.%I', current_schema(), 'gateway_envelopes_meta'));
BEGIN
    IF v_meta IS NULL THEN
        RAISE EXCEPTION 'gateway_envelopes_meta not found in schema %', current_schema()
            USING HINT = 'A SECURITY DEFINER install goes into the schema that holds the envelope tables.';
    END IF;
    IF NOT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = v_meta), 'USAGE') THEN
        RAISE EXCEPTION 'a SECURITY DEFINER install must be run by the owner of %, not by %',
                        v_meta, current_user
            USING HINT = 'Connect as the role that owns the envelope tables (xmtpd''s migration role).';
    END IF;
END
$$;

ALTER FUNCTION ensure_gateway_parts_v4(integer, bigint, bigint) SECURITY DEFINER;
-- The executor's "did this band exist?" check reads only the catalog, through helpers revoked below.
ALTER FUNCTION partitiond_band_exists(integer, bigint, bigint) SECURITY DEFINER;
-- The executor's own creation path: before key 5 look for lock holders, stage a band's tables and warm the
-- caches; under key 5 attach them; afterwards drop what an interrupted attempt left behind.
ALTER FUNCTION partitiond_preflight(integer, bigint, boolean) SECURITY DEFINER;
ALTER FUNCTION partitiond_stage_table(integer, bigint, bigint, boolean) SECURITY DEFINER;
ALTER FUNCTION partitiond_warm(integer, integer) SECURITY DEFINER;
ALTER FUNCTION partitiond_attach_staged(integer, bigint, bigint, boolean) SECURITY DEFINER;
ALTER FUNCTION partitiond_unstage(integer, bigint) SECURITY DEFINER;

-- Nobody but the roles granted below may call the family (PUBLIC has EXECUTE on new functions).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc AS p
        WHERE p.pronamespace = current_schema()::regnamespace
          AND (p.proname LIKE 'partitiond\_%' OR p.proname = 'ensure_gateway_parts_v4')
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;
