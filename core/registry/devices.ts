import type pg from 'pg';
import { FleetError } from '../errors.js';
import { inTransaction, type Queryable } from '../db/transaction.js';
import { type Actor, recordAudit } from './audit.js';
import { ENROLLMENT_TOKEN_PREFIX, newSecret } from './secrets.js';

export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
export const DEVICE_ID_RULE =
  '1 to 128 characters: letters, digits and . _ : - (starting with a letter or digit); no / + or #, so it is safe in MQTT topics';

export type DeviceStatus = 'pending' | 'active' | 'suspended' | 'revoked';

export interface Device {
  id: string;
  status: DeviceStatus;
  createdAt: Date;
  updatedAt: Date;
  lastSeenAt: Date | null;
}

export interface CertificateSummary {
  serial: string;
  fingerprint: string;
  status: 'active' | 'superseded' | 'revoked';
  notBefore: Date;
  notAfter: Date;
  revokedAt: Date | null;
  revocationReason: number | null;
}

export interface RegisteredDevice {
  device: Device;
  enrollmentToken: string;
  enrollmentTokenExpiresAt: Date;
}

const DEVICE_COLUMNS = 'id, status, created_at, updated_at, last_seen_at';

const INSERT_DEVICE = `
  INSERT INTO devices (id, status, created_at, updated_at) VALUES ($1, 'pending', $2, $2)
  ON CONFLICT (id) DO NOTHING
  RETURNING ${DEVICE_COLUMNS}`;

const INSERT_ENROLLMENT_TOKEN = `
  INSERT INTO enrollment_tokens (token_hash, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4)`;

const SELECT_DEVICE = `SELECT ${DEVICE_COLUMNS} FROM devices WHERE id = $1`;
const SELECT_DEVICE_FOR_UPDATE = `SELECT ${DEVICE_COLUMNS} FROM devices WHERE id = $1 FOR UPDATE`;

const SELECT_CERTIFICATES_OF_DEVICE = `
  SELECT serial, fingerprint, status, not_before, not_after, revoked_at, revocation_reason
  FROM certificates WHERE device_id = $1 ORDER BY not_before, serial`;

const REVOKE_CERTIFICATES_OF_DEVICE = `
  UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3
  WHERE device_id = $1 AND status <> 'revoked'
  RETURNING serial`;

const SET_DEVICE_STATUS = `
  UPDATE devices SET status = $2, updated_at = $3 WHERE id = $1 RETURNING ${DEVICE_COLUMNS}`;

/** A revoked device's unused enrollment tokens must not bring it back. */
const EXPIRE_UNUSED_TOKENS = `
  UPDATE enrollment_tokens SET expires_at = $2 WHERE device_id = $1 AND used_at IS NULL AND expires_at > $2`;

const INSERT_CHANGE = `
  INSERT INTO registry_changes (at, kind, device_id, certificate_serial) VALUES ($1, $2, $3, $4)`;

export const toDevice = (r: Record<string, any>): Device => ({
  id: r.id,
  status: r.status,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
  lastSeenAt: r.last_seen_at,
});

const toCertificateSummary = (r: Record<string, any>): CertificateSummary => ({
  serial: r.serial,
  fingerprint: r.fingerprint,
  status: r.status,
  notBefore: r.not_before,
  notAfter: r.not_after,
  revokedAt: r.revoked_at,
  revocationReason: r.revocation_reason,
});

/** Registers a device as pending and gives it a one-time enrollment token. */
export async function registerDevice(
  pool: pg.Pool,
  input: { deviceId: string; actor: Actor; tokenTtlMs: number; now: Date },
): Promise<RegisteredDevice> {
  if (!DEVICE_ID_PATTERN.test(input.deviceId)) {
    throw new FleetError('device_id_invalid', 400, `"${input.deviceId}" is not a valid device id: ${DEVICE_ID_RULE}`);
  }
  return inTransaction(pool, async (tx) => {
    const inserted = await tx.query(INSERT_DEVICE, [input.deviceId, input.now]);
    if (inserted.rowCount === 0) {
      throw new FleetError('device_exists', 409, `device ${input.deviceId} is already registered`);
    }
    const secret = newSecret(ENROLLMENT_TOKEN_PREFIX);
    const expiresAt = new Date(input.now.getTime() + input.tokenTtlMs);
    await tx.query(INSERT_ENROLLMENT_TOKEN, [secret.hash, input.deviceId, input.now, expiresAt]);
    await recordAudit(tx, {
      actor: input.actor,
      action: 'device.registered',
      deviceId: input.deviceId,
      details: { enrollmentTokenExpiresAt: expiresAt.toISOString() },
      at: input.now,
    });
    return { device: toDevice(inserted.rows[0]), enrollmentToken: secret.token, enrollmentTokenExpiresAt: expiresAt };
  });
}

export async function getDevice(
  q: Queryable,
  deviceId: string,
): Promise<(Device & { certificates: CertificateSummary[] }) | undefined> {
  const found = await q.query(SELECT_DEVICE, [deviceId]);
  if (found.rowCount === 0) return undefined;
  const certificates = await q.query(SELECT_CERTIFICATES_OF_DEVICE, [deviceId]);
  return { ...toDevice(found.rows[0]), certificates: certificates.rows.map(toCertificateSummary) };
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

/**
 * Revokes a device and every certificate it holds. The change row's trigger notifies the broker at
 * commit, which closes the device's live sessions. Revoking a revoked device changes nothing.
 */
export async function revokeDevice(
  pool: pg.Pool,
  input: { deviceId: string; reason: RevocationReason; actor: Actor; now: Date },
): Promise<{ device: Device; revokedSerials: string[] }> {
  return inTransaction(pool, async (tx) => {
    const found = await tx.query(SELECT_DEVICE_FOR_UPDATE, [input.deviceId]);
    if (found.rowCount === 0) {
      throw new FleetError('device_not_found', 404, `no device ${input.deviceId} is registered`);
    }
    const current = toDevice(found.rows[0]);
    if (current.status === 'revoked') return { device: current, revokedSerials: [] };

    const code = REVOCATION_REASONS[input.reason];
    const revoked = await tx.query(REVOKE_CERTIFICATES_OF_DEVICE, [input.deviceId, input.now, code]);
    const updated = await tx.query(SET_DEVICE_STATUS, [input.deviceId, 'revoked', input.now]);
    await tx.query(EXPIRE_UNUSED_TOKENS, [input.deviceId, input.now]);
    await tx.query(INSERT_CHANGE, [input.now, 'device_revoked', input.deviceId, null]);
    const revokedSerials = revoked.rows.map((r) => r.serial as string);
    await recordAudit(tx, {
      actor: input.actor,
      action: 'device.revoked',
      deviceId: input.deviceId,
      details: { reason: input.reason, revokedSerials },
      at: input.now,
    });
    return { device: toDevice(updated.rows[0]), revokedSerials };
  });
}
