import type pg from 'pg';
import { FleetError } from '../errors.js';
import { inTransaction, type Queryable } from '../db/transaction.js';
import { type Actor, recordAudit } from './audit.js';
import { recordChange } from './changes.js';
import { ENROLLMENT_TOKEN_PREFIX, newSecret } from './secrets.js';

export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
export const DEVICE_ID_RULE =
  '1 to 128 characters: letters, digits and . _ : - (starting with a letter or digit); no / + or #, so it is safe in MQTT topics';
/** Batch names follow the same rule as device ids. */
export const BATCH_NAME_PATTERN = DEVICE_ID_PATTERN;
/** The most devices one bulk registration may carry. */
export const MAX_BULK_DEVICES = 10_000;

export type DeviceStatus = 'pending' | 'active' | 'suspended' | 'revoked';
export type IdentityKind = 'device' | 'service';
export const SERVICE_ROLE_PATTERN = /^[a-z][a-z0-9-]{0,63}$/;
export type CertificateStatus = 'active' | 'superseded' | 'suspended' | 'revoked';

export interface Device {
  id: string;
  status: DeviceStatus;
  kind: IdentityKind;
  role: string | null;
  batch: string | null;
  profile: string | null;
  metadata: Record<string, unknown>;
  createdAt: Date;
  updatedAt: Date;
  lastSeenAt: Date | null;
  connected: boolean;
  connectedSince: Date | null;
  peerAddress: string | null;
}

export interface CertificateSummary {
  serial: string;
  fingerprint: string;
  status: CertificateStatus;
  notBefore: Date;
  notAfter: Date;
  revokedAt: Date | null;
  revocationReason: number | null;
  supersededAt: Date | null;
  acceptUntil: Date | null;
}

export interface NewDevice {
  id: string;
  profile?: string;
  metadata?: Record<string, unknown>;
  /** Set for a backend service identity, with the role the broker's policy knows it by. */
  serviceRole?: string;
}

export interface RegisteredDevices {
  batch: string | null;
  devices: { device: Device; enrollmentToken: string }[];
  enrollmentTokenExpiresAt: Date;
}

export const DEVICE_COLUMNS =
  'id, status, kind, role, batch, profile, metadata, created_at, updated_at, last_seen_at, connected, connected_since, peer_address';

const INSERT_BATCH = `INSERT INTO batches (name, created_at, created_by) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING`;

/** One statement for the whole request: 10,000 rows cost one round trip, not 10,000. */
const INSERT_DEVICES = `
  INSERT INTO devices (id, status, kind, role, batch, profile, metadata, created_at, updated_at)
  SELECT id, 'pending', CASE WHEN role IS NULL THEN 'device' ELSE 'service' END, role, $2, profile, metadata, $1, $1
  FROM unnest($3::text[], $4::text[], $5::jsonb[], $6::text[]) AS d (id, profile, metadata, role)
  ON CONFLICT (id) DO NOTHING
  RETURNING ${DEVICE_COLUMNS}`;

const INSERT_ENROLLMENT_TOKENS = `
  INSERT INTO enrollment_tokens (token_hash, device_id, created_at, expires_at)
  SELECT hash, device_id, $1, $2 FROM unnest($3::bytea[], $4::text[]) AS t (hash, device_id)`;

const INSERT_AUDIT_PER_DEVICE = `
  INSERT INTO audit_log (at, actor, action, device_id, details)
  SELECT $1, $2, $3, device_id, $4 FROM unnest($5::text[]) AS d (device_id)`;

const SELECT_DEVICE = `SELECT ${DEVICE_COLUMNS}, connected_serial FROM devices WHERE id = $1`;
const SELECT_DEVICES_FOR_UPDATE = `SELECT ${DEVICE_COLUMNS} FROM devices WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE`;
const SELECT_BATCH_DEVICE_IDS = `SELECT id FROM devices WHERE batch = $1 ORDER BY id`;
const SELECT_BATCH = `SELECT name FROM batches WHERE name = $1`;

