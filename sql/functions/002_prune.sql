-- Which bands xmtpd's pruner would drop, so that `partitiond prune` can drop them with
-- partitiond_drop_band (leaf by leaf, never CASCADE) instead of the pruner's own DROP ... CASCADE, which
-- removes the envelope tables' foreign keys.  Same conventions as 001: the tables of the install schema
-- (SET search_path FROM CURRENT), every built-in called as pg_catalog.<name>, bands found by partition
-- bound, never by name.

-- The pruner's rule, read from the partition tree: per originator (an L1 of gateway_envelopes_meta, by its
-- LIST bound), every band below its highest band (by band start) that holds no row.  The highest band is
-- kept whether or not it is empty: inserts may still need it.  Each band is looked at with one EXISTS, so
-- a band reads one row at most, and the highest band is not read at all.  Nothing is locked beyond the
-- ACCESS SHARE that reading takes.  Bands come ordered by originator, then band start.
CREATE OR REPLACE FUNCTION partitiond_prunable_bands()
RETURNS TABLE (originator_node_id int, band_start bigint, band_end bigint)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_meta CONSTANT oid := pg_catalog.format('%I.%I', pg_catalog.current_schema(), 'gateway_envelopes_meta')::regclass::oid;
    v_l1   record;
    v_leaf record;
BEGIN
    FOR v_l1 IN
        SELECT s.originator, s.rel
        FROM (SELECT (pg_catalog.regexp_match(pg_catalog.pg_get_expr(c.relpartbound, c.oid),
                          '^FOR VALUES IN \(''?(-?[0-9]+)''?\)$'))[1]::int AS originator,
                     c.oid::regclass AS rel
              FROM pg_catalog.pg_inherits AS i
              JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
              WHERE i.inhparent = v_meta) AS s
        WHERE s.originator IS NOT NULL  -- a DEFAULT or multi-value partition is not an originator's L1
        ORDER BY s.originator
    LOOP
        -- One pass over the L1's bounds (each pass deparses every bound): the bands and the highest start.
        FOR v_leaf IN
            SELECT l2.child, l2.band_start, l2.band_end, pg_catalog.max(l2.band_start) OVER () AS top
            FROM partitiond_l2_children(v_l1.rel) AS l2
            ORDER BY l2.band_start
        LOOP
            IF v_leaf.band_start < v_leaf.top AND NOT partitiond_has_rows(v_leaf.child) THEN
                originator_node_id := v_l1.originator;
                band_start := v_leaf.band_start;
                band_end := v_leaf.band_end;
                RETURN NEXT;
            END IF;
        END LOOP;
    END LOOP;
END
$$;
