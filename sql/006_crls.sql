-- Each issuing CA's signed CRLs, shared by every process. The newest is served; a new one is signed
-- (by one process at a time, under an advisory lock) only when the registry has changed since, or
-- the newest is due for a refresh, so CRL numbers only grow and each change is signed once.
CREATE TABLE crls (
  issuer_key_id  text NOT NULL CHECK (issuer_key_id ~ '^[0-9a-f]+$'),
  crl_number     bigint NOT NULL,
  -- The registry change (registry_changes.seq) the CRL includes everything up to.
  change_seq     bigint NOT NULL,
  this_update    timestamptz NOT NULL,
  -- When it must be signed again even without a change: half its validity, or the end of a renewal
  -- overlap, which revokes a superseded certificate by the clock alone.
  refresh_at     timestamptz NOT NULL,
  der            bytea NOT NULL,
  PRIMARY KEY (issuer_key_id, crl_number)
);
