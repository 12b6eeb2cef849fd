import { Hono } from 'hono';
import { FleetError } from '../../core/errors.js';
import type { CrlSource } from '../crl-source.js';
import type { ProvisioningDeps } from '../deps.js';
import { ocspResponder } from '../ocsp.js';

const OCSP_RESPONSE = { 'content-type': 'application/ocsp-response' };
const GET_PREFIX = '/ocsp/';

/**
 * RFC 6960 Appendix A.1: the GET form carries the DER request base64-encoded, then URL-encoded, as
 * the rest of the path. Clients differ on URL-encoding "/" and on base64url, so both are taken. What
 * is not base64 becomes an empty request, which the responder answers with malformedRequest.
 */
export function requestFromPath(url: string): Uint8Array {
  // The raw path: a router's decoded path would already have turned %2F into a separator.
  const encoded = new URL(url).pathname.slice(GET_PREFIX.length);
  let text: string;
  try {
    text = decodeURIComponent(encoded);
  } catch {
    return new Uint8Array();
  }
  const base64 = text.replaceAll('-', '+').replaceAll('_', '/');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(base64)) return new Uint8Array();
  return new Uint8Array(Buffer.from(base64, 'base64'));
}

/** OCSP (RFC 6960) for the issuing CA. Public, like the CRL: it tells only what any relying party may know. */
export function ocspRoutes(deps: ProvisioningDeps, crls: CrlSource) {
  const app = new Hono();
  const respond = ocspResponder({ ...deps, lastCrl: crls.lastValid });
  app.post('/ocsp', async (c) => {
    const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/ocsp-request') {
      throw new FleetError('unsupported_media_type', 415, 'send the DER OCSP request with Content-Type: application/ocsp-request');
    }
    const answer = await respond(new Uint8Array(await c.req.arrayBuffer()));
    return c.body(answer, 200, OCSP_RESPONSE);
  });
  app.get(`${GET_PREFIX}*`, async (c) => c.body(await respond(requestFromPath(c.req.url)), 200, OCSP_RESPONSE));
  return app;
}
