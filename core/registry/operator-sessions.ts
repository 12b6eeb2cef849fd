import { createHash } from 'node:crypto';
import type { Queryable } from '../db/transaction.js';
import { recordAudit } from './audit.js';
import { LAST_USED_RESOLUTION_MS, type Operator, operatorActor, type OperatorRefusal } from './operators.js';
import { hashSecret, newSecret } from './secrets.js';

/**
 * Ops console sessions: a browser trades an operator token for a session id kept in an HttpOnly
 * cookie, so the token never sits where page scripts can read it. Only the id's hash is stored, and
 * every request checks the token the session was opened with, so revoking or expiring that token
 * ends its sessions at once.
 */
export const SESSION_ID_PREFIX = 'fleet_session_';
/** A working day; after that the operator pastes the token again. */
export const OPERATOR_SESSION_LIFETIME_MS = 12 * 60 * 60 * 1000;
/** A console left alone this long is logged out, wherever its cookie went. */
export const OPERATOR_SESSION_IDLE_MS = 30 * 60 * 1000;

export type OperatorSessionRefusal = OperatorRefusal | 'operator_session_unknown' | 'operator_session_expired';

export type OperatorSessionAuthentication = { operator: Operator; refusal?: undefined } | { operator?: undefined; refusal: OperatorSessionRefusal };

export interface SessionTimes {
  lifetimeMs?: number;
  idleMs?: number;
}

const INSERT_SESSION = `
  INSERT INTO operator_sessions (id_hash, token_id, created_at, last_seen_at, expires_at)
  VALUES ($1, $2, $3, $3, $4)`;

// Ended sessions are deleted as they are met; this sweeps those nobody came back to.
const DELETE_ENDED_SESSIONS = `DELETE FROM operator_sessions WHERE expires_at <= $1 OR last_seen_at <= $2`;

const SELECT_SESSION = `
  SELECT s.last_seen_at, s.expires_at, t.id, t.name, t.role, t.revoked_at, t.expires_at AS token_expires_at
  FROM operator_sessions s JOIN operator_tokens t ON t.id = s.token_id
  WHERE s.id_hash = $1`;

const TOUCH_SESSION = `UPDATE operator_sessions SET last_seen_at = $2 WHERE id_hash = $1`;
const DELETE_SESSION = `DELETE FROM operator_sessions WHERE id_hash = $1 RETURNING token_id`;

/**
 * The CSRF token of a session: derived from its id, so nothing more is stored, and one-way, so a
 * page that shows it gives away nothing that logs in.
 */
export const csrfTokenOf = (sessionId: string): string =>
  createHash('sha256').update('fleet-auth console csrf\0').update(sessionId).digest('base64url');

/** Opens a session for an operator whose token was just checked; the id is in the result and nowhere else. */
export async function openOperatorSession(
  q: Queryable,
  input: { operator: Operator; now: Date } & SessionTimes,
): Promise<{ sessionId: string; csrfToken: string; expiresAt: Date }> {
  const { now } = input;
  await q.query(DELETE_ENDED_SESSIONS, [now, new Date(now.getTime() - (input.idleMs ?? OPERATOR_SESSION_IDLE_MS))]);
  const secret = newSecret(SESSION_ID_PREFIX);
  const expiresAt = new Date(now.getTime() + (input.lifetimeMs ?? OPERATOR_SESSION_LIFETIME_MS));
  await q.query(INSERT_SESSION, [secret.hash, input.operator.id, now, expiresAt]);
  await recordAudit(q, {
    actor: operatorActor(input.operator),
    action: 'operator_session.opened',
    details: { tokenId: input.operator.id, expiresAt: expiresAt.toISOString() },
    at: now,
  });
  return { sessionId: secret.token, csrfToken: csrfTokenOf(secret.token), expiresAt };
}

/** The operator behind a session id, if the session is open and its token still valid at `now`. */
export async function authenticateOperatorSession(
  q: Queryable,
  sessionId: string,
  now: Date,
  times: SessionTimes = {},
): Promise<OperatorSessionAuthentication> {
  if (!sessionId.startsWith(SESSION_ID_PREFIX)) return { refusal: 'operator_session_unknown' };
  const idHash = hashSecret(sessionId);
  const found = (await q.query(SELECT_SESSION, [idHash])).rows[0];
  if (!found) return { refusal: 'operator_session_unknown' };
  const refusal = sessionRefusal(found, now.getTime(), times.idleMs ?? OPERATOR_SESSION_IDLE_MS);
  if (refusal) {
    await q.query(DELETE_SESSION, [idHash]);
    return { refusal };
  }
  if (now.getTime() - found.last_seen_at.getTime() >= LAST_USED_RESOLUTION_MS) await q.query(TOUCH_SESSION, [idHash, now]);
  return { operator: { id: found.id, name: found.name, role: found.role } };
}

function sessionRefusal(found: Record<string, any>, now: number, idleMs: number): OperatorSessionRefusal | undefined {
  if (found.revoked_at) return 'operator_token_revoked';
  if (found.token_expires_at && found.token_expires_at.getTime() <= now) return 'operator_token_expired';
  if (found.expires_at.getTime() <= now || now - found.last_seen_at.getTime() >= idleMs) return 'operator_session_expired';
  return undefined;
}

/** Ends a session (logout); an unknown or already ended one changes nothing. */
export async function closeOperatorSession(q: Queryable, sessionId: string, now: Date): Promise<void> {
  if (!sessionId.startsWith(SESSION_ID_PREFIX)) return;
  const closed = (await q.query(DELETE_SESSION, [hashSecret(sessionId)])).rows[0];
  if (!closed) return;
  await recordAudit(q, { actor: `operator:${closed.token_id}`, action: 'operator_session.closed', details: { tokenId: closed.token_id }, at: now });
}
