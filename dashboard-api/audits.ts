import { createRoute, z } from '@hono/zod-openapi';
import { type OperatorVariables, requireOperator } from '../core/http/operator-auth.js';
import { problemResponses } from '../core/http/schemas.js';
import { apiRouter } from '../core/http/router.js';
import { AUDIT_CHECK_IDS, auditFindings, auditSummaries, SEVERITIES } from './audits/index.js';
import type { DashboardDeps } from './deps.js';

const security = [{ operatorToken: [] }];

const Severity = z.enum(SEVERITIES);

const AuditSummary = z
  .object({
    check: z.string().openapi({ example: 'revoked_certificate_connected' }),
    title: z.string(),
    severity: Severity,
    description: z.string(),
    findings: z.number().int().openapi({ description: 'how many findings, at the default thresholds' }),
    ok: z.boolean().openapi({ description: 'true when there are no findings' }),
  })
  .openapi('AuditSummary');

const Finding = z
  .object({
    deviceId: z.string().nullable(),
    serial: z.string().nullable().openapi({ description: 'the certificate concerned (a CA certificate for CA checks)' }),
    detail: z.string().openapi({ description: 'what was found and what to do, in a sentence' }),
  })
  .catchall(z.unknown())
  .openapi('AuditFinding', { description: 'each check adds fields of its own (notAfter, addresses, takeovers…)' });

const AuditFindings = z
  .object({
    check: z.string(),
    title: z.string(),
    severity: Severity,
    description: z.string(),
    thresholds: z.record(z.string(), z.number()).openapi({ description: 'the thresholds used, as given or by default' }),
    findings: z.array(Finding),
    nextCursor: z.string().nullable(),
  })
  .openapi('AuditFindings');

const threshold = (description: string) => z.coerce.number().int().optional().openapi({ description });

const list = createRoute({
  method: 'get',
  path: '/v1/audits',
  summary: 'The security audits: each check with its number of findings (viewer and up)',
  security,
  responses: {
    200: { description: 'every check', content: { 'application/json': { schema: z.object({ at: z.string(), audits: z.array(AuditSummary) }) } } },
    ...problemResponses(401, 403),
  },
});

const one = createRoute({
  method: 'get',
  path: '/v1/audits/{check}',
  summary: "One audit check's findings, a page at a time (viewer and up)",
  security,
  request: {
    params: z.object({ check: z.string().openapi({ description: `one of ${AUDIT_CHECK_IDS.join(', ')}` }) }),
    query: z.object({
      days: threshold('for checks measured in days: the threshold in days (see the check\'s description)'),
      hours: threshold('certificate_shared: the window in hours'),
      count: threshold('conflicting_client_ids: takeovers in 24 hours'),
      limit: z.coerce.number().int().min(1).max(500).default(50),
      cursor: z.string().max(2048).optional().openapi({ description: 'nextCursor of the previous page' }),
    }),
  },
  responses: {
    200: { description: 'the findings', content: { 'application/json': { schema: AuditFindings } } },
    ...problemResponses(400, 401, 403, 404),
  },
});

export function auditRoutes(deps: DashboardDeps) {
  const app = apiRouter<{ Variables: OperatorVariables }>();
  app.use('/v1/audits', requireOperator(deps, 'read'));
  app.use('/v1/audits/*', requireOperator(deps, 'read'));
  app.openapi(list, async (c) => {
    const { at, audits } = await auditSummaries(deps);
    return c.json({ at: at.toISOString(), audits }, 200);
  });
  app.openapi(one, async (c) => {
    const { check } = c.req.valid('param');
    const { days, hours, count, limit, cursor } = c.req.valid('query');
    return c.json(await auditFindings(deps, check, { thresholds: { days, hours, count }, limit, cursor }), 200);
  });
  return app;
}