export const CERTIFICATE_SUMMARY_COLUMNS =
  'serial, fingerprint, status, not_before, not_after, revoked_at, revocation_reason, superseded_at, accept_until';

const SELECT_CERTIFICATES_OF_DEVICE = `
  SELECT ${CERTIFICATE_SUMMARY_COLUMNS} FROM certificates WHERE device_id = $1 ORDER BY not_before, serial`;

/** Revocation ends suspension too: a held certificate of a revoked device is revoked for good. */
const REVOKE_CERTIFICATES_OF_DEVICES = `
  UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3
  WHERE device_id = ANY($1::text[]) AND status <> 'revoked'
  RETURNING serial, device_id`;

const SET_DEVICES_STATUS = `
  UPDATE devices SET status = $2, updated_at = $3 WHERE id = ANY($1::text[]) RETURNING ${DEVICE_COLUMNS}`;

/** A revoked device's unused enrollment tokens must not bring it back. */
const EXPIRE_UNUSED_TOKENS = `
  UPDATE enrollment_tokens SET expires_at = $2 WHERE device_id = ANY($1::text[]) AND used_at IS NULL AND expires_at > $2`;

/**
 * Every certificate the device could still use goes on hold: the active one, and superseded ones
 * still in their renewal overlap (the broker would accept them). A superseded one whose overlap has
 * ended is already revoked (reason superseded) and stays so; an expired one proves nothing any more.
 */
const HOLD_CERTIFICATES = `
  UPDATE certificates SET status = 'suspended', revoked_at = $2, revocation_reason = 6
  WHERE device_id = $1 AND not_after > $2
    AND (status = 'active' OR (status = 'superseded' AND accept_until > $2))`;

/** A held certificate goes back to what it was: superseded ones keep their overlap's end. */
const RELEASE_CERTIFICATES = `
  UPDATE certificates SET status = CASE WHEN superseded_at IS NULL THEN 'active' ELSE 'superseded' END,
    revoked_at = NULL, revocation_reason = NULL
  WHERE device_id = $1 AND status = 'suspended'`;

export const toDevice = (r: Record<string, any>): Device => ({
  id: r.id,
  status: r.status,
  kind: r.kind,
  role: r.role,
  batch: r.batch,
  profile: r.profile,
  metadata: r.metadata,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
  lastSeenAt: r.last_seen_at,
  connected: r.connected,
  connectedSince: r.connected_since,
  peerAddress: r.peer_address,
});

export const toCertificateSummary = (r: Record<string, any>): CertificateSummary => ({
  serial: r.serial,
  fingerprint: r.fingerprint,
  status: r.status,
  notBefore: r.not_before,
  notAfter: r.not_after,
  revokedAt: r.revoked_at,
  revocationReason: r.revocation_reason,
  supersededAt: r.superseded_at,
  acceptUntil: r.accept_until,
});

/**
 * Registers devices as pending, each with a one-time enrollment token, optionally in a named batch.
 * All or nothing: if any id is taken, nothing is written and the error names them.
 */
export async function registerDevices(
  pool: pg.Pool,
  input: { devices: NewDevice[]; batch?: string; actor: Actor; tokenTtlMs: number; now: Date },
): Promise<RegisteredDevices> {
  checkNewDevices(input.devices, input.batch);
  const ids = input.devices.map((d) => d.id);
  return inTransaction(pool, async (tx) => {
    if (input.batch) await tx.query(INSERT_BATCH, [input.batch, input.now, input.actor]);
    const inserted = await tx.query(INSERT_DEVICES, [
      input.now,
      input.batch ?? null,
      ids,
      input.devices.map((d) => d.profile ?? null),
      input.devices.map((d) => JSON.stringify(d.metadata ?? {})),
      input.devices.map((d) => d.serviceRole ?? null),
    ]);
    if (inserted.rowCount !== ids.length) {
      const created = new Set(inserted.rows.map((r) => r.id as string));
      const taken = ids.filter((id) => !created.has(id));
      throw new FleetError('device_exists', 409, `already registered: ${preview(taken)}`, { devices: taken.slice(0, 100) });
    }
    const secrets = ids.map(() => newSecret(ENROLLMENT_TOKEN_PREFIX));
    const expiresAt = new Date(input.now.getTime() + input.tokenTtlMs);
    await tx.query(INSERT_ENROLLMENT_TOKENS, [input.now, expiresAt, secrets.map((s) => s.hash), ids]);
    await tx.query(INSERT_AUDIT_PER_DEVICE, [
      input.now,
      input.actor,
      'device.registered',
      { batch: input.batch ?? null, enrollmentTokenExpiresAt: expiresAt.toISOString() },
      ids,
    ]);
    const byId = new Map(inserted.rows.map((r) => [r.id as string, toDevice(r)]));
    return {
      batch: input.batch ?? null,
      devices: ids.map((id, i) => ({ device: byId.get(id)!, enrollmentToken: secrets[i]!.token })),
      enrollmentTokenExpiresAt: expiresAt,
    };
  });
}

