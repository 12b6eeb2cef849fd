-- Ops console sessions. A browser holds a random session id in an HttpOnly cookie; the table holds
-- only its SHA-256, so a copy of the database logs nobody in. Each session hangs off the operator
-- token it was opened with: revoking or expiring that token ends the session on its next request,
-- and deleting the token deletes its sessions.
CREATE TABLE operator_sessions (
  id_hash       bytea PRIMARY KEY CHECK (length(id_hash) = 32),
  token_id      text NOT NULL REFERENCES operator_tokens (id) ON DELETE CASCADE,
  created_at    timestamptz NOT NULL,
  last_seen_at  timestamptz NOT NULL,
  expires_at    timestamptz NOT NULL CHECK (expires_at > created_at)
);
CREATE INDEX operator_sessions_token_idx ON operator_sessions (token_id);
CREATE INDEX operator_sessions_expires_idx ON operator_sessions (expires_at);
CREATE INDEX operator_sessions_last_seen_idx ON operator_sessions (last_seen_at);
