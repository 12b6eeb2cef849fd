import { randomBytes } from 'node:crypto';
import { inTransaction, type Queryable } from '../db/transaction.js';
import { FleetError } from '../errors.js';
import type pg from 'pg';
import { type Actor, recordAudit } from './audit.js';
import { hashSecret, newSecret, OPERATOR_TOKEN_PREFIX } from './secrets.js';

export const OPERATOR_ROLES = ['admin', 'operator', 'viewer'] as const;
export type OperatorRole = (typeof OPERATOR_ROLES)[number];

export interface Operator {
  id: string;
  name: string;
  role: OperatorRole;
}

/** A token as admins see it: everything but the secret and its hash, which no one ever sees again. */
export interface OperatorTokenRecord extends Operator {
  createdAt: Date;
  createdBy: Actor;
  expiresAt: Date | null;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
  revokedBy: Actor | null;
}

/** Why a presented operator token was refused; logged and counted, never shown with the token. */
export type OperatorRefusal = 'operator_token_unknown' | 'operator_token_revoked' | 'operator_token_expired';

export type OperatorAuthentication = { operator: Operator; refusal?: undefined } | { operator?: undefined; refusal: OperatorRefusal };

/** Last-used times are written at most this often per token, so a busy script costs one write a minute. */
export const LAST_USED_RESOLUTION_MS = 60_000;

const TOKEN_COLUMNS = 'id, name, role, created_at, created_by, expires_at, last_used_at, revoked_at, revoked_by';

const INSERT_OPERATOR_TOKEN = `
  INSERT INTO operator_tokens (id, token_hash, name, role, created_at, created_by, expires_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7)`;

// Read on every request, never cached: a revocation is refused from the next request on.
const SELECT_OPERATOR_BY_HASH = `SELECT ${TOKEN_COLUMNS} FROM operator_tokens WHERE token_hash = $1`;

const TOUCH_LAST_USED = `
  UPDATE operator_tokens SET last_used_at = $2
  WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $3)`;

const SELECT_OPERATOR_TOKENS = `SELECT ${TOKEN_COLUMNS} FROM operator_tokens ORDER BY created_at, id`;
const SELECT_OPERATOR_TOKEN_FOR_UPDATE = `SELECT ${TOKEN_COLUMNS} FROM operator_tokens WHERE id = $1 FOR UPDATE`;
const REVOKE_OPERATOR_TOKEN = `
  UPDATE operator_tokens SET revoked_at = $2, revoked_by = $3 WHERE id = $1 RETURNING ${TOKEN_COLUMNS}`;

const toRecord = (r: Record<string, any>): OperatorTokenRecord => ({
  id: r.id,
  name: r.name,
  role: r.role,
  createdAt: r.created_at,
  createdBy: r.created_by,
  expiresAt: r.expires_at,
  lastUsedAt: r.last_used_at,
  revokedAt: r.revoked_at,
  revokedBy: r.revoked_by,
});

/**
 * Creates an API token for an operator, optionally expiring `ttlMs` from now. The token is in the
 * result and nowhere else, ever.
 */
export async function createOperatorToken(
  q: Queryable,
  input: { name: string; role: OperatorRole; actor: Actor; now: Date; ttlMs?: number },
): Promise<Operator & { token: string; expiresAt: Date | null }> {
  const id = randomBytes(6).toString('hex');
  const secret = newSecret(OPERATOR_TOKEN_PREFIX);
  const expiresAt = input.ttlMs === undefined ? null : new Date(input.now.getTime() + input.ttlMs);
  await q.query(INSERT_OPERATOR_TOKEN, [id, secret.hash, input.name, input.role, input.now, input.actor, expiresAt]);
  await recordAudit(q, {
    actor: input.actor,
    action: 'operator_token.created',
    details: { tokenId: id, name: input.name, role: input.role, expiresAt: expiresAt?.toISOString() ?? null },
    at: input.now,
  });
  return { id, name: input.name, role: input.role, token: secret.token, expiresAt };
}

/** The operator a token belongs to, if it is known, unrevoked and unexpired at `now`. */
export async function authenticateOperator(q: Queryable, token: string, now: Date): Promise<OperatorAuthentication> {
  if (!token.startsWith(OPERATOR_TOKEN_PREFIX)) return { refusal: 'operator_token_unknown' };
  const found = (await q.query(SELECT_OPERATOR_BY_HASH, [hashSecret(token)])).rows[0];
  if (!found) return { refusal: 'operator_token_unknown' };
  const record = toRecord(found);
  if (record.revokedAt) return { refusal: 'operator_token_revoked' };
  if (record.expiresAt && record.expiresAt.getTime() <= now.getTime()) return { refusal: 'operator_token_expired' };
  if (!record.lastUsedAt || now.getTime() - record.lastUsedAt.getTime() >= LAST_USED_RESOLUTION_MS) {
    await q.query(TOUCH_LAST_USED, [record.id, now, new Date(now.getTime() - LAST_USED_RESOLUTION_MS)]);
  }
  return { operator: { id: record.id, name: record.name, role: record.role } };
}

export async function listOperatorTokens(q: Queryable): Promise<OperatorTokenRecord[]> {
  return (await q.query(SELECT_OPERATOR_TOKENS)).rows.map(toRecord);
}

/** Revokes a token for good; revoking it again changes nothing and answers the same record. */
export async function revokeOperatorToken(pool: pg.Pool, input: { id: string; actor: Actor; now: Date }): Promise<OperatorTokenRecord> {
  return inTransaction(pool, async (tx) => {
    const found = (await tx.query(SELECT_OPERATOR_TOKEN_FOR_UPDATE, [input.id])).rows[0];
    if (!found) throw new FleetError('token_not_found', 404, `no operator token ${input.id} exists (list them with: fleet token list)`);
    if (found.revoked_at) return toRecord(found);
    const revoked = toRecord((await tx.query(REVOKE_OPERATOR_TOKEN, [input.id, input.now, input.actor])).rows[0]);
    await recordAudit(tx, { actor: input.actor, action: 'operator_token.revoked', details: { tokenId: input.id, name: revoked.name }, at: input.now });
    return revoked;
  });
}

export const operatorActor = (operator: Operator): Actor => `operator:${operator.id}`;
