import { createRoute, z } from '@hono/zod-openapi';
import { problemResponses } from '../core/http/schemas.js';
import { fleetSummary } from '../core/registry/index.js';
import type { DashboardDeps } from './deps.js';
import { readRoute } from './read-route.js';

const count = z.number().int();
const Summary = z
  .object({
    at: z.string(),
    devices: z.object({
      byStatus: z.object({ pending: count, active: count, suspended: count, revoked: count }),
      byKind: z.object({ device: count, service: count }),
      online: count,
    }),
    certificates: z.object({ expiringWithin7Days: count, expiringWithin30Days: count }).openapi({ description: 'active certificates only' }),
    refusalsLastHour: z.record(z.string(), count).openapi({ description: "by the broker's refusal reason" }),
    today: z.object({ enrollments: count, renewals: count, revocations: count }).openapi({ description: 'since 00:00 UTC' }),
  })
  .openapi('FleetSummary');

const summary = createRoute({
  method: 'get',
  path: '/v1/fleet/summary',
  summary: 'The fleet at a glance: devices by status and kind, online now, expiring certificates, refusals, today',
  security: [{ operatorToken: [] }],
  responses: { 200: { description: 'the summary', content: { 'application/json': { schema: Summary } } }, ...problemResponses(401, 403) },
});

export const summaryRoutes = (deps: DashboardDeps) =>
  readRoute(deps, summary, async (c) => {
    const s = await fleetSummary(deps.pool, deps.clock());
    return c.json({ ...s, at: s.at.toISOString() }, 200);
  });
