-- partitiond's hardened ensure_gateway_parts_v4 family.
--
-- Same contract as xmtpd PR #1974's unmerged v4 (same name, signature, child names, global lock key), with
-- its defects fixed:
--  * "already there?" is read from the catalog by partition BOUND (pg_inherits + relpartbound), never from
--    error text and never from the computed name alone, so it stays idempotent when a child name exceeds
--    63 bytes and PostgreSQL truncates it;
--  * a table that exists under the child's name but is not attached (left by an older tool or by hand) is
--    attached instead of failing;
--  * the L2 seed CHECK also states `originator_node_id = <oid>`, so ATTACH proves the partition constraint
--    from it and skips the validation scan (PostgreSQL logs "is implied by existing constraints");
--  * an idempotent call takes no table lock at all (PR #1974 dropped leftover seed constraints on every
--    call, which takes ACCESS EXCLUSIVE on a live partition);
--  * bad arguments fail with SQLSTATE 22023 before anything is locked or created.
-- No error is caught anywhere (except a lock refused within the caller's lock_timeout, which only chooses
-- between two ways to create a blob table, or ends an optional cache warm-up): whatever goes wrong reaches
-- the caller with its SQLSTATE, and the caller's transaction rolls back every step of the band.
--
-- The functions work on the tables in the schema they are installed into: the installer sets search_path
-- to `<schema>, pg_temp` and every function pins it with SET search_path FROM CURRENT (pg_catalog, not
-- named, is searched first), which also makes them safe to declare SECURITY DEFINER.  Every built-in
-- function is called as pg_catalog.<name> and every operator gets operands of exactly the types of a
-- pg_catalog operator: an object in the install schema with a better-matching signature (a
-- format(text, name, text), say) could otherwise be chosen over the built-in and run as the table owner.
-- Every entry point that creates checks the band's geometry (partitiond_check_band) and derives the
-- tables it touches itself: a caller passes numbers, never a table.
--
-- It does NOT take xmtpd's partition-creation advisory lock (key 5): callers take its exclusive side in
-- their own short transaction.  Taking it here would deadlock a caller that already holds the shared side.

-- Never replace someone else's ensure_gateway_parts_v4 by accident (an xmtpd migration may ship one):
-- partitiond's always calls partitiond_* helpers.  `install-sql --replace-foreign` consents (it sets
-- partitiond.replace_foreign for the install's transaction).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_proc AS p
               JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
               WHERE n.nspname = pg_catalog.current_schema() AND p.proname = 'ensure_gateway_parts_v4'
                 AND p.prosrc NOT LIKE '%partitiond\_%')
       AND pg_catalog.current_setting('partitiond.replace_foreign', true) IS DISTINCT FROM 'on'
    THEN
        RAISE EXCEPTION 'function %.ensure_gateway_parts_v4 exists and is not partitiond''s',
                        pg_catalog.quote_ident(pg_catalog.current_schema())
            USING ERRCODE = 'duplicate_function',
                  HINT = 'Something else (an xmtpd migration, say) created it.  Check what it does; to replace '
                         'it with partitiond''s, pass --replace-foreign to install-sql.';
    END IF;
END
$$;

-- The name xmtpd gives a band's L2 child; PostgreSQL keeps only the first 63 bytes of a longer one.
CREATE OR REPLACE FUNCTION partitiond_l2_name(p_tree text, p_oid int, p_start bigint, p_end bigint)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path FROM CURRENT
AS $$
    SELECT pg_catalog.left(pg_catalog.format('%s_o%s_s%s_%s', p_tree, p_oid, p_start, p_end), 63)
$$;

-- The private name a band's L2 table has between partitiond_stage_table and partitiond_attach_staged.  No
-- other tool creates or reads such a table, so the locks partitiond holds on it block nobody.
CREATE OR REPLACE FUNCTION partitiond_stage_name(p_tree text, p_oid int, p_start bigint)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path FROM CURRENT
AS $$
    SELECT pg_catalog.format('partitiond_stage_%s_o%s_s%s', pg_catalog.split_part(p_tree, '_', 3), p_oid, p_start)
$$;

-- Serialise creators: per-originator locks alone do not prevent cross-originator deadlocks, because
-- ATTACH of a sub-partitioned child locks the shared top parents (xmtpd PR #1974, commit 05fa5a67).
CREATE OR REPLACE FUNCTION partitiond_lock_creators()
RETURNS void
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('xmtpd.ensure_gateway_parts')::bigint)
$$;

-- The install schema's oid.  (current_schema()::regnamespace would parse the name as an identifier and
-- fail for a schema such as `we"ird sch`.)
CREATE OR REPLACE FUNCTION partitiond_namespace()
RETURNS oid
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT n.oid FROM pg_catalog.pg_namespace AS n WHERE n.nspname = pg_catalog.current_schema()
$$;

-- Roles that can create objects in the install schema but are not trusted with the tables: not
-- superusers, not members of the envelope tables' owner, not members of the schema's owner (for `public`
-- on PostgreSQL 15 and later that is pg_database_owner, i.e. the database owner).  Such a role could plant
-- a function or operator for a careless call to resolve to; a SECURITY DEFINER install refuses while there
-- is one, and `partitiond check` reports it as critical.
CREATE OR REPLACE FUNCTION partitiond_untrusted_creators()
RETURNS SETOF name
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT r.rolname
    FROM pg_catalog.pg_roles AS r,
         pg_catalog.pg_namespace AS n,
         pg_catalog.pg_class AS t
    WHERE n.nspname = pg_catalog.current_schema()
      AND t.relnamespace = n.oid AND t.relname = 'gateway_envelopes_meta'
      AND NOT r.rolsuper
      AND pg_catalog.has_schema_privilege(r.oid, n.oid, 'CREATE')
      AND NOT pg_catalog.pg_has_role(r.oid, n.nspowner, 'MEMBER')
      AND NOT pg_catalog.pg_has_role(r.oid, t.relowner, 'MEMBER')
    ORDER BY r.rolname
