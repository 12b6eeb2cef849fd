import { createRoute, z } from '@hono/zod-openapi';
import { FleetError } from '../../core/errors.js';
import { knownProblem, problemBody } from '../../core/http/problem.js';
import { apiRouter } from '../../core/http/router.js';
import { fingerprintOf, pemChain } from '../../core/pki/x509.js';
import type { ApiDeps, ProvisioningDeps } from '../deps.js';
import { enroll, enrollScreened, type Issued, renew, screenEnrollmentTokens, screenRenewal } from '../enrollment.js';
import { clientCertificateOf } from '../client-certificate.js';
import { IssuedCertificate, Lifetime, problemResponses } from './schemas.js';
import { mapLimited } from '../../core/concurrency.js';

export const MAX_BATCH_ENROLLMENTS = 1000;
/** Enrollments of one batch request run this many at a time, leaving pool connections for others. */
const BATCH_CONCURRENCY = 4;

const Csr = z.string().min(1).openapi({ description: 'PKCS#10 CSR, PEM or base64 DER; subject CN=<device id>' });
const EnrollmentRequest = z.object({
  token: z.string().min(1).openapi({ description: 'the one-time enrollment token from device registration' }),
  csr: Csr,
  lifetime: Lifetime.optional(),
});

const enrollRoute = createRoute({
  method: 'post',
  path: '/v1/enrollments',
  summary: 'Enroll a device: exchange its one-time token and a CSR for a client certificate',
  description: 'Sending the same CSR with the same token again (after a lost response) returns the same certificate with status 200.',
  request: { body: { required: true, content: { 'application/json': { schema: EnrollmentRequest } } } },
  responses: {
    201: { description: 'the issued certificate', content: { 'application/json': { schema: IssuedCertificate } } },
    200: { description: 'a retry: the certificate issued for this token and CSR before', content: { 'application/json': { schema: IssuedCertificate } } },
    ...problemResponses(400, 401, 403, 409, 413),
  },
});

const batchRoute = createRoute({
  method: 'post',
  path: '/v1/enrollments/batch',
  summary: `Enroll up to ${MAX_BATCH_ENROLLMENTS} devices in one request; each succeeds or fails on its own`,
  request: {
    body: {
      required: true,
      content: { 'application/json': { schema: z.object({ enrollments: z.array(EnrollmentRequest).min(1).max(MAX_BATCH_ENROLLMENTS) }) } },
    },
  },
  responses: {
    200: {
      description: 'one result per enrollment, in request order: the certificate, or a problem',
      content: {
        'application/json': {
          schema: z.object({
            issued: z.number().int(),
            failed: z.number().int(),
            results: z.array(z.object({ index: z.number().int(), status: z.number().int(), certificate: IssuedCertificate.optional(), problem: z.unknown().optional() })),
          }),
        },
      },
    },
    ...problemResponses(400, 413),
  },
});

const renewRoute = createRoute({
  method: 'post',
  path: '/v1/renewals',
  summary: 'Renew over mTLS: present the current certificate as the TLS client certificate and send a CSR for a new key',
  security: [{ deviceCertificate: [] }],
  request: { body: { required: true, content: { 'application/json': { schema: z.object({ csr: Csr, lifetime: Lifetime.optional() }) } } } },
  responses: {
    201: { description: 'the new certificate; the presented one is superseded', content: { 'application/json': { schema: IssuedCertificate } } },
    ...problemResponses(400, 401, 403, 409, 413),
  },
});

export function issuedBody(deps: ProvisioningDeps, issued: Issued) {
  const { certificate } = issued;
  return {
    deviceId: issued.deviceId,
    serial: certificate.serialNumber.toLowerCase(),
    fingerprint: fingerprintOf(certificate),
    notBefore: certificate.notBefore.toISOString(),
    notAfter: certificate.notAfter.toISOString(),
    certificate: certificate.toString('pem') + '\n',
    chain: pemChain(certificate, deps.ca.issuing),
    ...(issued.previousSerial ? { previousSerial: issued.previousSerial } : {}),
  };
}


export function enrollmentRoutes(deps: ApiDeps) {
  const app = apiRouter();

  app.openapi(enrollRoute, async (c) => {
    const issued = await enroll(deps, c.req.valid('json'));
    return c.json(issuedBody(deps, issued), issued.replayed ? 200 : 201);
  });

  app.openapi(batchRoute, async (c) => {
    const { enrollments } = c.req.valid('json');
    // Every token is screened, in one lookup, before any CSR is parsed.
    const refusals = await screenEnrollmentTokens(deps, enrollments);
    const unknown = refusals.filter((r) => r?.status === 401).length;
    if (unknown > 0) deps.throttle.failed(c, 'token_unknown', unknown);
    const results = await mapLimited(enrollments, BATCH_CONCURRENCY, async (request, index) => {
      try {
        if (refusals[index]) throw refusals[index];
        const issued = await enrollScreened(deps, request);
        return { index, status: issued.replayed ? 200 : 201, certificate: issuedBody(deps, issued) };
      } catch (error) {
        const known = knownProblem(error);
        if (!known) deps.log.error({ err: error, index }, 'batch enrollment item failed');
        const problem = known ?? new FleetError('internal_error', 500, 'this enrollment failed on the server; it has been logged');
        return { index, status: problem.status, problem: problemBody(problem, c.req.path) };
      }
    });
    const issued = results.filter((r) => r.status < 300).length;
    return c.json({ issued, failed: results.length - issued, results }, 200);
  });

  // The client certificate is checked before the body is read.
  app.use(renewRoute.path, async (c, next) => {
    screenRenewal(deps, clientCertificateOf(deps, c));
    await next();
  });
  app.openapi(renewRoute, async (c) => {
    const issued = await renew(deps, clientCertificateOf(deps, c), c.req.valid('json'));
    return c.json(issuedBody(deps, issued), 201);
  });
  return app;
}
