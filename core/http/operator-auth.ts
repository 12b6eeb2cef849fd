import { timingSafeEqual } from 'node:crypto';
import type { Context, MiddlewareHandler } from 'hono';
import { getCookie } from 'hono/cookie';
import type pg from 'pg';
import { AuthenticationError, FleetError } from '../errors.js';
import {
  authenticateOperator,
  authenticateOperatorSession,
  csrfTokenOf,
  type Operator,
  type OperatorRole,
  type OperatorSessionRefusal,
} from '../registry/index.js';

/** `consoleSession` is set when the request came with the console's session cookie rather than a bearer token. */
export type OperatorVariables = { operator: Operator; consoleSession?: { csrfToken: string } };

/** The console's session cookie. `__Host-` makes browsers insist on Secure, Path=/ and no Domain. */
export const SESSION_COOKIE = '__Host-fleet_session';

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

const REFUSALS: Record<OperatorSessionRefusal, string> = {
  operator_token_unknown: 'the operator token is not known',
  operator_token_revoked: 'the operator token was revoked; ask an admin for a new one (fleet token create)',
  operator_token_expired: 'the operator token has expired; ask an admin for a new one (fleet token create)',
  operator_session_unknown: 'the console session is not known (logged out, or never opened); log in again at /console',
  operator_session_expired: 'the console session has ended (idle too long, or older than 12 hours); log in again at /console',
};

/** Throws (429) when one token or session is presented too often, before it costs a lookup. */
export interface CredentialGate {
  admitCredential(kind: 'operator_token' | 'operator_session', credential: string): void;
}

type OperatorRegistry = { pool: pg.Pool; clock: () => Date; throttle: CredentialGate };

/** The operator a token belongs to, or a 401 naming why not; for bearer requests and the console's login alike. */
export async function operatorOfToken(registry: OperatorRegistry, token: string): Promise<Operator> {
  registry.throttle.admitCredential('operator_token', token);
  const found = await authenticateOperator(registry.pool, token, registry.clock());
  if (!found.operator) throw new AuthenticationError(found.refusal, 'unauthorized', REFUSALS[found.refusal]);
  return found.operator;
}

async function operatorOfSession(registry: OperatorRegistry, sessionId: string): Promise<Operator> {
  registry.throttle.admitCredential('operator_session', sessionId);
  const found = await authenticateOperatorSession(registry.pool, sessionId, registry.clock());
  if (!found.operator) throw new AuthenticationError(found.refusal, 'unauthorized', REFUSALS[found.refusal]);
  return found.operator;
}

/** Methods that change something: with a cookie they must prove they come from the console itself. */
const UNSAFE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/**
 * A browser attaches the session cookie to any request to this host, whoever's page asked for it.
 * A page of another origin cannot read the CSRF token (it is only in GET /v1/session's answer), and
 * cannot fake the Origin header a browser sends.
 */
export function requireSameOrigin(c: Context): void {
  const origin = c.req.header('origin');
  if (origin === undefined) return;
  if (origin !== `https://${c.req.header('host') ?? ''}`) {
    throw new FleetError('cross_origin_request', 403, 'a request from another site may not act with a console session; use the console at this server\'s address');
  }
}

export function requireCsrfToken(c: Context, sessionId: string): void {
  requireSameOrigin(c);
  const sent = Buffer.from(c.req.header('x-csrf-token') ?? '');
  const expected = Buffer.from(csrfTokenOf(sessionId));
  if (sent.length !== expected.length || !timingSafeEqual(sent, expected)) {
    throw new FleetError('csrf_token_invalid', 403, 'a console request that changes something needs the X-CSRF-Token header that GET /v1/session returns; reload the console');
  }
}

/**
 * Requires `Authorization: Bearer <operator token>`, or the console's session cookie, whose role
 * grants `permission`. Token and session are looked up on every request, never cached, so a revoked
 * or expired one is refused at once. A cookie-authenticated request that changes something also
 * needs the session's CSRF token and, when the browser sends one, this server's Origin.
 */
export function requireOperator(registry: OperatorRegistry, permission: Permission): MiddlewareHandler<{ Variables: OperatorVariables }> {
  return async (c, next) => {
    // Route patterns overlap ('/v1/devices/*' matches '/v1/devices'): authenticate once per request.
    const known = c.get('operator');
    if (known) {
      if (!mayDo(known, permission)) throw forbidden(known, permission);
      return next();
    }
    const header = c.req.header('authorization');
    const sessionId = header === undefined ? getCookie(c, SESSION_COOKIE) : undefined;
    let operator: Operator;
    if (sessionId !== undefined) {
      operator = await operatorOfSession(registry, sessionId);
      if (UNSAFE_METHODS.has(c.req.method)) requireCsrfToken(c, sessionId);
      c.set('consoleSession', { csrfToken: csrfTokenOf(sessionId) });
    } else {
      const match = /^Bearer\s+(\S+)$/i.exec(header ?? '');
      if (!match) {
        throw new AuthenticationError(
          'operator_token_missing',
          'unauthorized',
          'send an operator token as "Authorization: Bearer <token>" (create one with: fleet token create), or log in at /console',
        );
      }
      operator = await operatorOfToken(registry, match[1]!);
    }
    if (!mayDo(operator, permission)) throw forbidden(operator, permission);
    c.set('operator', operator);
    await next();
  };
}
