-- Service identities (backends that may read across the fleet, by role) and device presence.

ALTER TABLE devices
  ADD COLUMN kind            text NOT NULL DEFAULT 'device' CHECK (kind IN ('device', 'service')),
  ADD COLUMN role            text CHECK (role ~ '^[a-z][a-z0-9-]{0,63}$'),
  ADD COLUMN connected       boolean NOT NULL DEFAULT false,
  ADD COLUMN connected_since timestamptz,
  ADD COLUMN peer_address    text;
ALTER TABLE devices ADD CONSTRAINT devices_service_role_check CHECK ((kind = 'service') = (role IS NOT NULL));
CREATE INDEX devices_connected_idx ON devices (connected) WHERE connected;
