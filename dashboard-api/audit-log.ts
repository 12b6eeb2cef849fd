import { createRoute, z } from '@hono/zod-openapi';
import { IsoTime, isoDates, pageQuery, pageResponses } from '../core/http/schemas.js';
import { DEVICE_ID_PATTERN, DEVICE_ID_RULE, listAuditLog } from '../core/registry/index.js';
import type { DashboardDeps } from './deps.js';
import { readRoute } from './read-route.js';

const Entry = z
  .object({
    id: z.number().int(),
    at: z.string(),
    actor: z.string().openapi({ example: 'operator:3f2a9c1b7d4e' }),
    action: z.string().openapi({ example: 'device.revoked' }),
    deviceId: z.string().nullable(),
    serial: z.string().nullable(),
    details: z.record(z.string(), z.unknown()),
  })
  .openapi('AuditLogEntry');

const log = createRoute({
  method: 'get',
  path: '/v1/audit-log',
  summary: 'Who changed what, newest first, a page at a time',
  security: [{ operatorToken: [] }],
  request: {
    query: z.strictObject({
      actor: z.string().min(1).max(200).optional().openapi({ description: 'operator:<token id>, cli:<user> or device:<id>' }),
      action: z.string().min(1).max(100).optional().openapi({ example: 'device.revoked' }),
      device: z.string().regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE).optional(),
      since: IsoTime.optional().openapi({ description: 'entries at or after then' }),
      until: IsoTime.optional().openapi({ description: 'entries before then' }),
      ...pageQuery(500, 50),
    }),
  },
  responses: pageResponses('entries', Entry, 'audit log entries'),
});

export const auditLogRoutes = (deps: DashboardDeps) =>
  readRoute(deps, log, async (c) => {
    const { device, ...filter } = c.req.valid('query');
    const page = await listAuditLog(deps.pool, { ...filter, deviceId: device });
    return c.json({ entries: page.entries.map(isoDates), nextCursor: page.nextCursor }, 200);
  });
