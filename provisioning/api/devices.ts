import { createRoute, z } from '@hono/zod-openapi';
import type { Context, Next } from 'hono';
import { FleetError } from '../../core/errors.js';
import { forbidden, mayDo, type OperatorVariables, requireOperator } from '../../core/http/operator-auth.js';
import { apiRouter } from '../../core/http/router.js';
import {
  getCertificate,
  getDevice,
  identityKindsOf,
  type IdentityTarget,
  operatorActor,
  registerDevice,
  registerDevices,
  reissueEnrollmentToken,
  resumeDevice,
  revokeBatch,
  revokeCertificate,
  revokeDevice,
  type Device as RegistryDevice,
  type RevocationReason as RevocationReasonName,
  SERVICE_ROLE_PATTERN,
  suspendDevice,
} from '../../core/registry/index.js';
import type { ApiDeps } from '../deps.js';
import { BulkRequest, readBulkRegistration, tokensAsCsv } from './bulk.js';
import {
  BatchName,
  Certificate,
  Device,
  DeviceId,
  DeviceWithCertificates,
  isoDates,
  Metadata,
  Profile,
  problemResponses,
  RevocationReason,
} from './schemas.js';

const security = [{ operatorToken: [] }];
const json = <T extends z.ZodType>(schema: T) => ({ content: { 'application/json': { schema } } });
const TokenGrant = z.object({ device: Device, enrollmentToken: z.string(), enrollmentTokenExpiresAt: z.string() });
const ReasonBody = { required: false, ...json(z.object({ reason: RevocationReason.optional() })) };

const register = createRoute({
  method: 'post',
  path: '/v1/devices',
  summary: 'Register a device and get its one-time enrollment token',
  security,
  request: { body: { required: true, ...json(z.object({ id: DeviceId, profile: Profile.optional(), metadata: Metadata.optional() })) } },
  responses: { 201: { description: 'registered; the token is shown here once and never again', ...json(TokenGrant) }, ...problemResponses(400, 401, 403, 409) },
});

const registerService = createRoute({
  method: 'post',
  path: '/v1/services',
  summary: 'Register a backend service identity with a role; it enrolls like a device',
  security,
  request: { body: { required: true, ...json(z.object({ id: DeviceId, role: z.string().regex(SERVICE_ROLE_PATTERN, 'lower-case letters, digits and -') })) } },
  responses: { 201: { description: 'registered; the token is shown here once and never again', ...json(TokenGrant) }, ...problemResponses(400, 401, 403, 409) },
});

const show = createRoute({
  method: 'get',
  path: '/v1/devices/{id}',
  summary: 'A device, its certificates and its live session',
  security,
  request: { params: z.object({ id: DeviceId }) },
  responses: { 200: { description: 'the device', ...json(DeviceWithCertificates) }, ...problemResponses(401, 403, 404) },
});

const revoke = createRoute({
  method: 'post',
  path: '/v1/devices/{id}/revoke',
  summary: 'Revoke a device and all its certificates; its live sessions are closed at once',
  security,
  request: { params: z.object({ id: DeviceId }), body: ReasonBody },
  responses: {
    200: { description: 'revoked (or already revoked)', ...json(z.object({ device: Device, revokedSerials: z.array(z.string()) })) },
    ...problemResponses(400, 401, 403, 404),
  },
});

const lifecycle = (action: 'suspend' | 'resume', summary: string) =>
  createRoute({
    method: 'post',
    path: `/v1/devices/{id}/${action}`,
    summary,
    security,
    request: { params: z.object({ id: DeviceId }) },
    responses: { 200: { description: 'the device', ...json(Device) }, ...problemResponses(401, 403, 404, 409) },
  });

const reenroll = createRoute({
  method: 'post',
  path: '/v1/devices/{id}/enrollment-token',
  summary: 'A new one-time enrollment token, to re-enroll a device whose certificate expired',
  security,
  request: { params: z.object({ id: DeviceId }) },
  responses: { 201: { description: 'the token, shown once', ...json(TokenGrant) }, ...problemResponses(401, 403, 404, 409) },
});

const showCertificate = createRoute({
  method: 'get',
  path: '/v1/certificates/{serial}',
  summary: 'A certificate by serial, with its PEM',
  security,
  request: { params: z.object({ serial: z.string().regex(/^[0-9a-fA-F]{1,64}$/) }) },
  responses: {
    200: { description: 'the certificate', ...json(Certificate.extend({ deviceId: z.string(), issuer: z.string(), pem: z.string() })) },
    ...problemResponses(401, 403, 404),
  },
});

