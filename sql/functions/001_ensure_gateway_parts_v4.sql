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
-- No error is caught anywhere (except a refused NOWAIT lock, which only chooses between two ways to
-- create a table): whatever goes wrong reaches the caller with its SQLSTATE, and the caller's
-- transaction rolls back every step of the band.
--
-- The functions work on the tables in the schema they are installed into: the installer sets search_path
-- to `<schema>, pg_temp` and every function pins it with SET search_path FROM CURRENT, which also makes
-- them safe to declare SECURITY DEFINER.
--
-- It does NOT take xmtpd's partition-creation advisory lock (key 5): callers take its exclusive side in
-- their own short transaction.  Taking it here would deadlock a caller that already holds the shared side.

-- The name xmtpd gives a band's L2 child; PostgreSQL keeps only the first 63 bytes of a longer one.
CREATE OR REPLACE FUNCTION partitiond_l2_name(p_tree text, p_oid int, p_start bigint, p_end bigint)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path FROM CURRENT
AS $$
    SELECT left(format('%s_o%s_s%s_%s', p_tree, p_oid, p_start, p_end), 63)
$$;

-- The private name a band's L2 table has while partitiond_stage_band and partitiond_attach_staged prepare
-- it in one transaction.  It is never committed, and no other tool creates such a name, so holding it
-- while waiting for key 5 can block nobody.
CREATE OR REPLACE FUNCTION partitiond_stage_name(p_tree text, p_oid int, p_start bigint)
RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path FROM CURRENT
AS $$
    SELECT format('partitiond_stage_%s_o%s_s%s', split_part(p_tree, '_', 3), p_oid, p_start)
$$;

-- Serialise creators: per-originator locks alone do not prevent cross-originator deadlocks, because
-- ATTACH of a sub-partitioned child locks the shared top parents (xmtpd PR #1974, commit 05fa5a67).
CREATE OR REPLACE FUNCTION partitiond_lock_creators()
RETURNS void
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT pg_advisory_xact_lock(hashtext('xmtpd.ensure_gateway_parts')::bigint)
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
      AND (regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
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
    CROSS JOIN LATERAL regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
        '^FOR VALUES FROM \(''?(-?[0-9]+)''?\) TO \(''?(-?[0-9]+)''?\)$') AS b
    WHERE i.inhparent = p_l1
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
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', p_table, p_constraint);
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
    v_rel regclass := to_regclass(format('%I.%I', current_schema(), p_name));
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
                  DETAIL = format('It exists with relkind %s%s, but an unattached table of relkind %s is needed.',
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
    v_parent regclass := format('%I.%I', current_schema(), p_tree)::regclass;
    v_name   text := left(format('%s_o%s', p_tree, p_oid), 63);
    v_child  regclass := partitiond_l1_child(v_parent, p_oid);
BEGIN
    IF v_child IS NOT NULL THEN
        RETURN v_child;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext(format('xmtpd.%s_l1', p_tree)), p_oid);
    v_child := partitiond_l1_child(v_parent, p_oid);
    IF v_child IS NOT NULL THEN
        RETURN v_child;
    END IF;

    IF partitiond_unattached(v_name, 'p') IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
            'CONSTRAINT oid_check CHECK (originator_node_id = %s)) '
            'PARTITION BY RANGE (originator_sequence_id)',
            current_schema(), v_name, v_parent, p_oid);
    END IF;
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES IN (%s)',
                   v_parent, current_schema(), v_name, p_oid);
    v_child := format('%I.%I', current_schema(), v_name)::regclass;
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
    PERFORM pg_advisory_xact_lock(hashtext(format('xmtpd.%s_l2', p_tree)), hashtext(format('%s:%s', p_oid, p_start)));
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
        EXECUTE format(
            'CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
            'CONSTRAINT seq_id_check CHECK (originator_node_id = %s '
            'AND originator_sequence_id >= %s AND originator_sequence_id < %s))',
            current_schema(), v_name, p_l1, p_oid, p_start, p_end);
    END IF;
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%s) TO (%s)',
                   p_l1, current_schema(), v_name, p_start, p_end);
    PERFORM partitiond_drop_seed(format('%I.%I', current_schema(), v_name)::regclass, 'seq_id_check');
END
$$;

-- True when meta and blob both already have the L1 and the exact L2 band: the lock-free fast path.
CREATE OR REPLACE FUNCTION partitiond_band_exists(p_oid int, p_start bigint, p_end bigint)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path FROM CURRENT
AS $$
    SELECT count(*) = 2
    FROM unnest(ARRAY['gateway_envelopes_meta', 'gateway_envelopes_blob']) AS t(tree)
    CROSS JOIN LATERAL partitiond_l2_children(
        partitiond_l1_child(format('%I.%I', current_schema(), t.tree)::regclass, p_oid)) AS l2
    WHERE l2.band_start = p_start AND l2.band_end = p_end
$$;

-- ACCESS EXCLUSIVE on p_table if nobody holds a conflicting lock right now; never waits.  The
-- subtransaction keeps a refused lock from aborting the caller's transaction.
CREATE OR REPLACE FUNCTION partitiond_try_lock_exclusive(p_table regclass)
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', p_table);
    RETURN true;
EXCEPTION WHEN lock_not_available THEN
    RETURN false;
END
$$;

