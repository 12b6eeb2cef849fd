import { createRoute, z } from '@hono/zod-openapi';
import { Device, IsoTime, isoDates, pageQuery, pageResponses } from '../core/http/schemas.js';
import { DEVICE_ID_PATTERN, DEVICE_ID_RULE, DEVICE_STATUSES, IDENTITY_KINDS, listDevices } from '../core/registry/index.js';
import type { DashboardDeps } from './deps.js';
import { readRoute } from './read-route.js';

export const DeviceRow = Device.extend({
  certificateNotAfter: z.string().nullable().openapi({ description: "when the device's active certificate ends" }),
}).openapi('DeviceRow');

const ListQuery = z.strictObject({
  status: z.enum(DEVICE_STATUSES).optional(),
  kind: z.enum(IDENTITY_KINDS).optional(),
  batch: z.string().regex(DEVICE_ID_PATTERN, DEVICE_ID_RULE).optional(),
  profile: z.string().min(1).max(64).optional(),
  online: z.enum(['true', 'false']).optional(),
  expiringBefore: IsoTime.optional().openapi({ description: 'devices with an active certificate that ends before then' }),
  q: z.string().min(1).max(400).optional().openapi({ description: 'an id prefix, or key=value: a metadata value', example: 'sensor-00' }),
  ...pageQuery(500, 50),
});

const list = createRoute({
  method: 'get',
  path: '/v1/devices',
  summary: 'Devices in id order, filtered, a page at a time (keyset paging: pass nextCursor back as cursor)',
  security: [{ operatorToken: [] }],
  request: { query: ListQuery },
  responses: pageResponses('devices', DeviceRow, 'devices'),
});

export const deviceListRoutes = (deps: DashboardDeps) =>
  readRoute(deps, list, async (c) => {
    const { online, ...filter } = c.req.valid('query');
    const page = await listDevices(deps.pool, { ...filter, online: online === undefined ? undefined : online === 'true' });
    return c.json({ devices: page.devices.map(isoDates), nextCursor: page.nextCursor }, 200);
  });