const revokeOne = createRoute({
  method: 'post',
  path: '/v1/certificates/{serial}/revoke',
  summary: 'Revoke one certificate; its device keeps any other',
  security,
  request: { params: z.object({ serial: z.string().regex(/^[0-9a-fA-F]{1,64}$/) }), body: ReasonBody },
  responses: {
    200: { description: 'revoked (or already revoked)', ...json(Certificate.extend({ deviceId: z.string(), issuer: z.string(), pem: z.string() })) },
    ...problemResponses(400, 401, 403, 404),
  },
});

const revokeBatchRoute = createRoute({
  method: 'post',
  path: '/v1/batches/{name}/revoke',
  summary: 'Revoke every device of a batch and all their certificates',
  security,
  request: { params: z.object({ name: BatchName }), body: ReasonBody },
  responses: {
    200: { description: 'revoked', ...json(z.object({ batch: z.string(), revokedDevices: z.number().int(), revokedSerials: z.array(z.string()) })) },
    ...problemResponses(400, 401, 403, 404),
  },
});

/** A device with its one-time enrollment token: the answer to every route that hands one out. */
const tokenGrantBody = (g: { device: RegistryDevice; enrollmentToken: string; enrollmentTokenExpiresAt: Date }) => ({
  device: isoDates(g.device),
  enrollmentToken: g.enrollmentToken,
  enrollmentTokenExpiresAt: g.enrollmentTokenExpiresAt.toISOString(),
});

/** With an optional body the validator does not run when none is sent, so the default lives here. */
const reasonOf = (body: unknown): RevocationReasonName => (body as { reason?: RevocationReasonName } | undefined)?.reason ?? 'unspecified';

/**
 * Service identities read and command across the whole fleet, so issuing, revoking, suspending or
 * resuming one takes the "services" permission (admins); operators manage devices only. Runs after
 * authentication and before the body is read; admins skip the lookup.
 */
function requireKindPermission(deps: ApiDeps, targetOf: (param: (name: string) => string) => IdentityTarget) {
  return async (c: Context<{ Variables: OperatorVariables }>, next: Next) => {
    const operator = c.get('operator');
    if (!mayDo(operator, 'services')) {
      const kinds = await identityKindsOf(deps.pool, targetOf((name) => c.req.param(name) ?? ''));
      if (kinds.includes('service')) throw forbidden(operator, 'services', 'issue, revoke, suspend or resume a service identity');
    }
    await next();
  };
}

