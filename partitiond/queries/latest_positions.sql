-- The vector clock xmtpd maintains with a statement-level trigger: one row per originator.
SELECT originator_node_id, originator_sequence_id FROM {schema}.gateway_envelopes_latest