-- partitiond's own creation path splits a plain new band (both L1s there, nothing of the band there yet)
-- into two steps of ONE transaction, because everything done while key 5 is held stalls every insert:
--  1. partitiond_stage_band, BEFORE the caller takes key 5: the checks, and the two L2 tables created as
--     plain tables under private names (partitiond_stage_name).  This takes no lock that an insert or a
--     creator holding key 5 needs: ACCESS SHARE on the two L1s (for LIKE) and the new tables themselves;
--  2. partitiond_attach_staged, under key 5: rename each table to its final name and attach it (or,
--     for blob, create it with PARTITION OF when that is free; see there).  PostgreSQL names the child's
--     indexes from the final name, so the children are the same as the ensure's.
-- A crash or an error anywhere rolls both steps back: staged tables are never committed.

-- Step 1.  Returns the L1 children (meta, blob) to attach to, or NULL, having created nothing, when the
-- band is not the plain case: an L1 is missing, a child overlapping the band exists, or a name is taken.
-- The caller then runs ensure_gateway_parts_v4 under key 5 instead, which settles every such case.
CREATE OR REPLACE FUNCTION partitiond_stage_band(p_oid int, p_start bigint, p_end bigint)
RETURNS regclass[]
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_trees CONSTANT text[] := ARRAY['gateway_envelopes_meta', 'gateway_envelopes_blob'];
    v_l1s   regclass[] := '{}';
    v_l1    regclass;
BEGIN
    IF p_oid IS NULL OR p_start IS NULL OR p_end IS NULL OR p_start < 0 OR p_end <= p_start THEN
        RAISE EXCEPTION 'partitiond_stage_band: no such band [%, %) of originator %', p_start, p_end, p_oid
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1..2 LOOP
        v_l1 := partitiond_l1_child(format('%I.%I', current_schema(), v_trees[i])::regclass, p_oid);
        IF v_l1 IS NULL
           OR EXISTS (SELECT 1 FROM partitiond_l2_children(v_l1) WHERE band_start < p_end AND band_end > p_start)
           OR to_regclass(format('%I.%I', current_schema(),
                                 partitiond_l2_name(v_trees[i], p_oid, p_start, p_end))) IS NOT NULL
           OR to_regclass(format('%I.%I', current_schema(),
                                 partitiond_stage_name(v_trees[i], p_oid, p_start))) IS NOT NULL
        THEN
            RETURN NULL;
        END IF;
        v_l1s := v_l1s || v_l1;
    END LOOP;
    FOR i IN 1..2 LOOP
        EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       current_schema(), partitiond_stage_name(v_trees[i], p_oid, p_start), v_l1s[i]);
    END LOOP;
    RETURN v_l1s;
END
$$;

-- Step 2, while the caller holds key 5: as little as possible.  Returns false, having changed nothing,
-- when a final name was taken while the caller waited for the lock (xmtpd's cold path created the band):
-- the caller rolls back, which drops the staged tables.
--
-- The blob child is best created with PARTITION OF: ATTACH validates the foreign key into
-- gateway_envelopes_meta with a query planned over EVERY meta partition (about 7 ms at 160 partitions,
-- growing with their number, all of it while inserts wait), and PARTITION OF does not validate a new,
-- empty table.  It needs ACCESS EXCLUSIVE on the blob L1, which readers of that originator's blobs
-- conflict with, so it is taken only if free at this instant (NOWAIT: never queued, never waited for);
-- otherwise the staged blob table is attached like the meta one.
CREATE OR REPLACE FUNCTION partitiond_attach_staged(p_oid int, p_start bigint, p_end bigint, p_l1s regclass[])
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_trees  CONSTANT text[] := ARRAY['gateway_envelopes_meta', 'gateway_envelopes_blob'];
    v_names  text[] := ARRAY[partitiond_l2_name(v_trees[1], p_oid, p_start, p_end),
                             partitiond_l2_name(v_trees[2], p_oid, p_start, p_end)];
    v_staged text;
BEGIN
    PERFORM partitiond_lock_creators();  -- also serialises with callers of the ensure that skip key 5
    FOR i IN 1..2 LOOP
        IF to_regclass(format('%I.%I', current_schema(), v_names[i])) IS NOT NULL THEN
            RETURN false;
        END IF;
    END LOOP;
    -- Same order as every xmtpd ensure: meta L2, then blob L2.
    FOR i IN 1..2 LOOP
        v_staged := partitiond_stage_name(v_trees[i], p_oid, p_start);
        IF i = 2 AND partitiond_try_lock_exclusive(p_l1s[i]) THEN
            EXECUTE format('DROP TABLE %I.%I', current_schema(), v_staged);
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%s) TO (%s)',
                           current_schema(), v_names[i], p_l1s[i], p_start, p_end);
        ELSE
            EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', current_schema(), v_staged, v_names[i]);
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%s) TO (%s)',
                           p_l1s[i], current_schema(), v_names[i], p_start, p_end);
        END IF;
    END LOOP;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION ensure_gateway_parts_v4(
    p_originator_node_id int,
    p_originator_sequence_id bigint,
    p_band_width bigint DEFAULT 1000000
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
                  DETAIL = format('Band start %s + width %s > 9223372036854775807.', v_start, p_band_width);
    END IF;
    v_end := v_start + p_band_width;

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
