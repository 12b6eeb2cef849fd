import { Hono } from 'hono';
import type { ProvisioningDeps } from '../deps.js';
import { crlPublisher } from '../crl.js';

/** The trust anchors and the CRL: public by nature, served without authentication. */
export function pkiRoutes(deps: ProvisioningDeps) {
  const app = new Hono();
  const currentCrl = crlPublisher(deps.pool, deps.ca, deps.clock);
  const pem = { 'content-type': 'application/pem-certificate-chain' };
  app.get('/pki/ca.pem', (c) => c.body(deps.ca.chainPem, 200, pem));
  app.get('/pki/root.pem', (c) => c.body(deps.ca.rootPem, 200, pem));
  app.get('/pki/crl', async (c) =>
    c.body(new Uint8Array((await currentCrl()).rawData), 200, { 'content-type': 'application/pkix-crl' }),
  );
  app.get('/pki/crl.pem', async (c) =>
    c.body((await currentCrl()).toString('pem') + '\n', 200, { 'content-type': 'application/x-pem-file' }),
  );
  return app;
}
