-- The CA certificates (no keys): the root (generation 0) and every issuing CA (1 and up). The
-- registry is their source of truth, so a node needs only the database and its key store; the
-- files in <data dir>/pki are a cache written from these rows. An issuing CA is current (trusted)
-- until it is retired; the root is never retired.
CREATE TABLE ca_certificates (
  generation    integer PRIMARY KEY CHECK (generation >= 0),
  role          text NOT NULL CHECK (role IN ('root', 'issuing')),
  -- SHA-256 of the DER certificate, lower-case hex.
  fingerprint   text NOT NULL UNIQUE CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
  serial        text NOT NULL CHECK (serial ~ '^[0-9a-f]+$'),
  subject       text NOT NULL,
  pem           text NOT NULL CHECK (pem LIKE '-----BEGIN CERTIFICATE-----%'),
  state         text NOT NULL DEFAULT 'current' CHECK (state IN ('current', 'retired')),
  created_at    timestamptz NOT NULL,
  retired_at    timestamptz,
  CHECK ((role = 'root') = (generation = 0)),
  CHECK (role = 'issuing' OR state = 'current'),
  CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);
