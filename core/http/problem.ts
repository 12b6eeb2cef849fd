import type { Context, Hono } from 'hono';
import { HTTPException } from 'hono/http-exception';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { HttpBindings } from '@hono/node-server';
import { isDatabaseUnavailable, registryUnavailable } from '../db/unavailable.js';
import { FleetError } from '../errors.js';
import type { Logger } from '../log.js';

/** Problem types are URNs with a stable code, so clients can match them without dereferencing anything. */
export const PROBLEM_TYPE_PREFIX = 'urn:fleet-auth:problem:';
export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** An RFC 9457 problem document; `code` repeats the type's last part for clients that prefer a plain string. */
export function problemBody(error: FleetError, instance: string) {
  return {
    type: PROBLEM_TYPE_PREFIX + error.code,
    title: TITLES[error.status] ?? 'Error',
    status: error.status,
    detail: error.message,
    code: error.code,
    instance,
    ...error.extra,
  };
}

export function problemResponse(c: Context, error: FleetError): Response {
  const body = problemBody(error, c.req.path);
  const headers: Record<string, string> = { 'content-type': PROBLEM_CONTENT_TYPE };
  if (error.status === 401) {
    headers['www-authenticate'] = c.req.path.startsWith('/.well-known/est/')
      ? 'Basic realm="fleet-auth EST", charset="UTF-8"'
      : 'Bearer realm="fleet-auth"';
  }
  // RFC 9110 10.2.3: a 503 or 429 may say when to come back, in whole seconds.
  const retryAfter = error.extra.retryAfter;
  if (typeof retryAfter === 'number') headers['retry-after'] = String(Math.ceil(retryAfter));
  return c.body(JSON.stringify(body), error.status as ContentfulStatusCode, headers);
}

/**
 * Hono's own refusals (malformed JSON, a body of the wrong media type) get our codes. A 415 is the
 * same refusal as EST's unsupported_media_type, so it gets that code, not request_malformed.
 */
function fromHttpException(error: HTTPException): FleetError {
  if (error.status === 415) {
    return new FleetError('unsupported_media_type', 415, 'this route takes a JSON body: send it with Content-Type: application/json');
  }
  return new FleetError('request_malformed', error.status, error.message || 'the request is malformed');
}

/**
 * The problem a failure is, when it is one we expected: our own refusals, Hono's refusals, and the
 * registry's database timing out or being unreachable (503, never a 500). undefined for a bug.
 */
export function knownProblem(error: unknown): FleetError | undefined {
  if (error instanceof FleetError) return error;
  if (error instanceof HTTPException && error.status < 500) return fromHttpException(error);
  if (isDatabaseUnavailable(error)) return registryUnavailable();
  return undefined;
}

/** The client closed its connection before we finished reading its request: nobody is left to answer. */
function clientWentAway(c: Context): boolean {
  const incoming = (c.env as Partial<HttpBindings> | undefined)?.incoming;
  if (incoming) return incoming.errored !== null || (incoming.destroyed && !incoming.complete);
  return c.req.raw.signal.aborted;
}

/** Every failure leaves as application/problem+json; anything unexpected is logged and becomes a bare 500. */
export function installProblemHandlers(app: Hono<any>, log: Logger): void {
  app.notFound((c) => problemResponse(c, new FleetError('not_found', 404, `there is no ${c.req.method} ${c.req.path}`)));
  app.onError((error, c) => {
    // Checked first: an aborted upload surfaces as a socket error (ECONNRESET), which is not the database's.
    if (clientWentAway(c)) {
      log.info({ method: c.req.method, path: c.req.path, reason: error.message }, 'client closed the connection before its request was read');
      return problemResponse(c, new FleetError('request_aborted', 400, 'the client closed the connection before the request was read'));
    }
    const known = knownProblem(error);
    if (known?.code === 'registry_unavailable') {
      log.warn({ method: c.req.method, path: c.req.path, reason: error.message }, 'the registry database failed this request; answered 503');
    }
    if (known) return problemResponse(c, known);
    log.error({ err: error, method: c.req.method, path: c.req.path }, 'request failed');
    return problemResponse(c, new FleetError('internal_error', 500, 'the server failed to handle this request; it has been logged'));
  });
}
