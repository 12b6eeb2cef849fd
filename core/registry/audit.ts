import type { Queryable } from '../db/transaction.js';

/** Who did something: `operator:<token id>`, `cli:<os user>` or `device:<device id>`. */
export type Actor = string;

export interface AuditEntry {
  actor: Actor;
  action: string;
  deviceId?: string;
  certificateSerial?: string;
  details?: Record<string, unknown>;
  at: Date;
}

export interface AuditRecord extends Required<Omit<AuditEntry, 'deviceId' | 'certificateSerial'>> {
  id: string;
  deviceId: string | null;
  certificateSerial: string | null;
}

const INSERT_AUDIT = `
  INSERT INTO audit_log (at, actor, action, device_id, certificate_serial, details)
  VALUES ($1, $2, $3, $4, $5, $6)`;

const SELECT_AUDIT_FOR_DEVICE = `
  SELECT id, at, actor, action, device_id, certificate_serial, details
  FROM audit_log WHERE device_id = $1 ORDER BY id`;

/** Called inside the same transaction as the change it records, so neither lands without the other. */
export async function recordAudit(q: Queryable, entry: AuditEntry): Promise<void> {
  await q.query(INSERT_AUDIT, [
    entry.at,
    entry.actor,
    entry.action,
    entry.deviceId ?? null,
    entry.certificateSerial ?? null,
    entry.details ?? {},
  ]);
}

export async function auditTrailOfDevice(q: Queryable, deviceId: string): Promise<AuditRecord[]> {
  const { rows } = await q.query(SELECT_AUDIT_FOR_DEVICE, [deviceId]);
  return rows.map((r) => ({
    id: String(r.id),
    at: r.at,
    actor: r.actor,
    action: r.action,
    deviceId: r.device_id,
    certificateSerial: r.certificate_serial,
    details: r.details,
  }));
}
