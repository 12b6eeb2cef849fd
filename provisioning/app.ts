import { bodyLimit } from 'hono/body-limit';
import { FleetError } from '../core/errors.js';
import { installProblemHandlers, problemResponse } from '../core/http/problem.js';
import { apiRouter } from '../core/http/router.js';
import { MAX_BULK_BODY_BYTES } from './api/bulk.js';
import { deviceRoutes } from './api/devices.js';
import { docsRoutes } from './api/docs.js';
import { enrollmentRoutes } from './api/enrollment.js';
import { estRoutes } from './api/est.js';
import { ocspRoutes } from './api/ocsp.js';
import { pkiRoutes } from './api/pki.js';
import type { ProvisioningDeps } from './deps.js';

/** Requests are small (a CSR is under 2 KiB); anything larger is refused before it is read. */
export const MAX_BODY_BYTES = 64 * 1024;
/** Bulk registration and batch enrollment carry thousands of rows. */
const LARGE_BODY_PATHS = new Set(['/v1/devices/bulk', '/v1/enrollments/batch']);

/** Bodies past `maxSize` (by path) are refused before they are read. */
function limitBodies(app: ReturnType<typeof apiRouter>) {
  const limit = (maxSize: number) =>
    bodyLimit({
      maxSize,
      onError: (c) => problemResponse(c, new FleetError('body_too_large', 413, `the body of ${c.req.path} is limited to ${maxSize} bytes`)),
    });
  const small = limit(MAX_BODY_BYTES);
  const large = limit(MAX_BULK_BODY_BYTES);
  app.use((c, next) => (LARGE_BODY_PATHS.has(c.req.path) ? large : small)(c, next));
}

/**
 * The signed objects, public by nature: CA certificates, CRLs, OCSP. Made once and served by both
 * listeners, so they share one CRL publisher and one OCSP responder.
 */
export function signedObjectRoutes(deps: ProvisioningDeps) {
  const app = apiRouter();
  app.route('/', pkiRoutes(deps));
  app.route('/', ocspRoutes(deps));
  return app;
}

export function createProvisioningApp(deps: ProvisioningDeps, signedObjects = signedObjectRoutes(deps)) {
  const app = apiRouter();
  installProblemHandlers(app, deps.log);
  limitBodies(app);
  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  app.route('/', signedObjects);
  app.route('/', estRoutes(deps));
  app.route('/', enrollmentRoutes(deps));
  app.route('/', deviceRoutes(deps));
  app.openAPIRegistry.registerComponent('securitySchemes', 'operatorToken', { type: 'http', scheme: 'bearer' });
  app.route('/', docsRoutes());
  app.doc31('/openapi.json', { openapi: '3.1.0', info: { title: 'fleet-auth provisioning API', version: '0.1.0' } });
  return app;
}

/**
 * The plain-HTTP PKI listener's app: the signed objects and nothing else. They carry their own
 * signatures, so a relying party can fetch them before it trusts our root, as from a public CA.
 */
export function createPkiApp(deps: ProvisioningDeps, signedObjects: ReturnType<typeof signedObjectRoutes>) {
  const app = apiRouter();
  installProblemHandlers(app, deps.log);
  limitBodies(app);
  app.route('/', signedObjects);
  return app;
}
