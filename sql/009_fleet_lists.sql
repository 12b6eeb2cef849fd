-- Indexes for the operators' lists at a million devices: every list is a keyset page (WHERE key >
-- cursor ORDER BY key LIMIT n), so each filter gets an index that starts with the filter and ends with
-- the order, and a page reads about n index entries, never the table.
--
-- Device ids are ordered byte-wise (COLLATE "C") whatever the database's collation: an id prefix is
-- then one contiguous range of the same index that orders the page (in a linguistic collation
-- 'a-b' sorts between 'ab' and 'ac', so a prefix is not a range).

CREATE INDEX devices_id_order_idx ON devices (id COLLATE "C");
CREATE INDEX devices_status_order_idx ON devices (status, id COLLATE "C");
CREATE INDEX devices_kind_order_idx ON devices (kind, id COLLATE "C");
CREATE INDEX devices_batch_order_idx ON devices (batch, id COLLATE "C") WHERE batch IS NOT NULL;
CREATE INDEX devices_profile_order_idx ON devices (profile, id COLLATE "C") WHERE profile IS NOT NULL;
-- Online devices are the few: a partial index holds only them.
CREATE INDEX devices_online_order_idx ON devices (id COLLATE "C") WHERE connected;
-- q=key=value: metadata @> '{"key": "value"}'.
CREATE INDEX devices_metadata_idx ON devices USING gin (metadata jsonb_path_ops);

-- A device's active certificate (the list's certificateNotAfter, and expiringBefore), and the expiry
-- report in (notAfter, serial) order, over all certificates or one status.
CREATE INDEX certificates_device_active_idx ON certificates (device_id, not_after) WHERE status = 'active';
CREATE INDEX certificates_expiry_idx ON certificates (not_after, serial);
CREATE INDEX certificates_status_expiry_idx ON certificates (status, not_after, serial);

-- The audit log newest first, (at, id) descending, alone or by actor, action or device. The device
-- index replaces the one without id, which it covers.
CREATE INDEX audit_log_order_idx ON audit_log (at, id);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, at, id);
CREATE INDEX audit_log_action_idx ON audit_log (action, at, id);
CREATE INDEX audit_log_device_order_idx ON audit_log (device_id, at, id) WHERE device_id IS NOT NULL;
DROP INDEX audit_log_device_idx;
