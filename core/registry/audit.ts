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

const INSERT_AUDIT = `
  INSERT INTO audit_log (at, actor, action, device_id, certificate_serial, details)
  VALUES ($1, $2, $3, $4, $5, $6)`;

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

