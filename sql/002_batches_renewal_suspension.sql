-- Factory batches, retry-safe enrollment, renewal (supersession) and suspension.

CREATE TABLE batches (
  name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
  created_at  timestamptz NOT NULL DEFAULT now(),
  created_by  text NOT NULL
);

ALTER TABLE devices
  ADD COLUMN batch     text REFERENCES batches (name),
  ADD COLUMN profile   text CHECK (length(profile) BETWEEN 1 AND 64),
  ADD COLUMN metadata  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object');
CREATE INDEX devices_batch_idx ON devices (batch) WHERE batch IS NOT NULL;

-- The CSR that redeemed a token: the same CSR sent again (a retry after a lost response) gets the
-- same certificate back instead of an error.
ALTER TABLE enrollment_tokens ADD COLUMN csr_sha256 text CHECK (csr_sha256 ~ '^[0-9a-f]{64}$');

-- A renewed certificate is superseded by its successor and accepted until accept_until (the renewal
-- overlap, or its own expiry if sooner). A suspended certificate is on hold: it is listed in the CRL
-- with reason certificateHold (6) and comes back when its device is resumed.
ALTER TABLE certificates
  ADD COLUMN superseded_at  timestamptz,
  ADD COLUMN accept_until   timestamptz,
  ADD COLUMN replaced_by    text REFERENCES certificates (serial);
ALTER TABLE certificates DROP CONSTRAINT certificates_status_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_status_check
  CHECK (status IN ('active', 'superseded', 'suspended', 'revoked'));
ALTER TABLE certificates DROP CONSTRAINT certificates_check1;
ALTER TABLE certificates ADD CONSTRAINT certificates_revocation_check
  CHECK ((status IN ('revoked', 'suspended')) = (revoked_at IS NOT NULL AND revocation_reason IS NOT NULL));
ALTER TABLE certificates ADD CONSTRAINT certificates_superseded_check
  CHECK (status <> 'superseded' OR (superseded_at IS NOT NULL AND accept_until IS NOT NULL));
CREATE INDEX certificates_public_key_idx ON certificates (device_id, public_key_sha256);

ALTER TABLE registry_changes DROP CONSTRAINT registry_changes_kind_check;
ALTER TABLE registry_changes ADD CONSTRAINT registry_changes_kind_check
  CHECK (kind IN ('device_revoked', 'device_suspended', 'device_resumed',
                  'certificate_revoked', 'certificate_superseded'));
