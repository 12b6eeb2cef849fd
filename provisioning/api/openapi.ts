import { type OpenAPIHono, z } from '@hono/zod-openapi';
import type { Env } from 'hono';
import { CERTS_ONLY, CSR_ATTRS } from '../est-encoding.js';
import { problemResponses } from './schemas.js';

export const OPENAPI_PATH = '/openapi.json';

/** Each operation's part of the system, by path; the first matching prefix wins. */
const PARTS: [prefix: string, tag: string][] = [
  ['/v1/enrollments', 'enrollment'],
  ['/v1/renewals', 'enrollment'],
  ['/v1/tokens', 'tokens'],
  ['/v1/audits', 'audits'],
  ['/v1/', 'devices'],
  ['/.well-known/est/', 'EST'],
  ['/pki/', 'PKI'],
  ['/ocsp', 'OCSP'],
  ['/healthz', 'health'],
  ['/docs', 'documentation'],
  [OPENAPI_PATH, 'documentation'],
];

const TAGS = [
  { name: 'enrollment', description: 'A device gets its first certificate with a one-time token, and renews over mTLS with its current one' },
  { name: 'devices', description: 'Operators register, inspect, suspend and revoke devices, services and certificates (operator token)' },
  { name: 'tokens', description: 'Admins list and revoke operator tokens' },
  { name: 'audits', description: 'Security audits of the fleet: each check, its severity and its findings (viewer and up)' },
  { name: 'EST', description: 'RFC 7030 Enrollment over Secure Transport, for devices that speak EST rather than JSON' },
  { name: 'PKI', description: 'Trust anchors and CRLs: public, signed objects; also over plain HTTP on the PKI listener (FLEET_PKI_HTTP_PORT)' },
  { name: 'OCSP', description: 'RFC 6960 certificate status: public, signed answers; also over plain HTTP on the PKI listener (FLEET_PKI_HTTP_PORT)' },
  { name: 'health', description: 'Liveness and readiness probes for orchestrators and load balancers' },
  { name: 'documentation', description: 'This document and its interactive reference' },
  { name: 'console', description: 'The ops console in the browser: its page, login and session (cookie with CSRF token)' },
];

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const;

export const partOf = (path: string): string | undefined => PARTS.find(([prefix]) => path.startsWith(prefix))?.[1];

const text = (description: string) => z.string().openapi({ description });
const body = (type: string, description: string) => ({ content: { [type]: { schema: text(description) } } });
const PEM_CHAIN = 'application/pem-certificate-chain';
const KeyId = z.object({ keyId: z.string().regex(/^[0-9a-fA-F]+$/).openapi({ description: "an issuing CA's subject key identifier, hex" }) });

/**
 * The routes written as plain Hono handlers (EST, PKI, OCSP, the reference itself), described here so
 * the document covers every route the server answers. Bodies are not JSON, so no validation hangs on it.
 */
