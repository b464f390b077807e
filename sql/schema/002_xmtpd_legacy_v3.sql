-- The behaviour of xmtpd's ensure_gateway_parts_v3 (migration 00023: v2 meta helpers + v3 blob helpers),
-- reproduced from xmtpd's public migrations so that tests can prove that
-- ensure_gateway_parts_v4 coexists with partitions v3 created.  Test and demo use only.
--
-- Kept faithfully, defects included:
--  * "Already there?" is decided by swallowing any error whose text matches 'is already a partition';
--  * the meta L2 seed CHECK is built by format() with one argument too many, so for band 0 of
--    originator 100 it reads `seq >= 100 AND seq < 0` (harmless: the table is empty, dropped after ATTACH).
-- The four public helpers are thin wrappers over two generic ones, instead of four near-identical bodies.

CREATE FUNCTION legacy_make_originator_part(_tree text, _oid int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    subname text := format('%s_o%s', _tree, _oid);
BEGIN
    BEGIN
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
            'CONSTRAINT oid_check CHECK (originator_node_id = %s)) PARTITION BY RANGE (originator_sequence_id)',
            subname, _tree, _oid);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES IN (%s)', _tree, subname, _oid);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT oid_check', subname);
    EXCEPTION WHEN OTHERS THEN
        IF SQLERRM ~ 'is already a partition' THEN
            NULL;
        ELSE
            RAISE;
        END IF;
    END;
END
$$;

CREATE FUNCTION legacy_make_seq_subpart(_tree text, _oid int, _start bigint, _end bigint, _arity_bug boolean)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    parent  text := format('%s_o%s', _tree, _oid);
    subname text := format('%s_o%s_s%s_%s', _tree, _oid, _start, _end);
    create_sql text := 'CREATE TABLE IF NOT EXISTS %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS, '
                       'CONSTRAINT seq_id_check CHECK (originator_sequence_id >= %s AND originator_sequence_id < %s))';
BEGIN
    BEGIN
        IF _arity_bug THEN
            -- xmtpd's make_meta_seq_subpart_v2 passes (_oid, _start, _end) to two %s placeholders.
            EXECUTE format(create_sql, subname, parent, _oid, _start, _end);
        ELSE
            EXECUTE format(create_sql, subname, parent, _start, _end);
        END IF;
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                       parent, subname, _start, _end);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT seq_id_check', subname);
    EXCEPTION WHEN OTHERS THEN
        IF SQLERRM ~ 'is already a partition' THEN
            NULL;
        ELSE
            RAISE;
        END IF;
    END;
END
$$;

CREATE FUNCTION make_meta_originator_part_v2(_oid int) RETURNS void
LANGUAGE sql AS $$ SELECT legacy_make_originator_part('gateway_envelopes_meta', _oid) $$;

CREATE FUNCTION make_blob_originator_part_v3(_oid int) RETURNS void
LANGUAGE sql AS $$ SELECT legacy_make_originator_part('gateway_envelopes_blob', _oid) $$;

CREATE FUNCTION make_meta_seq_subpart_v2(_oid int, _start bigint, _end bigint) RETURNS void
LANGUAGE sql AS $$ SELECT legacy_make_seq_subpart('gateway_envelopes_meta', _oid, _start, _end, true) $$;

CREATE FUNCTION make_blob_seq_subpart_v3(_oid int, _start bigint, _end bigint) RETURNS void
LANGUAGE sql AS $$ SELECT legacy_make_seq_subpart('gateway_envelopes_blob', _oid, _start, _end, false) $$;

CREATE FUNCTION ensure_gateway_parts_v3(
    p_originator_node_id int,
    p_originator_sequence_id bigint,
    p_band_width bigint DEFAULT 1000000
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    band_start bigint := (p_originator_sequence_id / p_band_width) * p_band_width;
    band_end   bigint := band_start + p_band_width;
BEGIN
    PERFORM make_meta_originator_part_v2(p_originator_node_id);
    PERFORM make_blob_originator_part_v3(p_originator_node_id);
    PERFORM make_meta_seq_subpart_v2(p_originator_node_id, band_start, band_end);
    PERFORM make_blob_seq_subpart_v3(p_originator_node_id, band_start, band_end);
END
$$;
