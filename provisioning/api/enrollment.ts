import { createRoute, z } from '@hono/zod-openapi';
import { apiRouter } from '../../core/http/router.js';
import { fingerprintOf, pemChain } from '../../core/pki/x509.js';
import type { ProvisioningDeps } from '../deps.js';
import { enroll } from '../enrollment.js';
import { problemResponses } from './schemas.js';

const enrollRoute = createRoute({
  method: 'post',
  path: '/v1/enrollments',
  summary: 'Enroll a device: exchange its one-time token and a PKCS#10 CSR for a client certificate',
  request: {
    body: {
      required: true,
      content: {
        'application/json': {
          schema: z.object({
            token: z.string().min(1).openapi({ description: 'the one-time enrollment token from device registration' }),
            csr: z.string().min(1).openapi({ description: 'PKCS#10 CSR, PEM or base64 DER; subject CN=<device id>, EC P-256 or P-384 key' }),
          }),
        },
      },
    },
  },
  responses: {
    201: {
      description: 'the issued certificate',
      content: {
        'application/json': {
          schema: z
            .object({
              deviceId: z.string(),
              serial: z.string(),
              fingerprint: z.string(),
              notBefore: z.string(),
              notAfter: z.string(),
              certificate: z.string().openapi({ description: 'the device certificate, PEM' }),
              chain: z.string().openapi({ description: 'the device certificate then the issuing CA, PEM' }),
            })
            .openapi('Enrollment'),
        },
      },
    },
    ...problemResponses(400, 401, 403, 409, 413),
  },
});

export function enrollmentRoutes(deps: ProvisioningDeps) {
  const app = apiRouter();
  app.openapi(enrollRoute, async (c) => {
    const { token, csr } = c.req.valid('json');
    const { deviceId, certificate } = await enroll(deps, { token, csr });
    return c.json(
      {
        deviceId,
        serial: certificate.serialNumber.toLowerCase(),
        fingerprint: fingerprintOf(certificate),
        notBefore: certificate.notBefore.toISOString(),
        notAfter: certificate.notAfter.toISOString(),
        certificate: certificate.toString('pem') + '\n',
        chain: pemChain(certificate, deps.ca.issuing),
      },
      201,
    );
  });
  return app;
}