$$;

-- New tables belong to the owner of the table they join, whoever runs the function: a partition owned by
-- another role (a superuser running partitiond, say) could no longer be dropped or attached to by xmtpd.
CREATE OR REPLACE FUNCTION partitiond_own(p_rel regclass, p_like regclass)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_owner CONSTANT oid := (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = p_like);
BEGIN
    IF (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = p_rel) <> v_owner THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %I', p_rel, pg_catalog.pg_get_userbyid(v_owner));
    END IF;
END
$$;

-- The L1 child of p_parent that holds originator p_oid, decided by its LIST bound.
CREATE OR REPLACE FUNCTION partitiond_l1_child(p_parent regclass, p_oid int)
RETURNS regclass
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT c.oid::regclass
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = p_parent
      AND (pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                        '^FOR VALUES IN \(''?(-?[0-9]+)''?\)$'))[1]::int = p_oid
$$;

-- Every RANGE child of an L1 with its bounds: the one place that parses L2 bounds.
CREATE OR REPLACE FUNCTION partitiond_l2_children(p_l1 regclass)
RETURNS TABLE (child regclass, band_start bigint, band_end bigint)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT c.oid::regclass, b[1]::bigint, b[2]::bigint
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
        '^FOR VALUES FROM \(''?(-?[0-9]+)''?\) TO \(''?(-?[0-9]+)''?\)$') AS b
    WHERE i.inhparent = p_l1
$$;

-- The width of the bands already there: of originator p_oid's bands if it has any, else of any
-- originator's; NULL while there is none.  One bound is read, so it costs the same at 20 or 2,000
-- partitions (partitiond_l2_children would parse every bound).
CREATE OR REPLACE FUNCTION partitiond_band_width(p_oid int)
RETURNS bigint
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_meta  CONSTANT regclass := pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_meta')::regclass;
    v_l1    CONSTANT regclass := partitiond_l1_child(v_meta, p_oid);
    v_bound text;
BEGIN
    FOR v_bound IN
        SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid)
        FROM pg_catalog.pg_inherits AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
        WHERE i.inhparent = v_l1
        UNION ALL
        SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid)
        FROM pg_catalog.pg_inherits AS i1
        JOIN pg_catalog.pg_inherits AS i2 ON i2.inhparent = i1.inhrelid
        JOIN pg_catalog.pg_class AS c ON c.oid = i2.inhrelid
        WHERE i1.inhparent = v_meta
    LOOP  -- the first RANGE bound found decides (a DEFAULT partition has none)
        IF v_bound ~ '^FOR VALUES FROM' THEN
            RETURN (SELECT b[2]::bigint - b[1]::bigint
                    FROM pg_catalog.regexp_match(v_bound,
                        '^FOR VALUES FROM \(''?(-?[0-9]+)''?\) TO \(''?(-?[0-9]+)''?\)$') AS b);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- Band geometry, checked by every entry point that creates: a band of a non-negative originator, starting
-- at a non-negative multiple of its width, as wide as the bands already there.  Otherwise 22023, before
-- anything is locked or created: a band of another width would overlap its neighbours for good, and
-- inserts into the ids it leaves uncovered would fail with 23514.
CREATE OR REPLACE FUNCTION partitiond_check_band(p_oid int, p_start bigint, p_end bigint)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    v_width bigint;
BEGIN
    IF p_oid IS NULL OR p_start IS NULL OR p_end IS NULL OR p_oid < 0 OR p_start < 0 OR p_end <= p_start THEN
        RAISE EXCEPTION 'no such band [%, %) of originator %', p_start, p_end, p_oid
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Originator and sequence ids are not negative, and a band ends after it starts.';
    END IF;
    IF p_start % (p_end - p_start) <> 0 THEN
        RAISE EXCEPTION 'band [%, %) of originator % does not start at a multiple of its width %',
                        p_start, p_end, p_oid, p_end - p_start
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_width := partitiond_band_width(p_oid);
    IF v_width <> p_end - p_start THEN
        RAISE EXCEPTION 'band [%, %) of originator % is % wide, but the existing bands are % wide',
                        p_start, p_end, p_oid, p_end - p_start, v_width
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass the width of the existing bands (partitiond: --band-width).';
    END IF;
END
$$;

-- Drop a seed constraint only if it is really there: a lookup costs nothing, an unconditional
-- DROP CONSTRAINT IF EXISTS takes ACCESS EXCLUSIVE on the table.
CREATE OR REPLACE FUNCTION partitiond_drop_seed(p_table regclass, p_constraint name)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
               WHERE conrelid = p_table AND conname = p_constraint) THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', p_table, p_constraint);
    END IF;
END
$$;

-- A table already named p_name that is not a partition may be finished (attached); anything else is a
-- conflict the operator must look at.
CREATE OR REPLACE FUNCTION partitiond_unattached(p_name text, p_relkind "char")
RETURNS regclass
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_rel regclass := pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), p_name));
    v_kind "char";
    v_is_partition boolean;
