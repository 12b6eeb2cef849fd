import type pg from 'pg';
import type { Logger } from '../core/log.js';
import { unmapIPv4 } from '../core/net-address.js';
import { type NewDeviceEvent, recordDeviceEvents } from '../core/registry/index.js';
import { repeatEvery, type Scheduler } from '../core/scheduler.js';
import type { Refusal } from './admission.js';
import type { BrokerMetrics } from './metrics.js';

/** Why a session ended, as operators read it in the device's events. */
export type DisconnectReason =
  /** The device sent DISCONNECT. */
  | 'client_disconnect'
  /** The connection closed without one (network, power, the device's own timeout). */
  | 'connection_lost'
  /** Nothing heard from the device for 1.5 times its keepalive. */
  | 'keepalive_timeout'
  /** A new connection with the same client id replaced this one. */
  | 'takeover'
  | 'revoked'
  | 'suspended'
  /** Renewed, and its renewal overlap ended. */
  | 'superseded'
  | 'expired'
  /** Its issuing CA was retired (fleet ca retire). */
  | 'ca_retired'
  /** The broker stopped. */
  | 'shutdown'
  /** The device broke MQTT after it was admitted (a second CONNECT, bytes that are not MQTT). */
  | 'protocol_error';

export interface EventRecorderOptions {
  pool: pg.Pool;
  scheduler: Scheduler;
  clock: () => Date;
  metrics: Pick<BrokerMetrics, 'eventsDropped'>;
  log: Logger;
  /** How often pending events are written; about a second by default. */
  flushMs?: number;
  /** Events held at most while waiting to be written; past it new ones are dropped and counted. */
  capacity?: number;
}

export interface DeviceEventRecorder {
  connected(deviceId: string, serial: string, address: string | null): void;
  disconnected(deviceId: string, serial: string, address: string | null, reason: DisconnectReason): void;
  refused(reason: Refusal, address: string | null, known: { deviceId?: string; serial?: string; clientId?: string }): void;
  /** Writes what is pending now (the timer does this on its own). */
  flush(): Promise<void>;
  /** At shutdown, once every session is closed: stops the timer and writes what is pending. */
  close(): Promise<void>;
}

/**
 * The broker's device events, off the connect path as presence is: kept in memory and written in one
 * statement per flush, so a reconnect storm costs a write a second. The buffer is bounded: while the
 * database is slow or away, events past the capacity are dropped and counted
 * (fleet_broker_events_dropped_total) rather than growing the broker's memory; a failed write is
 * put back in front of newer events, within the same bound.
 */
export function deviceEventRecorder(o: EventRecorderOptions): DeviceEventRecorder {
  const capacity = o.capacity ?? 10_000;
  let pending: NewDeviceEvent[] = [];
  let flushing: Promise<void> = Promise.resolve();

  const add = (event: Omit<NewDeviceEvent, 'at'>) => {
    if (pending.length >= capacity) return o.metrics.eventsDropped(1);
    // An IPv4 peer on a dual-stack listener reads as ::ffff:a.b.c.d; operators search for a.b.c.d.
    pending.push({ ...event, address: event.address && unmapIPv4(event.address), at: o.clock() });
  };

  const write = async (batch: NewDeviceEvent[]) => {
    try {
      await recordDeviceEvents(o.pool, batch);
    } catch (error) {
      const kept = batch.slice(0, Math.max(0, capacity - pending.length));
      pending = [...kept, ...pending];
      o.metrics.eventsDropped(batch.length - kept.length);
      o.log.warn({ err: error, events: batch.length }, 'could not record device events; trying again at the next flush');
    }
  };

  const flush = () => {
    if (pending.length === 0) return flushing;
    const batch = pending;
    pending = [];
    flushing = flushing.then(() => write(batch));
    return flushing;
  };
  const timer = repeatEvery(o.scheduler, o.flushMs ?? 1000, flush);

  return {
    connected: (deviceId, serial, address) => add({ kind: 'connected', deviceId, serial, address }),
    disconnected: (deviceId, serial, address, reason) => add({ kind: 'disconnected', deviceId, serial, address, reason }),
    refused: (reason, address, known) =>
      add({
        kind: 'refused',
        reason,
        address,
        deviceId: known.deviceId ?? null,
        serial: known.serial ?? null,
        details: known.clientId === undefined ? {} : { clientId: known.clientId },
      }),
    flush,
    async close() {
      timer.stop();
      await flush();
      if (pending.length > 0) o.log.warn({ events: pending.length }, 'device events not recorded at shutdown');
    },
  };
}
