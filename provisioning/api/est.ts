import { Hono, type HonoRequest } from 'hono';
import { FleetError } from '../../core/errors.js';
import type { ProvisioningDeps } from '../deps.js';
import { enroll, renew } from '../enrollment.js';
import { CERTS_ONLY, certsOnly, CSR_ATTRS, csrAttributes } from '../est-encoding.js';
import { tlsSocketOf } from './enrollment.js';

/**
 * EST's enrollment credentials: HTTP Basic with the device id as user and the enrollment token as
 * password. Device ids may contain ':' and tokens never do (they are base64url), so the split is at
 * the last colon: "site:42:<token>" is device "site:42". Clients put user and password together with
 * one colon whatever the user holds, so this reads what curl -u or any Basic client sends.
 */
function basicCredentials(header: string | undefined): { deviceId: string; token: string } {
  const match = /^Basic\s+([A-Za-z0-9+/=]+)$/i.exec(header ?? '');
  const decoded = match ? Buffer.from(match[1]!, 'base64').toString('utf8') : '';
  const colon = decoded.lastIndexOf(':');
  if (colon <= 0) {
    throw new FleetError('unauthorized', 401, 'EST enrollment needs HTTP Basic authentication: the device id as user and the enrollment token as password');
  }
  return { deviceId: decoded.slice(0, colon), token: decoded.slice(colon + 1) };
}

async function pkcs10Body(req: HonoRequest): Promise<string> {
  const type = (req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
  if (type !== 'application/pkcs10') {
    throw new FleetError('unsupported_media_type', 415, 'send the CSR as base64 DER with Content-Type: application/pkcs10');
  }
  return req.text();
}

export function estRoutes(deps: ProvisioningDeps) {
  const app = new Hono();
  app.get('/.well-known/est/cacerts', (c) =>
    c.body(certsOnly([...deps.ca.issuers.map((i) => i.certificate), deps.ca.root]), 200, { 'content-type': CERTS_ONLY }),
  );
  // RFC 7030 4.5: what a CSR must carry here, so a client can build one without reading our docs.
  app.get('/.well-known/est/csrattrs', (c) => c.body(csrAttributes(deps.policy.allowedKeys), 200, { 'content-type': CSR_ATTRS }));
  app.post('/.well-known/est/simpleenroll', async (c) => {
    const credentials = basicCredentials(c.req.header('authorization'));
    const { certificate } = await enroll(deps, { ...credentials, csr: await pkcs10Body(c.req) });
    return c.body(certsOnly([certificate]), 200, { 'content-type': CERTS_ONLY });
  });
  // Renewal: the TLS client certificate identifies the device (RFC 7030 section 4.2.2).
  app.post('/.well-known/est/simplereenroll', async (c) => {
    const { certificate } = await renew(deps, tlsSocketOf(c.env), { csr: await pkcs10Body(c.req) });
    return c.body(certsOnly([certificate]), 200, { 'content-type': CERTS_ONLY });
  });
  return app;
}
