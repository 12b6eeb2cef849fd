import type { Queryable } from '../db/transaction.js';
import { decodeCursor, pageSize, toPage } from './page-cursor.js';

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


export interface AuditLogFilter {
  actor?: string;
  action?: string;
  deviceId?: string;
  /** From this moment on (inclusive). */
  since?: Date;
  /** Before this moment (exclusive). */
  until?: Date;
  limit?: number;
  cursor?: string;
}

export interface AuditLogEntry {
  id: number;
  at: Date;
  actor: Actor;
  action: string;
  deviceId: string | null;
  serial: string | null;
  details: Record<string, unknown>;
}

/**
 * Newest first, (at, id) descending: entries are written with the time of their change, which a
 * later-committing transaction may carry from before an earlier one. The cursor is the last id of the
 * page before; its (at, id) is looked up by primary key (the log is append-only, so it is always there).
 */
const SELECT_AUDIT_PAGE = `
  SELECT id, at, actor, action, device_id, certificate_serial, details FROM audit_log
  WHERE ($1::bigint IS NULL OR (at, id) < (SELECT a.at, a.id FROM audit_log a WHERE a.id = $1::bigint))
    AND ($2::text IS NULL OR actor = $2::text)
    AND ($3::text IS NULL OR action = $3::text)
    AND ($4::text IS NULL OR device_id = $4::text)
    AND ($5::timestamptz IS NULL OR at >= $5::timestamptz)
    AND ($6::timestamptz IS NULL OR at < $6::timestamptz)
  ORDER BY at DESC, id DESC
  LIMIT $7`;

const AUDIT_LIST = 'audit-log';

export async function listAuditLog(q: Queryable, filter: AuditLogFilter): Promise<{ entries: AuditLogEntry[]; nextCursor: string | null }> {
  const limit = pageSize(filter.limit);
  const after = decodeCursor(AUDIT_LIST, filter.cursor, /^[1-9][0-9]{0,17}$/);
  const { rows } = await q.query(SELECT_AUDIT_PAGE, [
    after ?? null,
    filter.actor ?? null,
    filter.action ?? null,
    filter.deviceId ?? null,
    filter.since ?? null,
    filter.until ?? null,
    limit + 1,
  ]);
  const page = toPage(rows, limit, toAuditLogEntry, (r) => String(r.id), AUDIT_LIST);
  return { entries: page.items, nextCursor: page.nextCursor };
}

const toAuditLogEntry = (r: Record<string, any>): AuditLogEntry => ({
  id: Number(r.id),
  at: r.at,
  actor: r.actor,
  action: r.action,
  deviceId: r.device_id,
  serial: r.certificate_serial,
  details: r.details,
});
