import type { MiddlewareHandler } from 'hono';
import type pg from 'pg';
import { FleetError } from '../errors.js';
import { authenticateOperator, type Operator, type OperatorRole } from '../registry/index.js';

export type OperatorVariables = { operator: Operator };

/** Which roles may do what: viewers read, operators also change devices, admins also manage tokens. */
const GRANTS: Record<OperatorRole, ReadonlySet<string>> = {
  viewer: new Set(['read']),
  operator: new Set(['read', 'devices']),
  admin: new Set(['read', 'devices', 'tokens']),
};
export type Permission = 'read' | 'devices' | 'tokens';

/** Requires `Authorization: Bearer <operator token>` whose role grants `permission`. */
export function requireOperator(
  pool: pg.Pool,
  permission: Permission,
): MiddlewareHandler<{ Variables: OperatorVariables }> {
  return async (c, next) => {
    const header = c.req.header('authorization') ?? '';
    const match = /^Bearer\s+(\S+)$/i.exec(header);
    if (!match) {
      throw new FleetError('unauthorized', 401, 'send an operator token as "Authorization: Bearer <token>" (create one with: fleet token create)');
    }
    const operator = await authenticateOperator(pool, match[1]!);
    if (!operator) throw new FleetError('unauthorized', 401, 'the operator token is unknown or was revoked');
    if (!GRANTS[operator.role].has(permission)) {
      throw new FleetError('forbidden', 403, `role ${operator.role} may not do this (needs the "${permission}" permission)`);
    }
    c.set('operator', operator);
    await next();
  };
}