type NewDeviceInput = { deviceId: string } & Omit<NewDevice, 'id'>;

/** One device: the bulk path with a single row, so both keep the same rules. */
export async function registerDevice(
  pool: pg.Pool,
  input: NewDeviceInput & { actor: Actor; tokenTtlMs: number; now: Date },
): Promise<{ device: Device; enrollmentToken: string; enrollmentTokenExpiresAt: Date }> {
  const { deviceId, profile, metadata, serviceRole, ...rest } = input;
  const registered = await registerDevices(pool, { ...rest, devices: [{ id: deviceId, profile, metadata, serviceRole }] });
  return { ...registered.devices[0]!, enrollmentTokenExpiresAt: registered.enrollmentTokenExpiresAt };
}

/** The same rules the API's schemas state, enforced here for every caller (CLI, API, imports). */
function checkNewDevices(devices: NewDevice[], batch: string | undefined): void {
  if (batch !== undefined && !BATCH_NAME_PATTERN.test(batch)) {
    throw new FleetError('batch_name_invalid', 400, `"${batch}" is not a valid batch name: ${DEVICE_ID_RULE}`);
  }
  if (devices.length === 0) throw new FleetError('no_devices', 400, 'the request lists no devices');
  if (devices.length > MAX_BULK_DEVICES) {
    throw new FleetError('too_many_devices', 400, `at most ${MAX_BULK_DEVICES} devices per request; this one has ${devices.length}`);
  }
  const seen = new Set<string>();
  for (const [index, device] of devices.entries()) {
    const where = devices.length > 1 ? `row ${index + 1}: ` : '';
    if (!DEVICE_ID_PATTERN.test(device.id)) {
      throw new FleetError('device_id_invalid', 400, `${where}"${device.id}" is not a valid device id: ${DEVICE_ID_RULE}`, { row: index + 1 });
    }
    if (device.serviceRole !== undefined && !SERVICE_ROLE_PATTERN.test(device.serviceRole)) {
      throw new FleetError('role_invalid', 400, `${where}"${device.serviceRole}" is not a valid service role: lower-case letters, digits and -`);
    }
    if (seen.has(device.id)) {
      throw new FleetError('device_id_duplicate', 400, `${where}device id ${device.id} appears more than once`, { row: index + 1 });
    }
    seen.add(device.id);
  }
}

const preview = (ids: string[]) => (ids.length > 10 ? `${ids.slice(0, 10).join(', ')} and ${ids.length - 10} more` : ids.join(', '));

/** The live session as the broker last recorded it: since when, from where, with which certificate. */
export interface DeviceSession {
  connected: boolean;
  since: Date | null;
  address: string | null;
  serial: string | null;
}

export async function getDevice(
  q: Queryable,
  deviceId: string,
): Promise<(Device & { certificates: CertificateSummary[]; session: DeviceSession }) | undefined> {
  const found = await q.query(SELECT_DEVICE, [deviceId]);
  if (found.rowCount === 0) return undefined;
  const certificates = await q.query(SELECT_CERTIFICATES_OF_DEVICE, [deviceId]);
  const device = toDevice(found.rows[0]);
  const session = {
    connected: device.connected,
    since: device.connectedSince,
    address: device.connected ? device.peerAddress : null,
    serial: device.connected ? (found.rows[0].connected_serial as string | null) : null,
  };
  return { ...device, certificates: certificates.rows.map(toCertificateSummary), session };
}