BEGIN
    IF v_rel IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT relkind, relispartition INTO v_kind, v_is_partition FROM pg_catalog.pg_class WHERE oid = v_rel;
    IF v_is_partition OR v_kind <> p_relkind THEN
        RAISE EXCEPTION 'relation % is in the way of a new partition', v_rel
            USING ERRCODE = 'duplicate_table',
                  DETAIL = pg_catalog.format('It exists with relkind %s%s, but an unattached table of relkind %s is needed.',
                                  v_kind, CASE WHEN v_is_partition THEN ' and is a partition of another table' ELSE '' END,
                                  p_relkind),
                  HINT = 'Rename or drop it after checking what it holds, then run the ensure again.';
    END IF;
    RETURN v_rel;
END
$$;

-- Ensure the L1 child (LIST partition) of p_tree for originator p_oid; returns it.
CREATE OR REPLACE FUNCTION partitiond_ensure_l1(p_tree text, p_oid int)
RETURNS regclass
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_parent regclass := pg_catalog.format('%I.%I', pg_catalog.current_schema(), p_tree)::regclass;
    v_name   text := pg_catalog.left(pg_catalog.format('%s_o%s', p_tree, p_oid), 63);
    v_child  regclass := partitiond_l1_child(v_parent, p_oid);
BEGIN
    IF v_child IS NOT NULL THEN
        RETURN v_child;
    END IF;
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(pg_catalog.format('xmtpd.%s_l1', p_tree)), p_oid);
    v_child := partitiond_l1_child(v_parent, p_oid);
    IF v_child IS NOT NULL THEN
        RETURN v_child;
    END IF;

    IF partitiond_unattached(v_name, 'p') IS NULL THEN
        EXECUTE pg_catalog.format(
            'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
            'CONSTRAINT oid_check CHECK (originator_node_id = %s)) '
            'PARTITION BY RANGE (originator_sequence_id)',
            pg_catalog.current_schema(), v_name, v_parent, p_oid);
        PERFORM partitiond_own(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_name)::regclass, v_parent);
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES IN (%s)',
                   v_parent, pg_catalog.current_schema(), v_name, p_oid);
    v_child := pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_name)::regclass;
    PERFORM partitiond_drop_seed(v_child, 'oid_check');
    RETURN v_child;
END
$$;

-- Ensure the L2 child (RANGE partition [p_start, p_end)) under the L1 child p_l1 of p_tree.
CREATE OR REPLACE FUNCTION partitiond_ensure_l2(p_tree text, p_l1 regclass, p_oid int, p_start bigint, p_end bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_name  text := partitiond_l2_name(p_tree, p_oid, p_start, p_end);
    v_clash record;
BEGIN
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext(pg_catalog.format('xmtpd.%s_l2', p_tree)), pg_catalog.hashtext(pg_catalog.format('%s:%s', p_oid, p_start)));
    SELECT * INTO v_clash FROM partitiond_l2_children(p_l1)
    WHERE band_start < p_end AND band_end > p_start
    ORDER BY band_start LIMIT 1;
    IF FOUND THEN
        IF v_clash.band_start = p_start AND v_clash.band_end = p_end THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'band [%, %) of originator % overlaps existing partition % [%, %)',
                        p_start, p_end, p_oid, v_clash.child, v_clash.band_start, v_clash.band_end
            USING ERRCODE = 'invalid_object_definition',
                  HINT = 'The band width passed to ensure_gateway_parts_v4 must match the existing partitions.';
    END IF;

    IF partitiond_unattached(v_name, 'r') IS NULL THEN
        EXECUTE pg_catalog.format(
            'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
            'CONSTRAINT seq_id_check CHECK (originator_node_id = %s '
            'AND originator_sequence_id >= %s AND originator_sequence_id < %s))',
            pg_catalog.current_schema(), v_name, p_l1, p_oid, p_start, p_end);
        PERFORM partitiond_own(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_name)::regclass, p_l1);
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%s) TO (%s)',
                   p_l1, pg_catalog.current_schema(), v_name, p_start, p_end);
    PERFORM partitiond_drop_seed(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_name)::regclass, 'seq_id_check');
END
$$;

-- True when meta and blob both already have the L1 and the exact L2 band: the lock-free fast path.
CREATE OR REPLACE FUNCTION partitiond_band_exists(p_oid int, p_start bigint, p_end bigint)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT pg_catalog.count(*) = 2
    FROM pg_catalog.unnest(ARRAY['gateway_envelopes_meta', 'gateway_envelopes_blob']) AS t(tree)
    CROSS JOIN LATERAL partitiond_l2_children(
        partitiond_l1_child(pg_catalog.format('%I.%I', pg_catalog.current_schema(), t.tree)::regclass, p_oid)) AS l2
    WHERE l2.band_start = p_start AND l2.band_end = p_end
$$;

-- Functions of earlier sql-versions that this one replaces.
DROP FUNCTION IF EXISTS partitiond_try_lock_exclusive(regclass);
DROP FUNCTION IF EXISTS partitiond_stage_band(integer, bigint, bigint);
DROP FUNCTION IF EXISTS partitiond_attach_staged(integer, bigint, bigint, regclass[]);
DROP FUNCTION IF EXISTS partitiond_preflight(integer, bigint);
DROP FUNCTION IF EXISTS partitiond_lock_holders(integer, bigint);

