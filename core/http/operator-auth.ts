import type { MiddlewareHandler } from 'hono';
import type pg from 'pg';
import { AuthenticationError, FleetError } from '../errors.js';
import { authenticateOperator, type Operator, type OperatorRefusal, type OperatorRole } from '../registry/index.js';

export type OperatorVariables = { operator: Operator };

/**
 * Which roles may do what: viewers read, operators also change devices, admins also manage tokens
 * and service identities (which read and command across the whole fleet).
 */
const GRANTS: Record<OperatorRole, ReadonlySet<Permission>> = {
  viewer: new Set(['read']),
  operator: new Set(['read', 'devices']),
  admin: new Set(['read', 'devices', 'services', 'tokens']),
};
export type Permission = 'read' | 'devices' | 'services' | 'tokens';

export const mayDo = (operator: Operator, permission: Permission): boolean => GRANTS[operator.role].has(permission);

export const forbidden = (operator: Operator, permission: Permission, what = 'do this') =>
  new FleetError('forbidden', 403, `role ${operator.role} may not ${what} (needs the "${permission}" permission, which ${holders(permission)} have)`);

const holders = (permission: Permission) =>
  (Object.keys(GRANTS) as OperatorRole[])
    .filter((role) => GRANTS[role].has(permission))
    .map((role) => `${role}s`)
    .join(' and ');

const REFUSALS: Record<OperatorRefusal, string> = {
  operator_token_unknown: 'the operator token is not known',
  operator_token_revoked: 'the operator token was revoked; ask an admin for a new one (fleet token create)',
  operator_token_expired: 'the operator token has expired; ask an admin for a new one (fleet token create)',
};

/** Throws (429) when one token is presented too often, before it costs a lookup. */
export interface CredentialGate {
  admitCredential(kind: 'operator_token', token: string): void;
}

/**
 * Requires `Authorization: Bearer <operator token>` whose role grants `permission`. The token is
 * looked up on every request, never cached, so a revoked or expired one is refused at once.
 */
export function requireOperator(
  registry: { pool: pg.Pool; clock: () => Date; throttle: CredentialGate },
  permission: Permission,
): MiddlewareHandler<{ Variables: OperatorVariables }> {
  return async (c, next) => {
    // Route patterns overlap ('/v1/devices/*' matches '/v1/devices'): authenticate once per request.
    const known = c.get('operator');
    if (known) {
      if (!mayDo(known, permission)) throw forbidden(known, permission);
      return next();
    }
    const header = c.req.header('authorization') ?? '';
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    if (!match) {
      throw new AuthenticationError(
        'operator_token_missing',
        'unauthorized',
        'send an operator token as "Authorization: Bearer <token>" (create one with: fleet token create)',
      );
    }
    registry.throttle.admitCredential('operator_token', match[1]!);
    const found = await authenticateOperator(registry.pool, match[1]!, registry.clock());
    if (!found.operator) throw new AuthenticationError(found.refusal, 'unauthorized', REFUSALS[found.refusal]);
    if (!mayDo(found.operator, permission)) throw forbidden(found.operator, permission);
    c.set('operator', found.operator);
    await next();
  };
}