/** RFC 5280 CRLReason codes by name; 7 is unassigned and removeFromCRL (8) only applies to delta CRLs. */
export const REVOCATION_REASONS = {
  unspecified: 0,
  keyCompromise: 1,
  cACompromise: 2,
  affiliationChanged: 3,
  superseded: 4,
  cessationOfOperation: 5,
  certificateHold: 6,
  privilegeWithdrawn: 9,
  aACompromise: 10,
} as const;
export type RevocationReason = keyof typeof REVOCATION_REASONS;

export interface Revocation {
  devices: Device[];
  /** The devices this call revoked (not those that already were). */
  revokedDeviceIds: string[];
  revokedSerials: string[];
}

/**
 * Revokes devices and every certificate they hold, in one transaction. Each device gets a change row
 * whose trigger notifies the broker at commit, which closes its live sessions. Devices already
 * revoked are left as they are, so a retried call changes nothing.
 */
async function revokeDeviceIds(
  tx: pg.PoolClient,
  deviceIds: string[],
  input: { reason: RevocationReason; actor: Actor; now: Date; batch?: string },
): Promise<Revocation> {
  const locked = (await tx.query(SELECT_DEVICES_FOR_UPDATE, [deviceIds])).rows.map(toDevice);
  const targets = locked.filter((d) => d.status !== 'revoked').map((d) => d.id);
  if (targets.length === 0) return { devices: locked, revokedDeviceIds: [], revokedSerials: [] };
  const revoked = await tx.query(REVOKE_CERTIFICATES_OF_DEVICES, [targets, input.now, REVOCATION_REASONS[input.reason]]);
  const updated = (await tx.query(SET_DEVICES_STATUS, [targets, 'revoked', input.now])).rows.map(toDevice);
  await tx.query(EXPIRE_UNUSED_TOKENS, [targets, input.now]);
  await tx.query(INSERT_AUDIT_PER_DEVICE, [input.now, input.actor, 'device.revoked', { reason: input.reason, batch: input.batch ?? null }, targets]);
  await recordChange(tx, { kind: 'device_revoked', at: input.now, targets: targets.map((deviceId) => ({ deviceId })) });
  const unchanged = locked.filter((d) => d.status === 'revoked');
  return {
    devices: [...updated, ...unchanged],
    revokedDeviceIds: targets,
    revokedSerials: revoked.rows.map((r) => r.serial as string),
  };
}

export async function revokeDevice(
  pool: pg.Pool,
  input: { deviceId: string; reason: RevocationReason; actor: Actor; now: Date },
): Promise<{ device: Device; revokedSerials: string[] }> {
  return inTransaction(pool, async (tx) => {
    const result = await revokeDeviceIds(tx, [input.deviceId], input);
    const device = result.devices[0];
    if (!device) throw new FleetError('device_not_found', 404, `no device ${input.deviceId} is registered`);
    return { device, revokedSerials: result.revokedSerials };
  });
}

/** Revokes every device of a factory batch at once, for a batch found to be compromised. */
export async function revokeBatch(
  pool: pg.Pool,
  input: { batch: string; reason: RevocationReason; actor: Actor; now: Date },
): Promise<{ batch: string; revokedDevices: number; revokedSerials: string[] }> {
  return inTransaction(pool, async (tx) => {
    if ((await tx.query(SELECT_BATCH, [input.batch])).rowCount === 0) {
      throw new FleetError('batch_not_found', 404, `no batch ${input.batch} exists`);
    }
    const ids = (await tx.query(SELECT_BATCH_DEVICE_IDS, [input.batch])).rows.map((r) => r.id as string);
    const result = await revokeDeviceIds(tx, ids, input);
    return { batch: input.batch, revokedDevices: result.revokedDeviceIds.length, revokedSerials: result.revokedSerials };
  });
}

