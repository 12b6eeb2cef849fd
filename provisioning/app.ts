import { bodyLimit } from 'hono/body-limit';
import { FleetError } from '../core/errors.js';
import { installProblemHandlers, problemResponse } from '../core/http/problem.js';
import { apiRouter } from '../core/http/router.js';
import { deviceRoutes } from './api/devices.js';
import { docsRoutes } from './api/docs.js';
import { enrollmentRoutes } from './api/enrollment.js';
import { estRoutes } from './api/est.js';
import { pkiRoutes } from './api/pki.js';
import type { ProvisioningDeps } from './deps.js';

/** Requests are small (a CSR is under 2 KiB); anything larger is refused before it is read. */
export const MAX_BODY_BYTES = 64 * 1024;

export function createProvisioningApp(deps: ProvisioningDeps) {
  const app = apiRouter();
  installProblemHandlers(app, deps.log);
  app.use(
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: (c) => problemResponse(c, new FleetError('body_too_large', 413, `request bodies are limited to ${MAX_BODY_BYTES} bytes`)),
    }),
  );
  app.get('/healthz', (c) => c.json({ status: 'ok' }));
  app.route('/', pkiRoutes(deps));
  app.route('/', estRoutes(deps));
  app.route('/', enrollmentRoutes(deps));
  app.route('/', deviceRoutes(deps));
  app.openAPIRegistry.registerComponent('securitySchemes', 'operatorToken', { type: 'http', scheme: 'bearer' });
  app.route('/', docsRoutes());
  app.doc31('/openapi.json', { openapi: '3.1.0', info: { title: 'fleet-auth provisioning API', version: '0.1.0' } });
  return app;
}
