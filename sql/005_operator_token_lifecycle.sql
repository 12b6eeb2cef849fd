-- Operator tokens can expire, and record when they were last used (updated at most once a minute,
-- so a busy script costs one write a minute, not one per request).

ALTER TABLE operator_tokens
  ADD COLUMN expires_at   timestamptz,
  ADD COLUMN last_used_at timestamptz,
  ADD COLUMN revoked_by   text;
ALTER TABLE operator_tokens ADD CONSTRAINT operator_tokens_expiry_check CHECK (expires_at IS NULL OR expires_at > created_at);
