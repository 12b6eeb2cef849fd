import { FleetError } from '../errors.js';

/** How long a client is told to wait before trying again when the registry cannot be reached. */
export const REGISTRY_RETRY_AFTER_SECONDS = 5;

/**
 * SQLSTATEs that say "the database cannot serve you right now", not "your request is wrong":
 * statement_timeout (57014), lock_timeout (55P03), a server shutting down or starting (57P01-57P03),
 * out of connections (53300), and every connection exception (class 08).
 */
const UNAVAILABLE_SQLSTATES = new Set(['57014', '55P03', '57P01', '57P02', '57P03', '53300']);

/** Socket errors on the way to the server. */
const UNAVAILABLE_SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

/**
 * node-postgres reports its own timeouts and lost connections as plain Errors with these messages
 * (pg-pool's connectionTimeoutMillis, pg's query_timeout, a server that closed the socket).
 */
const UNAVAILABLE_MESSAGES = [
  'timeout exceeded when trying to connect',
  'Connection terminated',
  'Query read timeout',
  'Client has encountered a connection error and is not queryable',
];

function isUnavailableError(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && (UNAVAILABLE_SQLSTATES.has(code) || code.startsWith('08') || UNAVAILABLE_SOCKET_CODES.has(code))) return true;
  return UNAVAILABLE_MESSAGES.some((message) => error.message.startsWith(message));
}

/** True when this error, or one it wraps, says the database timed out or cannot be reached. */
export function isDatabaseUnavailable(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    if (isUnavailableError(e)) return true;
  }
  return false;
}

/** The one refusal every part gives when the registry's database fails it: 503, retry shortly. */
export function registryUnavailable(): FleetError {
  return new FleetError(
    'registry_unavailable',
    503,
    `the device registry (PostgreSQL) is not answering; retry in ${REGISTRY_RETRY_AFTER_SECONDS} s, and if this persists check the database`,
    { retryAfter: REGISTRY_RETRY_AFTER_SECONDS },
  );
}