function registerPlainRoutes<E extends Env>(app: OpenAPIHono<E>): void {
  const registry = app.openAPIRegistry;
  registry.registerComponent('securitySchemes', 'estBasic', {
    type: 'http',
    scheme: 'basic',
    description: 'EST enrollment: the device id as user, its one-time enrollment token as password',
  });
  registry.registerComponent('securitySchemes', 'deviceCertificate', {
    type: 'mutualTLS',
    description: "the device's current certificate as the TLS client certificate (directly, or forwarded by a trusted proxy)",
  });

  registry.registerPath({
    method: 'get',
    path: '/.well-known/est/cacerts',
    summary: 'The issuing CAs and the root, as a base64 certs-only PKCS#7 (RFC 7030 4.1)',
    responses: { 200: { description: 'the CA certificates', ...body(CERTS_ONLY, 'base64 DER PKCS#7 certs-only') } },
  });
  registry.registerPath({
    method: 'get',
    path: '/.well-known/est/csrattrs',
    summary: 'What a CSR must carry here (RFC 7030 4.5): the subject commonName, the key types and curves the policy accepts, the signature algorithm',
    responses: { 200: { description: 'the CSR attributes', ...body(CSR_ATTRS, 'base64 DER CsrAttrs') } },
  });
  const estIssue = (path: string, summary: string, security: Record<string, string[]>, issued: string) =>
    registry.registerPath({
      method: 'post',
      path,
      summary,
      security: [security],
      request: { body: { required: true, ...body('application/pkcs10', 'base64 DER PKCS#10 CSR, subject CN=<device id>') } },
      responses: { 200: { description: issued, ...body(CERTS_ONLY, 'base64 DER PKCS#7 certs-only') }, ...problemResponses(400, 401, 403, 409, 413, 415, 503) },
    });
  estIssue('/.well-known/est/simpleenroll', 'EST enrollment with the one-time token as HTTP Basic password (RFC 7030 4.2.1)', { estBasic: [] }, 'the issued certificate');
  estIssue(
    '/.well-known/est/simplereenroll',
    'EST renewal: the current certificate as TLS client certificate, a CSR for the new key (RFC 7030 4.2.2)',
    { deviceCertificate: [] },
    'the new certificate',
  );

  const pem = (path: string, summary: string) =>
    registry.registerPath({ method: 'get', path, summary, responses: { 200: { description: summary, ...body(PEM_CHAIN, 'PEM certificates') } } });
  pem('/pki/ca.pem', 'The current issuing CA then the root, PEM');
  pem('/pki/trust.pem', 'Every trusted issuing CA and the root, PEM');
  pem('/pki/root.pem', 'The root CA, PEM');
  registry.registerPath({
    method: 'get',
    path: '/pki/issuing.crt',
    summary: 'The current issuing CA, DER (a caIssuers URL)',
    responses: { 200: { description: 'the certificate', ...body('application/pkix-cert', 'DER certificate') } },
  });
  registry.registerPath({
    method: 'get',
    path: '/pki/issuers/{keyId}.crt',
    summary: 'An issuing CA by its key id, DER: the caIssuers URL certificates name, right after rotation too',
    request: { params: KeyId },
    responses: { 200: { description: 'the certificate', ...body('application/pkix-cert', 'DER certificate') }, ...problemResponses(404) },
  });
  const crl = (path: string, summary: string, type: string, params?: typeof KeyId) =>
    registry.registerPath({
      method: 'get',
      path,
      summary,
      ...(params ? { request: { params } } : {}),
      responses: {
        200: { description: 'the CRL; while the registry is unreachable, the last one signed (until its nextUpdate)', ...body(type, 'CRL') },
        ...problemResponses(...(params ? [404, 503] : [503])),
      },
    });
  crl('/pki/crl', "The current issuing CA's CRL, DER", 'application/pkix-crl');
  crl('/pki/crl.pem', "The current issuing CA's CRL, PEM", 'application/x-pem-file');
  crl('/pki/crl/{keyId}', "An issuing CA's CRL by its key id, DER: the CRL distribution point certificates name", 'application/pkix-crl', KeyId);

  const OCSP_RESPONSE = body('application/ocsp-response', 'DER OCSPResponse; tryLater while the registry is unreachable and no CRL is at hand');
  registry.registerPath({
    method: 'post',
    path: '/ocsp',
    summary: 'Certificate status (RFC 6960), the DER request as the body',
    request: { body: { required: true, ...body('application/ocsp-request', 'DER OCSPRequest') } },
    responses: { 200: { description: 'a signed OCSP response', ...OCSP_RESPONSE }, ...problemResponses(415) },
  });
  registry.registerPath({
    method: 'get',
    path: '/ocsp/{request}',
    summary: 'Certificate status (RFC 6960 A.1), the DER request base64 then URL encoded as the path',
    request: { params: z.object({ request: text('base64 (or base64url) DER OCSPRequest, URL-encoded') }) },
    responses: { 200: { description: 'a signed OCSP response', ...OCSP_RESPONSE } },
  });

  const page = (path: string, summary: string, type: string) =>
    registry.registerPath({ method: 'get', path, summary, responses: { 200: { description: summary, ...body(type, summary) } } });
  page('/docs', 'The interactive API reference (Swagger UI), served from this server', 'text/html');
  registry.registerPath({
    method: 'get',
    path: '/docs/assets/{file}',
    summary: "The reference page's scripts, styles and icon",
    request: { params: z.object({ file: text('an asset the page names') }) },
    responses: { 200: { description: 'the asset', ...body('application/octet-stream', 'JavaScript, CSS or PNG') }, ...problemResponses(404) },
  });
  page(OPENAPI_PATH, 'This OpenAPI 3.1 document', 'application/json');
}

/** Serves the OpenAPI document with every operation tagged by its part. */
export function serveOpenApi<E extends Env>(app: OpenAPIHono<E>): void {
  registerPlainRoutes(app);
  app.get(OPENAPI_PATH, (c) => {
    const doc = app.getOpenAPI31Document({
      openapi: '3.1.0',
      info: { title: 'fleet-auth provisioning API', version: '0.1.0' },
      tags: TAGS,
    });
    for (const [path, item] of Object.entries(doc.paths ?? {})) {
      for (const method of METHODS) {
        const operation = (item as Record<string, { tags?: string[] } | undefined>)[method];
        const tag = partOf(path);
        if (operation && !operation.tags?.length && tag) operation.tags = [tag];
      }
    }
    return c.json(doc);
  });
}