export function deviceRoutes(deps: ApiDeps) {
  const app = apiRouter<{ Variables: OperatorVariables }>();
  const change = requireOperator(deps, 'devices');
  const read = requireOperator(deps, 'read');
  app.on('POST', ['/v1/devices', '/v1/devices/*', '/v1/certificates/*', '/v1/batches/*'], change);
  app.on('GET', ['/v1/devices/*', '/v1/certificates/*'], read);
  app.on('POST', '/v1/devices/:id/:action', requireKindPermission(deps, (param) => ({ deviceId: param('id') })));
  app.on('POST', '/v1/certificates/:serial/revoke', requireKindPermission(deps, (param) => ({ serial: param('serial') })));
  app.on('POST', '/v1/batches/:name/revoke', requireKindPermission(deps, (param) => ({ batch: param('name') })));
  const who = (c: { get(key: 'operator'): OperatorVariables['operator'] }) => ({ actor: operatorActor(c.get('operator')), now: deps.clock() });

  // Bulk registration reads JSON or CSV itself, so it is a plain route documented by hand.
  app.post('/v1/devices/bulk', async (c) => {
    const request = await readBulkRegistration(c);
    const registered = await registerDevices(deps.pool, { ...request, tokenTtlMs: deps.enrollmentTokenTtlMs, ...who(c) });
    const devices = registered.devices.map((d) => ({ id: d.device.id, enrollmentToken: d.enrollmentToken }));
    deps.log.info({ batch: registered.batch, devices: devices.length }, 'devices registered in bulk');
    if ((c.req.header('accept') ?? '').includes('text/csv')) return c.body(tokensAsCsv(devices), 201, { 'content-type': 'text/csv' });
    return c.json({ batch: registered.batch, count: devices.length, enrollmentTokenExpiresAt: registered.enrollmentTokenExpiresAt.toISOString(), devices }, 201);
  });
  app.openAPIRegistry.registerPath({
    method: 'post',
    path: '/v1/devices/bulk',
    summary: 'Register up to 10,000 devices at once (JSON, or CSV with ?batch=&profile=); all or nothing',
    security,
    request: { body: { required: true, content: { 'application/json': { schema: BulkRequest }, 'text/csv': { schema: z.string() } } } },
    responses: {
      201: {
        description: 'every device with its one-time token (CSV when Accept: text/csv)',
        ...json(z.object({ batch: z.string().nullable(), count: z.number().int(), enrollmentTokenExpiresAt: z.string(), devices: z.array(z.object({ id: z.string(), enrollmentToken: z.string() })) })),
      },
      ...problemResponses(400, 401, 403, 409, 413, 415),
    },
  });

  app.openapi(register, async (c) => {
    const { id, profile, metadata } = c.req.valid('json');
    const registered = await registerDevice(deps.pool, { deviceId: id, profile, metadata, tokenTtlMs: deps.enrollmentTokenTtlMs, ...who(c) });
    return c.json(tokenGrantBody(registered), 201);
  });

  // Service identities read across the fleet, so only admins create them.
  app.use('/v1/services', requireOperator(deps, 'services'));
  app.openapi(registerService, async (c) => {
    const { id, role } = c.req.valid('json');
    const registered = await registerDevice(deps.pool, { deviceId: id, serviceRole: role, tokenTtlMs: deps.enrollmentTokenTtlMs, ...who(c) });
    return c.json(tokenGrantBody(registered), 201);
  });

  app.openapi(show, async (c) => {
    const { id } = c.req.valid('param');
    const device = await getDevice(deps.pool, id);
    if (!device) throw new FleetError('device_not_found', 404, `no device ${id} is registered`);
    return c.json({ ...isoDates(device), certificates: device.certificates.map(isoDates), session: isoDates(device.session) }, 200);
  });

  app.openapi(revoke, async (c) => {
    const { id } = c.req.valid('param');
    const reason = reasonOf(c.req.valid('json'));
    const result = await revokeDevice(deps.pool, { deviceId: id, reason, ...who(c) });
    deps.log.info({ deviceId: id, reason, revokedSerials: result.revokedSerials }, 'device revoked');
    return c.json({ device: isoDates(result.device), revokedSerials: result.revokedSerials }, 200);
  });

  app.openapi(lifecycle('suspend', 'Suspend a device (reversible): sessions closed, certificates on hold in the CRL'), async (c) => {
    const device = await suspendDevice(deps.pool, { deviceId: c.req.valid('param').id, ...who(c) });
    return c.json(isoDates(device), 200);
  });
  app.openapi(lifecycle('resume', 'Resume a suspended device: its certificates are accepted again'), async (c) => {
    const device = await resumeDevice(deps.pool, { deviceId: c.req.valid('param').id, ...who(c) });
    return c.json(isoDates(device), 200);
  });

  app.openapi(reenroll, async (c) => {
    const granted = await reissueEnrollmentToken(deps.pool, { deviceId: c.req.valid('param').id, tokenTtlMs: deps.enrollmentTokenTtlMs, ...who(c) });
    return c.json(tokenGrantBody(granted), 201);
  });

  app.openapi(showCertificate, async (c) => {
    const { serial } = c.req.valid('param');
    const certificate = await getCertificate(deps.pool, serial);
    if (!certificate) throw new FleetError('certificate_not_found', 404, `no certificate with serial ${serial} was issued here`);
    return c.json(isoDates(certificate), 200);
  });

  app.openapi(revokeOne, async (c) => {
    const { serial } = c.req.valid('param');
    const certificate = await revokeCertificate(deps.pool, { serial, reason: reasonOf(c.req.valid('json')), ...who(c) });
    return c.json(isoDates(certificate), 200);
  });

  app.openapi(revokeBatchRoute, async (c) => {
    const result = await revokeBatch(deps.pool, { batch: c.req.valid('param').name, reason: reasonOf(c.req.valid('json')), ...who(c) });
    deps.log.info({ batch: result.batch, devices: result.revokedDevices }, 'batch revoked');
    return c.json(result, 200);
  });
  return app;
}
