import { createRoute, z } from '@hono/zod-openapi';
import { type OperatorVariables, requireOperator } from '../core/http/operator-auth.js';
import { apiRouter } from '../core/http/router.js';
import { IsoTime, isoDates, pageQuery, problemResponses } from '../core/http/schemas.js';
import { CERTIFICATE_STATUSES, listCertificates } from '../core/registry/index.js';
import type { DashboardDeps } from './deps.js';

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
  responses: {
    200: {
      description: 'a page of certificates; nextCursor is null on the last page',
      content: { 'application/json': { schema: z.object({ certificates: z.array(ReportLine), nextCursor: z.string().nullable() }) } },
    },
    ...problemResponses(400, 401, 403),
  },
});

export function certificateReportRoutes(deps: DashboardDeps) {
  const app = apiRouter<{ Variables: OperatorVariables }>();
  app.on('GET', '/v1/certificates', requireOperator(deps, 'read'));
  app.openapi(report, async (c) => {
    const page = await listCertificates(deps.pool, c.req.valid('query'));
    return c.json({ certificates: page.certificates.map(isoDates), nextCursor: page.nextCursor }, 200);
  });
  return app;
}
