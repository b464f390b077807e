-- The xmtpd gateway-envelope schema as it stands after xmtpd migration 00023, written from xmtpd's public
-- migrations.  partitiond NEVER applies this to a real database: it exists
-- so that tests, benchmarks and the demo run against the same shape that production has.
--
-- Objects are created in the first schema of the installer's search_path.

CREATE TABLE payers (
    id      SERIAL PRIMARY KEY,
    address TEXT NOT NULL UNIQUE
);

-- Hot path: one row per envelope, LIST by originator, then RANGE by sequence id (children are created by
-- ensure_gateway_parts_v3 / _v4, never here).
CREATE TABLE gateway_envelopes_meta (
    gateway_time           TIMESTAMP NOT NULL DEFAULT now(),
    originator_node_id     INT NOT NULL,
    originator_sequence_id BIGINT NOT NULL,
    topic                  BYTEA NOT NULL,
    payer_id               INT REFERENCES payers (id),
    expiry                 BIGINT NOT NULL,
    CONSTRAINT gateway_envelopes_meta_pkey PRIMARY KEY (originator_node_id, originator_sequence_id)
) PARTITION BY LIST (originator_node_id);

CREATE INDEX gem_topic_time_desc_idx ON gateway_envelopes_meta (topic, gateway_time DESC)
    INCLUDE (originator_node_id, originator_sequence_id);
CREATE INDEX gem_expiry_idx ON gateway_envelopes_meta (expiry)
    INCLUDE (originator_node_id, originator_sequence_id) WHERE expiry IS NOT NULL;
CREATE INDEX gem_topic_orig_seq_idx ON gateway_envelopes_meta (topic, originator_node_id, originator_sequence_id)
    INCLUDE (gateway_time);

-- Cold path: the envelope bytes.  The PK and FK keep the names xmtpd's rename (00023) left behind.
CREATE TABLE gateway_envelopes_blob (
    originator_node_id     INT NOT NULL,
    originator_sequence_id BIGINT NOT NULL,
    originator_envelope    BYTEA NOT NULL,
    CONSTRAINT gateway_envelope_blobs_pkey PRIMARY KEY (originator_node_id, originator_sequence_id),
    CONSTRAINT gateway_envelope_blobs_originator_node_id_originator_seque_fkey
        FOREIGN KEY (originator_node_id, originator_sequence_id)
        REFERENCES gateway_envelopes_meta (originator_node_id, originator_sequence_id) ON DELETE CASCADE
) PARTITION BY LIST (originator_node_id);

-- The vector clock: highest sequence id per originator, maintained only by the meta insert trigger, so it
-- never decreases.  partitiond reads its positions from here.
CREATE TABLE gateway_envelopes_latest (
    originator_node_id     INT PRIMARY KEY,
    originator_sequence_id BIGINT NOT NULL,
    gateway_time           TIMESTAMP NOT NULL
);

CREATE TABLE blockchain_messages (
    block_number           BIGINT NOT NULL,
    block_hash             BYTEA NOT NULL,
    originator_node_id     INT NOT NULL,
    originator_sequence_id BIGINT NOT NULL,
    is_canonical           BOOLEAN NOT NULL DEFAULT TRUE,
    PRIMARY KEY (block_number, block_hash, originator_node_id, originator_sequence_id),
    FOREIGN KEY (originator_node_id, originator_sequence_id)
        REFERENCES gateway_envelopes_meta (originator_node_id, originator_sequence_id)
);
CREATE INDEX idx_blockchain_messages_block_canonical ON blockchain_messages (block_number, is_canonical);

-- Statement-level trigger (xmtpd 00018): one upsert per originator present in the inserted batch, keeping
-- the batch's MAX(sequence id) and MAX(gateway_time), and only ever moving forward.
CREATE FUNCTION update_latest_envelope_v2() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO gateway_envelopes_latest AS l (originator_node_id, originator_sequence_id, gateway_time)
    SELECT n.originator_node_id, max(n.originator_sequence_id), max(n.gateway_time)
    FROM new AS n
    GROUP BY n.originator_node_id
    ON CONFLICT (originator_node_id) DO UPDATE
        SET originator_sequence_id = excluded.originator_sequence_id,
            gateway_time = excluded.gateway_time
        WHERE excluded.originator_sequence_id > l.originator_sequence_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER gateway_latest_upd_v2
    AFTER INSERT ON gateway_envelopes_meta
    REFERENCING NEW TABLE AS new
    FOR EACH STATEMENT EXECUTE FUNCTION update_latest_envelope_v2();

CREATE VIEW gateway_envelopes_view AS
SELECT m.originator_node_id, m.originator_sequence_id, m.gateway_time, m.topic, b.originator_envelope
FROM gateway_envelopes_meta AS m
JOIN gateway_envelopes_blob AS b USING (originator_node_id, originator_sequence_id);