-- partitiond's own creation path for a plain new band (both L1s there, nothing of the band there yet).
-- Everything done while key 5 is held stalls every insert, and anything partitiond holds while it WAITS
-- can stall xmtpd or close a lock cycle with it.  So the work is split by what it holds:
--  1. partitiond_stage_table, once per tree, each its own short transaction BEFORE key 5: the checks, and
--     the band's L2 table created as a plain table under a private name (partitiond_stage_name).  Its one
--     lock on an xmtpd table is ACCESS SHARE on the L1 (for LIKE), taken first, so while it waits it holds
--     nothing; it commits at once, so nothing is held while partitiond later waits for key 5.
--  2. partitiond_warm, BEFORE key 5: loads the catalog caches the held statements need into this backend
--     (a new backend would otherwise read them while every insert waits), under the hold budget.
--  3. partitiond_tables_free, BEFORE key 5, as often as needed for a short while: waits out the queries
--     reading the originator's blob L1, which the blob step needs to itself.
--  4. partitiond_attach_staged, UNDER key 5, with lock_timeout = the hold budget: rename and attach.
-- Staged tables are committed, so a crash between 1 and 4 leaves them behind: partitiond_unstage removes
-- them (the executor after every band, each pass at its start) and `partitiond check` reports them.

-- Step 1.  True when the staged table is ready; false, having created nothing, when the band is not the
-- plain case (the L1 is missing, a child overlapping the band exists, or the final name is taken): the
-- caller then runs ensure_gateway_parts_v4 under key 5, which settles every such case.
CREATE OR REPLACE FUNCTION partitiond_stage_table(p_oid int, p_start bigint, p_end bigint, p_blob boolean)
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_tree   CONSTANT text := CASE WHEN p_blob THEN 'gateway_envelopes_blob' ELSE 'gateway_envelopes_meta' END;
    v_staged CONSTANT text := partitiond_stage_name(v_tree, p_oid, p_start);
    v_l1     regclass;
BEGIN
    PERFORM partitiond_check_band(p_oid, p_start, p_end);
    IF p_blob IS NULL THEN
        RAISE EXCEPTION 'partitiond_stage_table: which tree (p_blob) must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A table of an earlier attempt (or of a crashed run): its shape may predate a migration, so rebuild it.
    IF pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_staged)) IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP TABLE %I.%I', pg_catalog.current_schema(), v_staged);
    END IF;
    v_l1 := partitiond_l1_child(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_tree)::regclass, p_oid);
    IF v_l1 IS NULL
       OR EXISTS (SELECT 1 FROM partitiond_l2_children(v_l1) WHERE band_start < p_end AND band_end > p_start)
       OR pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), partitiond_l2_name(v_tree, p_oid, p_start, p_end))) IS NOT NULL
    THEN
        RETURN false;
    END IF;
    -- No indexes: ATTACH builds them under the final name, under key 5.  Built here they would need the
    -- names PostgreSQL gives a partition's indexes, and a name taken outside key 5 races xmtpd's creators
    -- (which choose theirs under key 5 and cannot see an uncommitted one: 23505 on pg_class).
    EXECUTE pg_catalog.format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   pg_catalog.current_schema(), v_staged, v_l1);
    PERFORM partitiond_own(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_staged)::regclass, v_l1);
    RETURN true;
END
$$;

