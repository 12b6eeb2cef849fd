import type { OpenAPIHono } from '@hono/zod-openapi';
import { installProblemHandlers } from '../core/http/problem.js';
import { streamingBodyLimit } from '../core/http/body-limit.js';
import { apiRouter } from '../core/http/router.js';
import { MAX_BULK_BODY_BYTES } from './api/bulk.js';
import { deviceRoutes } from './api/devices.js';
import { docsRoutes } from './api/docs.js';
import { enrollmentRoutes } from './api/enrollment.js';
import { estRoutes } from './api/est.js';
import { healthRoutes } from './api/health.js';
import { ocspRoutes } from './api/ocsp.js';
import { serveOpenApi } from './api/openapi.js';
import { pkiRoutes } from './api/pki.js';
import { tokenRoutes } from './api/tokens.js';
import type { ApiDeps, ProvisioningDeps } from './deps.js';
import { type ApiThrottle, createApiThrottle } from './throttle.js';
import { crlPublisher } from './crl.js';
import { crlSource } from './crl-source.js';

/** Requests are small (a CSR is under 2 KiB); anything larger is refused before it is read. */
export const MAX_BODY_BYTES = 64 * 1024;
/** Bulk registration and batch enrollment carry thousands of rows. */
const LARGE_BODY_PATHS = new Set(['/v1/devices/bulk', '/v1/enrollments/batch']);

/** What the routes run on, with the one throttle both listeners share, so an address has one allowance. */
export const apiDeps = (deps: ProvisioningDeps): ApiDeps => ({ ...deps, throttle: createApiThrottle(deps) });

/**
 * Every listener's front. Order matters: throttling first, then the body limit, which reads nothing
 * itself, so each route authenticates from headers before the first body byte is read.
 */
function guardedRouter(deps: ApiDeps) {
  const app = apiRouter();
  installProblemHandlers(app, deps.log);
  app.use(deps.throttle.middleware);
  app.use(streamingBodyLimit((path) => (LARGE_BODY_PATHS.has(path) ? MAX_BULK_BODY_BYTES : MAX_BODY_BYTES)));
  return app;
}

/**
 * The signed objects, public by nature: CA certificates, CRLs, OCSP. Made once and served by both
 * listeners, so they share one CRL publisher and one OCSP responder. The publisher is wrapped by the
 * outage fallback: while the registry cannot be reached, the CRL and OCSP answer from the last CRL
 * signed here.
 */
export function signedObjectRoutes(deps: ProvisioningDeps) {
  const crls = crlSource(crlPublisher(deps.pool, deps.ca, deps.clock), deps.clock, deps.log);
  const app = apiRouter();
  app.route('/', pkiRoutes(deps, crls));
  app.route('/', ocspRoutes(deps, crls));
  return app;
}

/**
 * Routes another part serves on this listener (the dashboard API and console), given this API's
 * throttle so that their credentials count against the same allowance. cli/ wires them in.
 */
export type MountedRoutes = (gate: { throttle: ApiThrottle }) => OpenAPIHono<any>[];

export function createProvisioningApp(deps: ApiDeps, signedObjects = signedObjectRoutes(deps), mounted: MountedRoutes = () => []) {
  const app = guardedRouter(deps);
  app.route('/', healthRoutes(deps));
  app.route('/', signedObjects);
  app.route('/', estRoutes(deps));
  app.route('/', enrollmentRoutes(deps));
  app.route('/', deviceRoutes(deps));
  app.route('/', tokenRoutes(deps));
  for (const routes of mounted({ throttle: deps.throttle })) app.route('/', routes);
  app.openAPIRegistry.registerComponent('securitySchemes', 'operatorToken', { type: 'http', scheme: 'bearer' });
  app.route('/', docsRoutes());
  serveOpenApi(app);
  return app;
}

/**
 * The plain-HTTP PKI listener's app: the signed objects and nothing else. They carry their own
 * signatures, so a relying party can fetch them before it trusts our root, as from a public CA.
 */
export function createPkiApp(deps: ApiDeps, signedObjects: ReturnType<typeof signedObjectRoutes>) {
  const app = guardedRouter(deps);
  app.route('/', signedObjects);
  return app;
}