async function lockOneDevice(tx: pg.PoolClient, deviceId: string): Promise<Device> {
  const device = (await tx.query(SELECT_DEVICES_FOR_UPDATE, [[deviceId]])).rows.map(toDevice)[0];
  if (!device) throw new FleetError('device_not_found', 404, `no device ${deviceId} is registered`);
  return device;
}

/**
 * Suspension is a reversible hold: the device is refused and its live sessions closed, every
 * certificate it could still use is listed in the CRL and OCSP as certificateHold, and resuming
 * undoes all of it.
 */
export async function suspendDevice(pool: pg.Pool, input: { deviceId: string; actor: Actor; now: Date }): Promise<Device> {
  return inTransaction(pool, async (tx) => {
    const device = await lockOneDevice(tx, input.deviceId);
    if (device.status === 'suspended') return device;
    if (device.status !== 'active') {
      throw new FleetError('device_not_active', 409, `device ${input.deviceId} is ${device.status}; only an active device can be suspended`);
    }
    await tx.query(HOLD_CERTIFICATES, [input.deviceId, input.now]);
    const updated = toDevice((await tx.query(SET_DEVICES_STATUS, [[input.deviceId], 'suspended', input.now])).rows[0]);
    await recordAudit(tx, { actor: input.actor, action: 'device.suspended', deviceId: input.deviceId, at: input.now });
    await recordChange(tx, { kind: 'device_suspended', at: input.now, targets: [{ deviceId: input.deviceId }] });
    return updated;
  });
}

export async function resumeDevice(pool: pg.Pool, input: { deviceId: string; actor: Actor; now: Date }): Promise<Device> {
  return inTransaction(pool, async (tx) => {
    const device = await lockOneDevice(tx, input.deviceId);
    if (device.status === 'active') return device;
    if (device.status !== 'suspended') {
      throw new FleetError('device_not_suspended', 409, `device ${input.deviceId} is ${device.status}; only a suspended device can be resumed`);
    }
    await tx.query(RELEASE_CERTIFICATES, [input.deviceId]);
    const updated = toDevice((await tx.query(SET_DEVICES_STATUS, [[input.deviceId], 'active', input.now])).rows[0]);
    await recordAudit(tx, { actor: input.actor, action: 'device.resumed', deviceId: input.deviceId, at: input.now });
    await recordChange(tx, { kind: 'device_resumed', at: input.now, targets: [{ deviceId: input.deviceId }] });
    return updated;
  });
}

const INSERT_ONE_TOKEN = `INSERT INTO enrollment_tokens (token_hash, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4)`;

/**
 * A new one-time enrollment token for a registered device: how an operator brings back a device whose
 * certificate expired (it can no longer renew on its own). Revoked devices stay revoked.
 */
export async function reissueEnrollmentToken(
  pool: pg.Pool,
  input: { deviceId: string; actor: Actor; tokenTtlMs: number; now: Date },
): Promise<{ device: Device; enrollmentToken: string; enrollmentTokenExpiresAt: Date }> {
  return inTransaction(pool, async (tx) => {
    const device = await lockOneDevice(tx, input.deviceId);
    if (device.status === 'revoked') {
      throw new FleetError('device_revoked', 409, `device ${input.deviceId} is revoked for good; register its replacement under a new id`);
    }
    const secret = newSecret(ENROLLMENT_TOKEN_PREFIX);
    const expiresAt = new Date(input.now.getTime() + input.tokenTtlMs);
    await tx.query(INSERT_ONE_TOKEN, [secret.hash, input.deviceId, input.now, expiresAt]);
    await recordAudit(tx, {
      actor: input.actor,
      action: 'enrollment_token.issued',
      deviceId: input.deviceId,
      details: { enrollmentTokenExpiresAt: expiresAt.toISOString() },
      at: input.now,
    });
    return { device, enrollmentToken: secret.token, enrollmentTokenExpiresAt: expiresAt };
  });
}