-- Step 2.  Warms this backend's caches for originator p_oid's band: the catalog entries of every meta
-- partition (the blob child's foreign key locks them all) and the partition descriptors of both L1s
-- (rebuilt after every band, by every backend that uses them).  Everything it locks is released when its
-- statement ends; any lock not free within p_lock_timeout_ms makes it give up (false): warming is only an
-- optimisation, and waiting while holding the tree's ACCESS SHARE locks could stall xmtpd's pruner.
CREATE OR REPLACE FUNCTION partitiond_warm(p_oid int, p_lock_timeout_ms int)
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_meta CONSTANT regclass := pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_meta')::regclass;
    v_blob CONSTANT regclass := pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_blob')::regclass;
    v_l1   regclass;
BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', pg_catalog.format('%sms', greatest(1, p_lock_timeout_ms)), true);
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS SHARE MODE', v_meta);
    FOREACH v_l1 IN ARRAY ARRAY[partitiond_l1_child(v_meta, p_oid), partitiond_l1_child(v_blob, p_oid)] LOOP
        IF v_l1 IS NOT NULL THEN  -- planning a query that prunes every partition builds the descriptor only
            EXECUTE pg_catalog.format('SELECT FROM %s WHERE originator_sequence_id < 0', v_l1);
        END IF;
    END LOOP;
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END
$$;

-- Sessions holding a lock that creating a band of originator p_oid would have to wait for.  Creating a
-- band takes SHARE ROW EXCLUSIVE on payers, blockchain_messages, both top-level tables and every meta
-- partition (foreign keys), and SHARE UPDATE EXCLUSIVE or more on the two L1s.  Not counted: ROW EXCLUSIVE
-- held by a session that holds the shared side of key 5 (an xmtpd insert: key 5 itself excludes it).
-- Readers (ACCESS SHARE) of the blob L1 count only with p_readers, and only while they sit idle in their
-- transaction: the fast blob step (PARTITION OF) needs that L1 to itself, and such a reader keeps it until
-- its client moves on.  A reader that is running a query is waited out instead (partitiond_tables_free).
-- pg_locks is read once.
CREATE OR REPLACE FUNCTION partitiond_lock_holders(p_oid int, p_key bigint, p_readers boolean DEFAULT false)
RETURNS TABLE (pid int, vxid text, what text)
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    WITH RECURSIVE blob_l1(rel) AS (
        SELECT partitiond_l1_child(pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_blob')::regclass, p_oid)
    ),
    meta_tree(rel) AS (  -- from pg_inherits: pg_partition_tree() would lock every partition
        SELECT pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_meta')::regclass
        UNION ALL
        SELECT i.inhrelid::regclass FROM pg_catalog.pg_inherits AS i
        JOIN meta_tree ON i.inhparent = meta_tree.rel
        JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid AND c.relkind IN ('r', 'p')
    ),
    needed(rel) AS (
        SELECT rel FROM meta_tree
        UNION ALL
        SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), t))
        FROM pg_catalog.unnest(ARRAY['payers', 'blockchain_messages', 'gateway_envelopes_blob']) AS t
        UNION ALL
        SELECT rel FROM blob_l1
    ),
    locks AS MATERIALIZED (SELECT * FROM pg_catalog.pg_locks WHERE granted AND pid <> pg_catalog.pg_backend_pid()),
    protocol AS (  -- sessions holding the shared side of key 5: xmtpd inserts in flight
        SELECT locks.pid FROM locks
        WHERE locktype = 'advisory' AND mode = 'ShareLock' AND objsubid = 1
          AND classid::bigint = (p_key >> 32) & 4294967295 AND objid::bigint = p_key & 4294967295
    )
    SELECT l.pid, l.virtualtransaction, pg_catalog.format('%s on %s held by pid %s', l.mode, l.relation::regclass, l.pid)
    FROM locks AS l
    JOIN needed ON needed.rel = l.relation
    WHERE l.locktype = 'relation'
      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
      AND (l.mode IN ('ShareUpdateExclusiveLock', 'ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                      'AccessExclusiveLock')
           OR (l.mode = 'RowExclusiveLock' AND l.pid NOT IN (SELECT protocol.pid FROM protocol)))
    UNION ALL
    SELECT l.pid, l.virtualtransaction,
           pg_catalog.format('%s on %s held by pid %s, idle in its transaction', l.mode, l.relation::regclass, l.pid)
    FROM locks AS l
    JOIN blob_l1 ON blob_l1.rel = l.relation
    JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid
    WHERE p_readers AND l.locktype = 'relation' AND l.mode = 'AccessShareLock'
      AND a.state IN ('idle in transaction', 'idle in transaction (aborted)')
      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
$$;

-- Who holds a lock the band would wait for, if anybody (NULL otherwise): read BEFORE key 5, so that
-- partitiond defers instead of taking key 5 and then stalling every insert for the hold budget.  Only a
-- holder seen twice, 10 ms apart, in the same transaction counts: pg_locks is not one atomic picture (a
-- backend's fast-path locks are read before the shared lock table), so an xmtpd insert caught between two
-- transactions could look like a writer outside the protocol for an instant.  This is a hint, not a
-- guarantee: the hold budget still bounds every wait under key 5.  With p_readers, a reader of the blob L1
-- idle in its transaction counts too (its text starts with AccessShareLock): it may keep the L1 for
-- minutes, and deferring now costs the inserts nothing.
CREATE OR REPLACE FUNCTION partitiond_preflight(p_oid int, p_key bigint, p_readers boolean)
RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_first text[] := ARRAY(SELECT pg_catalog.format('%s/%s/%s', h.pid, h.vxid, h.what)
                            FROM partitiond_lock_holders(p_oid, p_key, p_readers) AS h);
BEGIN
    IF pg_catalog.cardinality(v_first) = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.pg_sleep(0.01);
    RETURN (SELECT h.what FROM partitiond_lock_holders(p_oid, p_key, p_readers) AS h
            WHERE pg_catalog.format('%s/%s/%s', h.pid, h.vxid, h.what) = ANY (v_first)
            ORDER BY h.pid LIMIT 1);
END
$$;

-- The tables a band's DDL needs to itself (ACCESS EXCLUSIVE) besides the band's own: to create a band of
-- originator p_oid (the fast blob step, PARTITION OF), its blob L1; with p_drop, to drop one
-- (partitiond_drop_band), both its L1s and, because detaching a meta partition removes the foreign-key
-- clones that point at it, gateway_envelopes_blob, blockchain_messages and payers.  Every reader of a blob
-- partition holds ACCESS SHARE on gateway_envelopes_blob too.  Missing tables are left out.
CREATE OR REPLACE FUNCTION partitiond_exclusive_tables(p_oid int, p_drop boolean)
RETURNS regclass[]
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT pg_catalog.array_agg(t.rel ORDER BY t.ord)
    FROM (SELECT partitiond_l1_child(pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_blob')::regclass, p_oid), 1
          UNION ALL
          SELECT partitiond_l1_child(pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_meta')::regclass, p_oid), 2
          WHERE p_drop
          UNION ALL
          SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', pg_catalog.current_schema(), n.name)), 2 + n.ord
          FROM pg_catalog.unnest(ARRAY['gateway_envelopes_blob', 'blockchain_messages', 'payers']) WITH ORDINALITY AS n(name, ord)
          WHERE p_drop) AS t(rel, ord)
    WHERE t.rel IS NOT NULL
$$;

-- Whether no other session holds any of those tables right now (partitiond_exclusive_tables), so that the
-- DDL would get them at once.  partitiond calls this BEFORE key 5, again and again for a short while, to
-- wait out the queries reading them (a serving node runs them all the time, each for some milliseconds)
-- instead of taking key 5 and then waiting for them while every insert waits.  The probe takes ACCESS
-- EXCLUSIVE on each without waiting, and gives them back at once: the locks are taken inside a block whose
-- error handler rolls them back, so nobody waits for the probe, and it holds nothing when it returns, even
-- inside a caller's open transaction.  A NULL or negative originator is refused (22023).
CREATE OR REPLACE FUNCTION partitiond_tables_free(p_oid int, p_drop boolean)
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_rel regclass;
BEGIN
    IF p_oid IS NULL OR p_oid < 0 OR p_drop IS NULL THEN
        RAISE EXCEPTION 'no such originator: % (or no such use: %)', p_oid, p_drop
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        FOREACH v_rel IN ARRAY COALESCE(partitiond_exclusive_tables(p_oid, p_drop), ARRAY[]::regclass[]) LOOP
            EXECUTE pg_catalog.format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE NOWAIT', v_rel);
        END LOOP;
        RAISE EXCEPTION 'free' USING ERRCODE = 'PD002';  -- rolls the locks back
    EXCEPTION
        WHEN lock_not_available THEN
            RETURN false;
        WHEN SQLSTATE 'PD002' THEN
            RETURN true;
    END;
END
$$;

-- Give a staged table its final name (PostgreSQL names the child's indexes after it) and attach it.
CREATE OR REPLACE FUNCTION partitiond_attach_table(p_l1 regclass, p_staged text, p_name text, p_start bigint, p_end bigint)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    EXECUTE pg_catalog.format('ALTER TABLE %I.%I RENAME TO %I', pg_catalog.current_schema(), p_staged, p_name);
    EXECUTE pg_catalog.format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%s) TO (%s)',
                   p_l1, pg_catalog.current_schema(), p_name, p_start, p_end);
END
$$;

-- Step 3, under key 5; the caller has set lock_timeout to its hold budget, so no lock is waited for longer.
-- Returns {"status": "existed"} when a final name was taken while the caller waited for key 5 (xmtpd's
-- cold path made the band, or part of it: the caller rolls back and looks again), else {"status":
-- "created", "path": ..., "ms": {step: milliseconds}}, the time of each step for logs and metrics.
--
-- The meta child is attached.  The blob child is best created with PARTITION OF: ATTACH would validate the
-- foreign key into gateway_envelopes_meta with a query planned over EVERY meta partition (about 1 s at
-- 2,000 partitions, all of it while inserts wait), and PARTITION OF does not validate a new, empty table.
-- PARTITION OF needs ACCESS EXCLUSIVE on the blob L1, taken WITHOUT waiting: the caller waited before key 5
-- for a moment when no query read it (partitiond_tables_free), so a reader is never queued behind a lock
-- request of partitiond's, only behind the DDL itself.  If a query took the L1 meanwhile, the band is
-- refused with SQLSTATE PD001 before any DDL ran (the caller goes back to waiting, then defers the band
-- while the originator has runway left), or, with p_allow_slow, the staged blob table is attached after
-- all.
CREATE OR REPLACE FUNCTION partitiond_attach_staged(p_oid int, p_start bigint, p_end bigint, p_allow_slow boolean)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_meta     CONSTANT text := 'gateway_envelopes_meta';
    v_blob     CONSTANT text := 'gateway_envelopes_blob';
    v_meta_l1  CONSTANT regclass := partitiond_l1_child(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_meta)::regclass, p_oid);
    v_blob_l1  CONSTANT regclass := partitiond_l1_child(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_blob)::regclass, p_oid);
    v_names    CONSTANT text[] := ARRAY[partitiond_l2_name(v_meta, p_oid, p_start, p_end),
                                        partitiond_l2_name(v_blob, p_oid, p_start, p_end)];
    v_staged   CONSTANT text[] := ARRAY[partitiond_stage_name(v_meta, p_oid, p_start),
                                        partitiond_stage_name(v_blob, p_oid, p_start)];
    v_slow     boolean := false;
    v_t        timestamptz[] := ARRAY[pg_catalog.clock_timestamp()];
BEGIN
    PERFORM partitiond_check_band(p_oid, p_start, p_end);
    IF v_meta_l1 IS NULL OR v_blob_l1 IS NULL THEN
        RAISE EXCEPTION 'partitiond_attach_staged: originator % has no L1 partition in both trees', p_oid
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_t := pg_catalog.array_append(v_t, pg_catalog.clock_timestamp());
    -- The blob L1 first, without waiting: a refusal then costs the inserts the argument checks and no more.
    -- ONLY: PARTITION OF needs the L1 alone, and the recursive form would also lock every blob band of the
    -- originator (500 at 2,000 meta partitions: ~1.5 ms more under key 5, and as many locks to release).
    BEGIN
        EXECUTE pg_catalog.format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE NOWAIT', v_blob_l1);
    EXCEPTION WHEN lock_not_available THEN
        IF NOT p_allow_slow THEN
            RAISE EXCEPTION 'the blob partition % of originator % is in use by another session', v_blob_l1, p_oid
                USING ERRCODE = 'PD001',
                      HINT = 'Creating the band now would mean validating the blob foreign key under key 5.';
        END IF;
        v_slow := true;
    END;
    v_t := pg_catalog.array_append(v_t, pg_catalog.clock_timestamp());
    PERFORM partitiond_lock_creators();  -- also serialises with callers of the ensure that skip key 5
    -- Did a creator make the band while the caller waited for key 5?  Read pg_class with this statement's
    -- snapshot, which sees every commit before it: a name lookup through the catalog cache (to_regclass)
    -- may still hold the "missing" it cached before the wait.  A creator with another band width would
    -- overlap instead, and ATTACH refuses that (42P17).
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c
               WHERE c.relnamespace = partitiond_namespace() AND c.relname = ANY (v_names::name[]))
    THEN
        RETURN pg_catalog.jsonb_build_object('status', 'existed');
    END IF;
    v_t := pg_catalog.array_append(v_t, pg_catalog.clock_timestamp());
    -- Then the children in the order of every xmtpd ensure: meta L2, then blob L2.
    PERFORM partitiond_attach_table(v_meta_l1, v_staged[1], v_names[1], p_start, p_end);
    v_t := pg_catalog.array_append(v_t, pg_catalog.clock_timestamp());
    IF v_slow THEN
        PERFORM partitiond_attach_table(v_blob_l1, v_staged[2], v_names[2], p_start, p_end);
    ELSE
        -- The staged blob table is left for the caller to drop after COMMIT (partitiond_unstage), outside
        -- key 5: dropping it here cost ~0.5 ms more under key 5, plus its files unlinked at COMMIT.
        EXECUTE pg_catalog.format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%s) TO (%s)',
                       pg_catalog.current_schema(), v_names[2], v_blob_l1, p_start, p_end);
        PERFORM partitiond_own(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_names[2])::regclass, v_blob_l1);
    END IF;
    v_t := pg_catalog.array_append(v_t, pg_catalog.clock_timestamp());
    RETURN pg_catalog.jsonb_build_object(
        'status', 'created',
        'path', CASE WHEN v_slow THEN 'attach' ELSE 'partition_of' END,
        'ms', pg_catalog.jsonb_build_object(
            'check', extract(epoch FROM v_t[2] - v_t[1] + v_t[4] - v_t[3]) * 1000.0,
            'blob_lock', extract(epoch FROM v_t[3] - v_t[2]) * 1000.0,
            'meta', extract(epoch FROM v_t[5] - v_t[4]) * 1000.0,
            'blob', extract(epoch FROM v_t[6] - v_t[5]) * 1000.0));
