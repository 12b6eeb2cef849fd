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

-- Devices by status and kind for the fleet summary, kept as they change: counting a million rows
-- on every look at the summary would read the whole table. Each change appends a row of deltas
-- (appending takes no lock another writer waits for); the summary adds them up and folds them back
-- into one row per status and kind now and then. Presence updates do not name status or kind, so
-- the broker's connect path never fires these triggers.
CREATE TABLE device_counts (
  status  text NOT NULL,
  kind    text NOT NULL,
  delta   bigint NOT NULL
);
INSERT INTO device_counts (status, kind, delta) SELECT status, kind, count(*) FROM devices GROUP BY status, kind;

-- Whole statements (a bulk registration of 10,000 devices appends one row per status and kind).
CREATE FUNCTION device_counts_added_or_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO device_counts (status, kind, delta) SELECT status, kind, count(*) FROM inserted_devices GROUP BY status, kind;
  ELSE
    INSERT INTO device_counts (status, kind, delta) SELECT status, kind, -count(*) FROM deleted_devices GROUP BY status, kind;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER device_counts_inserted
  AFTER INSERT ON devices REFERENCING NEW TABLE AS inserted_devices
  FOR EACH STATEMENT EXECUTE FUNCTION device_counts_added_or_removed();
CREATE TRIGGER device_counts_deleted
  AFTER DELETE ON devices REFERENCING OLD TABLE AS deleted_devices
  FOR EACH STATEMENT EXECUTE FUNCTION device_counts_added_or_removed();

CREATE FUNCTION device_counts_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO device_counts (status, kind, delta) VALUES (OLD.status, OLD.kind, -1), (NEW.status, NEW.kind, 1);
  RETURN NULL;
END $$;
CREATE TRIGGER device_counts_changed
  AFTER UPDATE OF status, kind ON devices
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.kind IS DISTINCT FROM NEW.kind)
  EXECUTE FUNCTION device_counts_changed();

CREATE FUNCTION device_counts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM device_counts;
  RETURN NULL;
END $$;
CREATE TRIGGER device_counts_truncated
  AFTER TRUNCATE ON devices
  FOR EACH STATEMENT EXECUTE FUNCTION device_counts_truncated();
