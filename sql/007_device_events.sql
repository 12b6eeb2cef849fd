-- What happened to each device, for operators: connects, disconnects and refusals (written by the
-- broker in batches), and enrollments, renewals, revocations, suspensions and CA changes (written in
-- the transaction of the registry change that made them). The id orders the stream: it is what
-- Server-Sent Events resume from (Last-Event-ID). Rows older than the retention are deleted.
CREATE TABLE device_events (
  id                  bigserial PRIMARY KEY,
  at                  timestamptz NOT NULL,
  kind                text NOT NULL CHECK (kind IN (
                        'connected', 'disconnected', 'refused',
                        'enrolled', 'renewed', 'revoked', 'suspended', 'resumed', 'ca_changed')),
  -- No foreign key: a refusal may name an id that is not registered, and events outlive nothing.
  device_id           text,
  certificate_serial  text,
  address             text,
  reason              text,
  details             jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object')
);
CREATE INDEX device_events_device_idx ON device_events (device_id, id) WHERE device_id IS NOT NULL;
CREATE INDEX device_events_at_idx ON device_events (at);
CREATE INDEX device_events_kind_at_idx ON device_events (kind, at);

-- One notification per statement, not per row: a batch of a thousand broker events wakes each
-- follower once, and it reads the rows after the last id it saw.
CREATE FUNCTION device_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('fleet_device_events', '');
  RETURN NULL;
END $$;
CREATE TRIGGER device_events_notify
  AFTER INSERT ON device_events
  FOR EACH STATEMENT EXECUTE FUNCTION device_events_notify();

-- Which certificate a connected device's live session presented: the device page shows it, and the
-- audit for revoked certificates with a live session reads it.
ALTER TABLE devices ADD COLUMN connected_serial text;