END
$$;

-- Drop staged tables left behind: of one band (p_oid, p_start), or every one (both NULL).  Only tables
-- named like partitiond's staged tables that are not partitions are touched; returns how many it dropped.
CREATE OR REPLACE FUNCTION partitiond_unstage(p_oid int DEFAULT NULL, p_start bigint DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_rel   regclass;
    v_count int := 0;
BEGIN
    FOR v_rel IN
        SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = partitiond_namespace() AND c.relkind = 'r' AND NOT c.relispartition
          AND p_oid IS NULL AND c.relname ~ '^partitiond_stage_(meta|blob)_o-?[0-9]+_s[0-9]+$'
        UNION ALL
        SELECT c.oid::regclass FROM pg_catalog.pg_class AS c
        WHERE c.relnamespace = partitiond_namespace() AND c.relkind = 'r' AND NOT c.relispartition
          AND p_oid IS NOT NULL
          AND c.relname IN (partitiond_stage_name('gateway_envelopes_meta', p_oid, p_start),
                            partitiond_stage_name('gateway_envelopes_blob', p_oid, p_start))
    LOOP
        EXECUTE pg_catalog.format('DROP TABLE %s', v_rel);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;

-- Drop one empty band of one originator without losing a foreign key.  xmtpd's pruner runs
-- `DROP TABLE IF EXISTS <meta leaf>, <blob leaf> CASCADE`, and CASCADE removes the blob -> meta and
-- blockchain_messages -> meta foreign keys of the WHOLE tables.  Here, never CASCADE: the blob leaf is
-- dropped as it is (its inherited foreign key goes with it), then the meta leaf is detached (PostgreSQL
-- checks that nothing references it and removes the clones of both keys that point at it) and dropped.
-- Not DETACH for the blob leaf: a detached referencing table keeps its foreign key as a key of its own into
-- the partitioned gateway_envelopes_meta, which PostgreSQL builds over EVERY meta partition (a constraint
-- and two triggers each) — 4.5-6 s at 2,000 meta partitions, all of it under key 5, against < 1 ms for
-- the plain DROP.  Refused, nothing changed: no such band (22023), a band that holds rows or is the
-- originator's highest (55000: xmtpd's pruner keeps the highest band, which inserts may still need), or
-- a table it needs to itself in use by another session right now (55P03, at once: partitiond prune waits
-- for them to be free before key 5, so a reader never queues behind the drop).  The caller holds the
-- exclusive side of xmtpd's key 5 with lock_timeout set, as for creating a band (partitiond prune does);
-- returns the two tables dropped.
CREATE OR REPLACE FUNCTION partitiond_drop_band(p_oid int, p_start bigint)
RETURNS text[]
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_trees  CONSTANT text[] := ARRAY['gateway_envelopes_blob', 'gateway_envelopes_meta'];
    v_tree   text;
    v_l1     regclass;
    v_leaf   regclass;
    v_leaves regclass[] := ARRAY[]::regclass[];
    v_l1s    regclass[] := ARRAY[]::regclass[];
    v_names  text[] := ARRAY[]::text[];
    v_top    bigint;
    v_rel    regclass;
