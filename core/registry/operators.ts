import { randomBytes } from 'node:crypto';
import type { Queryable } from '../db/transaction.js';
import { type Actor, recordAudit } from './audit.js';
import { hashSecret, newSecret, OPERATOR_TOKEN_PREFIX } from './secrets.js';

export const OPERATOR_ROLES = ['admin', 'operator', 'viewer'] as const;
export type OperatorRole = (typeof OPERATOR_ROLES)[number];

export interface Operator {
  id: string;
  name: string;
  role: OperatorRole;
}

const INSERT_OPERATOR_TOKEN = `
  INSERT INTO operator_tokens (id, token_hash, name, role, created_at, created_by)
  VALUES ($1, $2, $3, $4, $5, $6)`;

const SELECT_OPERATOR_BY_HASH = `
  SELECT id, name, role FROM operator_tokens WHERE token_hash = $1 AND revoked_at IS NULL`;

/** Creates an API token for an operator. The token is in the result and nowhere else, ever. */
export async function createOperatorToken(
  q: Queryable,
  input: { name: string; role: OperatorRole; actor: Actor; now: Date },
): Promise<Operator & { token: string }> {
  const id = randomBytes(6).toString('hex');
  const secret = newSecret(OPERATOR_TOKEN_PREFIX);
  await q.query(INSERT_OPERATOR_TOKEN, [id, secret.hash, input.name, input.role, input.now, input.actor]);
  await recordAudit(q, {
    actor: input.actor,
    action: 'operator_token.created',
    details: { tokenId: id, name: input.name, role: input.role },
    at: input.now,
  });
  return { id, name: input.name, role: input.role, token: secret.token };
}

export async function authenticateOperator(q: Queryable, token: string): Promise<Operator | undefined> {
  if (!token.startsWith(OPERATOR_TOKEN_PREFIX)) return undefined;
  const { rows } = await q.query(SELECT_OPERATOR_BY_HASH, [hashSecret(token)]);
  return rows[0];
}

export const operatorActor = (operator: Operator): Actor => `operator:${operator.id}`;
