import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { type ChangeFollower, findIdentityByFingerprint, type RegistryChange } from '../core/registry/index.js';
import { decideAdmission, type Refusal } from './admission.js';
import type { IdentityCache } from './identity-cache.js';
import type { BrokerMetrics } from './metrics.js';
import type { DeviceSessions } from './sessions.js';

export interface RegistryChangeDeps {
  pool: pg.Pool;
  changes: ChangeFollower;
  cache: IdentityCache;
  sessions: DeviceSessions;
  metrics: BrokerMetrics;
  clock: () => Date;
  log: Logger;
}

/**
 * What each registry change does to the broker: drops the device's cached identities and ends what
 * it takes away. When changes were lost and cannot be replayed, nothing cached can be trusted: the
 * whole cache goes, so each certificate is read again.
 */
export function followRegistryChanges(deps: RegistryChangeDeps): void {
  const { sessions, log } = deps;
  deps.changes.onGap(() => deps.cache.clear());

  /** A superseded certificate keeps its session until the overlap ends: read the new deadline. */
  const refreshSessions = async (deviceId: string, serial: string | null) => {
    for (const session of sessions.of(deviceId)) {
      if (serial && session.identity.serial !== serial) continue;
      const identity = await findIdentityByFingerprint(deps.pool, session.fingerprint);
      const decision = decideAdmission(identity, session.identity.deviceId, deps.clock());
      if (decision.admitted) sessions.rearm(session, identity!);
      else sessions.end(session, closeReasonOf(decision.reason));
    }
  };

  deps.changes.onChange((change) => {
    deps.cache.forgetDevice(change.deviceId);
    const closed = closeAffected(sessions, change);
    deps.metrics.revocationClosed(closed);
    if (closed > 0) log.info({ deviceId: change.deviceId, kind: change.kind, closed }, 'closed sessions after registry change');
    if (change.kind === 'certificate_superseded') {
      refreshSessions(change.deviceId, change.serial).catch((error) =>
        log.error({ err: error, deviceId: change.deviceId }, 'could not re-read a superseded certificate; its session keeps its old deadline'),
      );
    }
  });
}

function closeReasonOf(reason: Refusal) {
  if (reason === 'suspended') return 'suspended' as const;
  if (reason === 'expired') return 'expired' as const;
  if (reason === 'superseded') return 'superseded' as const;
  return 'revoked' as const;
}

/**
 * What a registry change takes away at once. A superseded certificate keeps its session through the
 * renewal overlap (its deadline is re-read), and a resumed device has nothing to close.
 */
export function closeAffected(sessions: DeviceSessions, change: RegistryChange): number {
  switch (change.kind) {
    case 'device_revoked':
      return sessions.close(change.deviceId, 'revoked');
    case 'device_suspended':
      return sessions.close(change.deviceId, 'suspended');
    case 'certificate_revoked':
      return change.serial ? sessions.close(change.deviceId, 'revoked', change.serial) : 0;
    default:
      return 0;
  }
}