BEGIN
    IF p_oid IS NULL OR p_start IS NULL OR p_oid < 0 OR p_start < 0 THEN
        RAISE EXCEPTION 'no such band starting at % of originator %', p_start, p_oid
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM partitiond_lock_creators();
    FOREACH v_tree IN ARRAY v_trees LOOP
        v_l1 := partitiond_l1_child(pg_catalog.format('%I.%I', pg_catalog.current_schema(), v_tree)::regclass, p_oid);
        -- One pass over the L1's bounds finds both the band and the highest band (each pass deparses every
        -- bound: ~20 ms at 500 bands, under key 5).
        SELECT (pg_catalog.array_agg(l2.child) FILTER (WHERE l2.band_start = p_start))[1],
               pg_catalog.max(l2.band_start)
          INTO v_leaf, v_top
          FROM partitiond_l2_children(v_l1) AS l2;
        IF v_leaf IS NULL THEN
            RAISE EXCEPTION 'originator % has no band starting at % in %', p_oid, p_start, v_tree
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Only bands of the envelope tables can be dropped, both trees at once.';
        END IF;
        IF v_top = p_start THEN
            RAISE EXCEPTION 'band starting at % is the highest band of originator % in %', p_start, p_oid, v_tree
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'The highest band is never dropped: inserts may still need it.';
        END IF;
        v_l1s := pg_catalog.array_append(v_l1s, v_l1);
        v_leaves := pg_catalog.array_append(v_leaves, v_leaf);
        v_names := pg_catalog.array_append(v_names, v_leaf::text);
    END LOOP;
    -- The shared tables the drop needs to itself first, without waiting (the caller waited for them before
    -- key 5, partitiond_tables_free): a query that took one since refuses the drop at once (55P03), and no
    -- reader queues behind it.
    FOREACH v_rel IN ARRAY partitiond_exclusive_tables(p_oid, true) LOOP
        EXECUTE pg_catalog.format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE NOWAIT', v_rel);
    END LOOP;
    FOR i IN 1 .. 2 LOOP
        EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', v_leaves[i]);
        IF partitiond_has_rows(v_leaves[i]) THEN
            RAISE EXCEPTION 'band % still holds rows', v_leaves[i]
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Only empty bands are dropped.';
        END IF;
    END LOOP;
    EXECUTE pg_catalog.format('DROP TABLE %s', v_leaves[1]);  -- blob
    EXECUTE pg_catalog.format('ALTER TABLE %s DETACH PARTITION %s', v_l1s[2], v_leaves[2]);  -- meta
    EXECUTE pg_catalog.format('DROP TABLE %s', v_leaves[2]);
    RETURN v_names;
