-- The device registry: devices, their certificates, enrollment and operator tokens, the audit log,
-- and the change sequence that carries revocations to the broker.

CREATE TABLE devices (
  id            text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
  status        text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'active', 'suspended', 'revoked')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  last_seen_at  timestamptz
);

CREATE TABLE certificates (
  serial              text PRIMARY KEY CHECK (serial ~ '^[0-9a-f]+$'),
  -- SHA-256 of the DER certificate, lower-case hex: what the broker looks a TLS peer up by.
  fingerprint         text NOT NULL UNIQUE CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
  public_key_sha256   text NOT NULL CHECK (public_key_sha256 ~ '^[0-9a-f]{64}$'),
  device_id           text NOT NULL REFERENCES devices (id),
  issuer              text NOT NULL,
  not_before          timestamptz NOT NULL,
  not_after           timestamptz NOT NULL CHECK (not_after > not_before),
  status              text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'superseded', 'revoked')),
  revoked_at          timestamptz,
  -- RFC 5280 CRLReason; 7 is unused in the standard.
  revocation_reason   smallint CHECK (revocation_reason BETWEEN 0 AND 10 AND revocation_reason <> 7),
  pem                 text NOT NULL,
  created_at          timestamptz NOT NULL DEFAULT now(),
  CHECK ((status = 'revoked') = (revoked_at IS NOT NULL AND revocation_reason IS NOT NULL))
);
CREATE INDEX certificates_device_idx ON certificates (device_id);
CREATE INDEX certificates_revoked_idx ON certificates (revoked_at) WHERE status = 'revoked';

CREATE TABLE enrollment_tokens (
  -- SHA-256 of the token; the token itself is shown once and never stored.
  token_hash    bytea PRIMARY KEY CHECK (length(token_hash) = 32),
  device_id     text NOT NULL REFERENCES devices (id),
  created_at    timestamptz NOT NULL DEFAULT now(),
  expires_at    timestamptz NOT NULL,
  used_at       timestamptz,
  certificate_serial text REFERENCES certificates (serial)
);
CREATE INDEX enrollment_tokens_device_idx ON enrollment_tokens (device_id);

CREATE TABLE operator_tokens (
  id            text PRIMARY KEY,
  token_hash    bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
  name          text NOT NULL,
  role          text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
  created_at    timestamptz NOT NULL DEFAULT now(),
  created_by    text NOT NULL,
  revoked_at    timestamptz
);

CREATE TABLE audit_log (
  id                  bigserial PRIMARY KEY,
  at                  timestamptz NOT NULL DEFAULT now(),
  actor               text NOT NULL,
  action              text NOT NULL,
  device_id           text,
  certificate_serial  text,
  details             jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_device_idx ON audit_log (device_id, at);

CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only
  BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();

-- Every change that can take access away from a device gets a sequence number. The broker listens
-- for them and, after a lost connection, replays everything after the last number it saw.
CREATE TABLE registry_changes (
  seq                 bigserial PRIMARY KEY,
  at                  timestamptz NOT NULL DEFAULT now(),
  kind                text NOT NULL CHECK (kind IN ('device_revoked', 'certificate_revoked')),
  device_id           text NOT NULL,
  certificate_serial  text
);

CREATE FUNCTION registry_changes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('fleet_registry_changes', json_build_object(
    'seq', NEW.seq, 'kind', NEW.kind, 'deviceId', NEW.device_id, 'serial', NEW.certificate_serial)::text);
  RETURN NEW;
END $$;
CREATE TRIGGER registry_changes_notify
  AFTER INSERT ON registry_changes
  FOR EACH ROW EXECUTE FUNCTION registry_changes_notify();

-- CRL numbers must grow with every CRL signed (RFC 5280 5.2.3), whichever process signs it.
CREATE SEQUENCE crl_numbers;
