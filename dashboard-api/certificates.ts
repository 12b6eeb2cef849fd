import { createRoute, z } from '@hono/zod-openapi';
import { IsoTime, isoDates, pageQuery, pageResponses } from '../core/http/schemas.js';
import { CERTIFICATE_STATUSES, listCertificates } from '../core/registry/index.js';
import type { DashboardDeps } from './deps.js';
import { readRoute } from './read-route.js';

const ReportLine = z
  .object({
    serial: z.string(),
    deviceId: z.string(),
    status: z.enum(CERTIFICATE_STATUSES),
    notBefore: z.string(),
    notAfter: z.string(),
    issuer: z.string().openapi({ description: 'the subject of the CA that signed it' }),
  })
  .openapi('CertificateReportLine');

const report = createRoute({
  method: 'get',
  path: '/v1/certificates',
  summary: 'The expiry report: certificates in the order they end (notAfter, then serial), a page at a time',
  security: [{ operatorToken: [] }],
  request: {
    query: z.strictObject({
      expiringBefore: IsoTime.optional().openapi({ description: 'only certificates that end before then' }),
      status: z.enum(CERTIFICATE_STATUSES).optional(),
      ...pageQuery(500, 50),
    }),
  },
  responses: pageResponses('certificates', ReportLine, 'certificates'),
});

export const certificateReportRoutes = (deps: DashboardDeps) =>
  readRoute(deps, report, async (c) => {
    const page = await listCertificates(deps.pool, c.req.valid('query'));
    return c.json({ certificates: page.certificates.map(isoDates), nextCursor: page.nextCursor }, 200);
  });
