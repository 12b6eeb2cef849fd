import { createRoute, z } from '@hono/zod-openapi';
import { apiRouter } from '../../core/http/router.js';
import { type OperatorVariables, requireOperator } from '../../core/http/operator-auth.js';
import { FleetError } from '../../core/errors.js';
import { getDevice, operatorActor, registerDevice, revokeDevice, type RevocationReason as RevocationReasonName } from '../../core/registry/index.js';
import type { ProvisioningDeps } from '../deps.js';
import { Device, DeviceId, DeviceWithCertificates, isoDates, problemResponses, RevocationReason } from './schemas.js';

const security = [{ operatorToken: [] }];

const register = createRoute({
  method: 'post',
  path: '/v1/devices',
  summary: 'Register a device and get its one-time enrollment token',
  security,
  request: { body: { required: true, content: { 'application/json': { schema: z.object({ id: DeviceId }) } } } },
  responses: {
    201: {
      description: 'registered; the token is shown here once and never again',
      content: {
        'application/json': {
          schema: z.object({ device: Device, enrollmentToken: z.string(), enrollmentTokenExpiresAt: z.string() }),
        },
      },
    },
    ...problemResponses(400, 401, 403, 409),
  },
});

const show = createRoute({
  method: 'get',
  path: '/v1/devices/{id}',
  summary: 'A device and its certificates',
  security,
  request: { params: z.object({ id: DeviceId }) },
  responses: {
    200: { description: 'the device', content: { 'application/json': { schema: DeviceWithCertificates } } },
    ...problemResponses(401, 403, 404),
  },
});

const revoke = createRoute({
  method: 'post',
  path: '/v1/devices/{id}/revoke',
  summary: 'Revoke a device and all its certificates; its live sessions are closed at once',
  security,
  request: {
    params: z.object({ id: DeviceId }),
    body: {
      required: false,
      content: { 'application/json': { schema: z.object({ reason: RevocationReason.default('unspecified') }) } },
    },
  },
  responses: {
    200: {
      description: 'revoked (or already revoked)',
      content: { 'application/json': { schema: z.object({ device: Device, revokedSerials: z.array(z.string()) }) } },
    },
    ...problemResponses(400, 401, 403, 404),
  },
});

export function deviceRoutes(deps: ProvisioningDeps) {
  const app = apiRouter<{ Variables: OperatorVariables }>();
  app.use('/v1/devices', requireOperator(deps.pool, 'devices'));
  app.use('/v1/devices/:id/revoke', requireOperator(deps.pool, 'devices'));
  app.on('GET', '/v1/devices/:id', requireOperator(deps.pool, 'read'));

  app.openapi(register, async (c) => {
    const { id } = c.req.valid('json');
    const registered = await registerDevice(deps.pool, {
      deviceId: id,
      actor: operatorActor(c.get('operator')),
      tokenTtlMs: deps.enrollmentTokenTtlMs,
      now: deps.clock(),
    });
    return c.json(
      {
        device: isoDates(registered.device),
        enrollmentToken: registered.enrollmentToken,
        enrollmentTokenExpiresAt: registered.enrollmentTokenExpiresAt.toISOString(),
      },
      201,
    );
  });

  app.openapi(show, async (c) => {
    const { id } = c.req.valid('param');
    const device = await getDevice(deps.pool, id);
    if (!device) throw new FleetError('device_not_found', 404, `no device ${id} is registered`);
    return c.json({ ...isoDates(device), certificates: device.certificates.map(isoDates) }, 200);
  });

  app.openapi(revoke, async (c) => {
    const { id } = c.req.valid('param');
    // The body is optional, and without one the validator does not run, so the default is applied here.
    const reason = (c.req.valid('json') as { reason?: RevocationReasonName } | undefined)?.reason ?? 'unspecified';
    const result = await revokeDevice(deps.pool, { deviceId: id, reason, actor: operatorActor(c.get('operator')), now: deps.clock() });
    deps.log.info({ deviceId: id, reason, revokedSerials: result.revokedSerials }, 'device revoked');
    return c.json({ device: isoDates(result.device), revokedSerials: result.revokedSerials }, 200);
  });
  return app;
}
