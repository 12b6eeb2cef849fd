import type { Queryable } from '../db/transaction.js';
import type { IdentityKind } from './devices.js';

/** What an operator action is aimed at: one identity, one certificate's identity, or a batch. */
export type IdentityTarget = { deviceId: string } | { serial: string } | { batch: string };

const SELECT_KIND_OF_DEVICE = `SELECT kind FROM devices WHERE id = $1`;
const SELECT_KIND_OF_CERTIFICATE = `
  SELECT d.kind FROM certificates c JOIN devices d ON d.id = c.device_id WHERE c.serial = $1`;
const SELECT_KINDS_IN_BATCH = `SELECT DISTINCT kind FROM devices WHERE batch = $1`;

/**
 * The kinds of identity an action on `target` would touch; empty when the target does not exist
 * (the action itself then answers its own 404). A kind never changes once registered, so checking
 * it before the action's own transaction cannot be raced.
 */
export async function identityKindsOf(q: Queryable, target: IdentityTarget): Promise<IdentityKind[]> {
  const [sql, value] =
    'deviceId' in target
      ? [SELECT_KIND_OF_DEVICE, target.deviceId]
      : 'serial' in target
        ? [SELECT_KIND_OF_CERTIFICATE, target.serial.toLowerCase()]
        : [SELECT_KINDS_IN_BATCH, target.batch];
  return (await q.query(sql, [value])).rows.map((r) => r.kind as IdentityKind);
}
