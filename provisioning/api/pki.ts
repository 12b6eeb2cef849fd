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
  // The caIssuers URL of device certificates: DER, as RFC 5280 section 4.2.2.1 asks.
  app.get('/pki/issuing.crt', (c) => c.body(new Uint8Array(deps.ca.issuing.rawData), 200, { 'content-type': 'application/pkix-cert' }));
  app.get('/pki/crl', async (c) =>
    c.body(new Uint8Array((await currentCrl()).rawData), 200, { 'content-type': 'application/pkix-crl' }),
  );
  app.get('/pki/crl.pem', async (c) =>
    c.body((await currentCrl()).toString('pem') + '\n', 200, { 'content-type': 'application/x-pem-file' }),
  );
  return app;
}
