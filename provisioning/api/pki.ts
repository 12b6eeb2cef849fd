import { Hono } from 'hono';
import { FleetError } from '../../core/errors.js';
import type { IssuingCa } from '../../core/pki/authority.js';
import type { ProvisioningDeps } from '../deps.js';
import { crlPem, crlPublisher } from '../crl.js';

/**
 * The trust anchors and CRLs: public by nature, served without authentication. Each issuing CA is
 * also addressed by its key id, which is what certificates name, so URLs stay right after rotation.
 */
export function pkiRoutes(deps: ProvisioningDeps) {
  const app = new Hono();
  const crlOf = crlPublisher(deps.pool, deps.ca, deps.clock);
  const pem = { 'content-type': 'application/pem-certificate-chain' };
  const der = (issuer: IssuingCa) => new Uint8Array(issuer.certificate.rawData);
  const issuerNamed = (keyId: string) => {
    const issuer = deps.ca.issuerByKeyId(keyId);
    if (!issuer) throw new FleetError('issuer_not_found', 404, `no issuing CA has key id ${keyId}`);
    return issuer;
  };
  const crlDer = async (issuer: IssuingCa) => new Uint8Array((await crlOf(issuer)).rawData);

  app.get('/pki/ca.pem', (c) => c.body(deps.ca.chainPem, 200, pem));
  app.get('/pki/trust.pem', (c) => c.body(deps.ca.trustPem, 200, pem));
  app.get('/pki/root.pem', (c) => c.body(deps.ca.rootPem, 200, pem));
  // caIssuers URLs: DER, as RFC 5280 section 4.2.2.1 asks.
  app.get('/pki/issuing.crt', (c) => c.body(der(deps.ca.current), 200, { 'content-type': 'application/pkix-cert' }));
  app.get('/pki/issuers/:keyId{[0-9a-fA-F]+\\.crt}', (c) =>
    c.body(der(issuerNamed(c.req.param('keyId').slice(0, -4))), 200, { 'content-type': 'application/pkix-cert' }),
  );
  app.get('/pki/crl', async (c) => c.body(await crlDer(deps.ca.current), 200, { 'content-type': 'application/pkix-crl' }));
  app.get('/pki/crl.pem', async (c) =>
    c.body(crlPem(await crlOf(deps.ca.current)), 200, { 'content-type': 'application/x-pem-file' }),
  );
  app.get('/pki/crl/:keyId{[0-9a-fA-F]+}', async (c) =>
    c.body(await crlDer(issuerNamed(c.req.param('keyId'))), 200, { 'content-type': 'application/pkix-crl' }),
  );
  return app;
}
