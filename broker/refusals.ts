import type { Logger } from '../core/log.js';
import type { Refusal } from './admission.js';
import type { DeviceEventRecorder } from './events.js';
import type { BrokerMetrics } from './metrics.js';

/**
 * A refusal that has been counted and logged already. aedes hands the error given to a hook back in
 * its 'clientError' and 'connectionError' events; this class tells the close handler not to count
 * it a second time. `returnCode` is the CONNACK code aedes answers with, when there is one.
 */
export class CountedRefusal extends Error {
  override name = 'CountedRefusal';
  constructor(
    readonly reason: Refusal,
    readonly returnCode?: number,
  ) {
    super(`connection refused: ${reason}`);
  }
}

export interface Refusals {
  /** Refused connections by reason since start. */
  readonly counts: ReadonlyMap<Refusal, number>;
  /** Counts and logs one refusal; the returned error is what the hook answers aedes with. */
  refuse(reason: Refusal, peer: string | undefined, details?: Record<string, unknown>, returnCode?: number): CountedRefusal;
}

const text = (value: unknown) => (typeof value === 'string' ? value : undefined);

/** Counts, logs and records (as a device event, with what is known of who it was) each refusal. */
export function refusalCounter(metrics: BrokerMetrics, log: Logger, events: Pick<DeviceEventRecorder, 'refused'>): Refusals {
  const counts = new Map<Refusal, number>();
  return {
    counts,
    refuse(reason, peer, details = {}, returnCode) {
      counts.set(reason, (counts.get(reason) ?? 0) + 1);
      metrics.refused(reason);
      events.refused(reason, peer ?? null, { deviceId: text(details.deviceId), serial: text(details.serial), clientId: text(details.clientId) });
      log.warn({ reason, peer, ...details, ...(returnCode === undefined ? {} : { connack: returnCode }) }, 'connection refused');
      return new CountedRefusal(reason, returnCode);
    },
  };
}
