-- Event ids in commit order, as 004 does for registry changes. A stream follower reads "every event
-- after the last id it sent"; with a plain sequence an enrollment's event could take id 7, commit
-- after the broker's batch took 8, and be skipped for good. Each transaction writing events first
-- takes this transaction-level lock, held until it ends, so ids become visible in increasing order.
-- It serialises only the tail of those transactions: the registry writes its event last (with its
-- audit entry, below), the broker writes a whole batch in one statement.
-- Lock order: a transaction that also records a registry change takes this lock first (the audit
-- entry comes before recordChange), and nothing takes them the other way round.
CREATE FUNCTION next_device_event_id() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(7215008001);
  RETURN nextval('device_events_id_seq');
END $$;
ALTER TABLE device_events ALTER COLUMN id SET DEFAULT next_device_event_id();

-- The registry's side of the events, in the transaction of the change itself: every enrollment,
-- renewal, revocation, suspension and resumption writes an audit entry, whichever path made it (API,
-- EST, CLI, a batch revocation), so the event follows from that entry. The audit's reason becomes
-- the event's reason; its other details, and who acted, stay in details. One INSERT per statement,
-- so a batch revocation of ten thousand devices notifies followers once.
CREATE FUNCTION device_event_kind_of(action text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE action
    WHEN 'certificate.issued' THEN 'enrolled'
    WHEN 'certificate.renewed' THEN 'renewed'
    WHEN 'device.revoked' THEN 'revoked'
    WHEN 'certificate.revoked' THEN 'revoked'
    WHEN 'device.suspended' THEN 'suspended'
    WHEN 'device.resumed' THEN 'resumed'
  END
$$;

CREATE FUNCTION device_events_from_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- An INSERT of no rows would still notify every follower: an operator token created wakes nobody.
  IF NOT EXISTS (SELECT 1 FROM added WHERE device_event_kind_of(action) IS NOT NULL) THEN
    RETURN NULL;
  END IF;
  INSERT INTO device_events (at, kind, device_id, certificate_serial, reason, details)
  SELECT at, kind, device_id, certificate_serial, details->>'reason', (details - 'reason') || jsonb_build_object('actor', actor)
  FROM (SELECT a.*, device_event_kind_of(a.action) AS kind FROM added a) e
  WHERE kind IS NOT NULL
  ORDER BY id;
  RETURN NULL;
END $$;
CREATE TRIGGER device_events_from_audit
  AFTER INSERT ON audit_log REFERENCING NEW TABLE AS added
  FOR EACH STATEMENT EXECUTE FUNCTION device_events_from_audit();