END
$$;

-- Whether a table holds any row (reads one at most).
CREATE OR REPLACE FUNCTION partitiond_has_rows(p_table regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_found boolean;
BEGIN
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', p_table) INTO v_found;
    RETURN v_found;
END
$$;

-- The band holding (p_originator_node_id, p_originator_sequence_id), created if missing: both L1s, then
-- both L2s.  partitiond's executor calls this, never ensure_gateway_parts_v4, so that a function of that
-- name replaced by someone else (an xmtpd migration shipping its own v4, say) cannot change what
-- partitiond runs; partitiond refuses to run when it sees that (the family's digest no longer matches).
CREATE OR REPLACE FUNCTION partitiond_ensure(
    p_originator_node_id int,
    p_originator_sequence_id bigint,
    p_band_width bigint
) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_start   bigint;
    v_end     bigint;
    v_meta_l1 regclass;
    v_blob_l1 regclass;
BEGIN
    IF p_originator_node_id IS NULL OR p_originator_sequence_id IS NULL OR p_band_width IS NULL THEN
        RAISE EXCEPTION 'ensure_gateway_parts_v4: arguments must not be NULL (got %, %, %)',
                        p_originator_node_id, p_originator_sequence_id, p_band_width
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_band_width <= 0 THEN
        RAISE EXCEPTION 'ensure_gateway_parts_v4: band width must be positive, got %', p_band_width
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_originator_sequence_id < 0 THEN
        RAISE EXCEPTION 'ensure_gateway_parts_v4: sequence id must not be negative, got %', p_originator_sequence_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_start := (p_originator_sequence_id / p_band_width) * p_band_width;
    IF v_start > 9223372036854775807 - p_band_width THEN
        RAISE EXCEPTION 'ensure_gateway_parts_v4: the band holding sequence id % would end past the bigint maximum',
                        p_originator_sequence_id
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('Band start %s + width %s > 9223372036854775807.', v_start, p_band_width);
    END IF;
    v_end := v_start + p_band_width;
    PERFORM partitiond_check_band(p_originator_node_id, v_start, v_end);

    IF partitiond_band_exists(p_originator_node_id, v_start, v_end) THEN
        RETURN;
    END IF;

    PERFORM partitiond_lock_creators();

    -- Same order as every xmtpd ensure: meta L1, blob L1, meta L2, blob L2.
    v_meta_l1 := partitiond_ensure_l1('gateway_envelopes_meta', p_originator_node_id);
    v_blob_l1 := partitiond_ensure_l1('gateway_envelopes_blob', p_originator_node_id);
    PERFORM partitiond_ensure_l2('gateway_envelopes_meta', v_meta_l1, p_originator_node_id, v_start, v_end);
    PERFORM partitiond_ensure_l2('gateway_envelopes_blob', v_blob_l1, p_originator_node_id, v_start, v_end);
END
$$;

-- The entry point xmtpd knows (same name, signature and contract as xmtpd's own v4 proposal).
CREATE OR REPLACE FUNCTION ensure_gateway_parts_v4(
    p_originator_node_id int,
    p_originator_sequence_id bigint,
    p_band_width bigint DEFAULT 1000000
) RETURNS void
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT partitiond_ensure(p_originator_node_id, p_originator_sequence_id, p_band_width)
$$;
