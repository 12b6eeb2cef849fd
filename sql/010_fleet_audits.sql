-- Security audits of the fleet (GET /v1/audits, fleet audit). Each check counts with an index, so
-- the list of checks stays cheap at a million devices; the partial indexes hold only the rows a
-- check looks at (active certificates, connected devices, takeovers).

-- The key's precise type at issuance ('ec-p256', 'rsa-3072'), so key quality is judged against the
-- policy as it is now, not as it was. Rows from before this column are classified from their PEM by
-- the first key-quality audit that finds them.
ALTER TABLE certificates ADD COLUMN key_type text CHECK (length(key_type) BETWEEN 1 AND 64);

-- Expiring soon, and issued long ago, in the order the findings page through them.
CREATE INDEX certificates_active_not_after_idx ON certificates (not_after, serial) WHERE status = 'active';
CREATE INDEX certificates_active_not_before_idx ON certificates (not_before, serial) INCLUDE (not_after) WHERE status = 'active';
-- Few distinct issuers and key types: a skip scan finds them, and only the bad ones are counted.
CREATE INDEX certificates_active_issuer_idx ON certificates (issuer, serial) INCLUDE (not_after) WHERE status = 'active';
CREATE INDEX certificates_active_key_type_idx ON certificates (key_type, serial) INCLUDE (not_after) WHERE status = 'active';

-- Active and never connected, oldest first: in a healthy fleet, a handful of rows.
CREATE INDEX devices_never_seen_idx ON devices (updated_at, id) WHERE status = 'active' AND last_seen_at IS NULL;
-- Sessions the live cut should have ended: a revoked or suspended device still shown connected, and
-- the certificate each live session presented.
CREATE INDEX devices_connected_held_idx ON devices (id) INCLUDE (updated_at) WHERE connected AND status IN ('revoked', 'suspended');
CREATE INDEX devices_connected_serial_idx ON devices (connected_serial) INCLUDE (id) WHERE connected;
-- Revoked certificates with their serial, so the other half of that check never reads the table.
DROP INDEX certificates_revoked_idx;
CREATE INDEX certificates_revoked_idx ON certificates (revoked_at) INCLUDE (serial) WHERE status = 'revoked';

-- Connects and takeovers by time, with what their checks report, so both read no table rows.
CREATE INDEX device_events_connects_idx ON device_events (at) INCLUDE (certificate_serial, address, device_id) WHERE kind = 'connected';
CREATE INDEX device_events_takeovers_idx ON device_events (at) INCLUDE (device_id, address) WHERE kind = 'disconnected' AND reason = 'takeover';
