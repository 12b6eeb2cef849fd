import type { Queryable } from '../db/transaction.js';

export const DEVICE_EVENTS_CHANNEL = 'fleet_device_events';

export const DEVICE_EVENT_KINDS = [
  'connected',
  'disconnected',
  'refused',
  'enrolled',
  'renewed',
  'revoked',
  'suspended',
  'resumed',
  'ca_changed',
] as const;
export type DeviceEventKind = (typeof DEVICE_EVENT_KINDS)[number];

export interface NewDeviceEvent {
  at: Date;
  kind: DeviceEventKind;
  deviceId?: string | null;
  serial?: string | null;
  address?: string | null;
  /** Why: a refusal reason, a disconnect reason, a revocation reason. */
  reason?: string | null;
  details?: Record<string, unknown>;
}

export interface DeviceEvent {
  id: number;
  at: Date;
  kind: DeviceEventKind;
  deviceId: string | null;
  serial: string | null;
  address: string | null;
  reason: string | null;
  details: Record<string, unknown>;
}

/** One statement for a whole batch, so the broker's events cost one write per flush. */
const INSERT_EVENTS = `
  INSERT INTO device_events (at, kind, device_id, certificate_serial, address, reason, details)
  SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[])`;

const EVENT_COLUMNS = `id, at, kind, device_id, certificate_serial, address, reason, details`;

const SELECT_EVENTS_AFTER = `SELECT ${EVENT_COLUMNS} FROM device_events WHERE id > $1 ORDER BY id LIMIT $2`;

const SELECT_DEVICE_EVENTS = `
  SELECT ${EVENT_COLUMNS} FROM device_events
  WHERE device_id = $1 AND id < $2
  ORDER BY id DESC LIMIT $3`;

const SELECT_LATEST_EVENT = `SELECT coalesce(max(id), 0) AS id FROM device_events`;

export async function recordDeviceEvents(q: Queryable, events: NewDeviceEvent[]): Promise<void> {
  if (events.length === 0) return;
  await q.query(INSERT_EVENTS, [
    events.map((e) => e.at),
    events.map((e) => e.kind),
    events.map((e) => e.deviceId ?? null),
    events.map((e) => e.serial ?? null),
    events.map((e) => e.address ?? null),
    events.map((e) => e.reason ?? null),
    events.map((e) => JSON.stringify(e.details ?? {})),
  ]);
}

const toEvent = (r: Record<string, any>): DeviceEvent => ({
  id: Number(r.id),
  at: r.at,
  kind: r.kind,
  deviceId: r.device_id,
  serial: r.certificate_serial,
  address: r.address,
  reason: r.reason,
  details: r.details,
});

/** Events in the order they were written, after `afterId`: what a stream follower reads next. */
export async function deviceEventsAfter(q: Queryable, afterId: number, limit = 500): Promise<DeviceEvent[]> {
  return (await q.query(SELECT_EVENTS_AFTER, [afterId, limit])).rows.map(toEvent);
}

/** One device's events, newest first, before event `beforeId` (a cursor), at most `limit`. */
export async function eventsOfDevice(
  q: Queryable,
  deviceId: string,
  page: { beforeId?: number; limit: number },
): Promise<DeviceEvent[]> {
  return (await q.query(SELECT_DEVICE_EVENTS, [deviceId, page.beforeId ?? Number.MAX_SAFE_INTEGER, page.limit])).rows.map(toEvent);
}

/** What a reader wants to see: one device's events, some kinds, or both; empty means everything. */
export interface DeviceEventFilter {
  deviceId?: string;
  kinds?: readonly DeviceEventKind[];
}

export const matchesEventFilter = (event: DeviceEvent, filter: DeviceEventFilter): boolean =>
  (filter.deviceId === undefined || event.deviceId === filter.deviceId) && (filter.kinds === undefined || filter.kinds.includes(event.kind));

const SELECT_RECENT_EVENTS = `
  SELECT ${EVENT_COLUMNS} FROM device_events
  WHERE ($1::text IS NULL OR device_id = $1) AND ($2::text[] IS NULL OR kind = ANY($2))
  ORDER BY id DESC LIMIT $3`;

/** The latest events matching `filter`, newest first: what `fleet events` shows before it follows. */
export async function recentDeviceEvents(q: Queryable, filter: DeviceEventFilter, limit: number): Promise<DeviceEvent[]> {
  const { rows } = await q.query(SELECT_RECENT_EVENTS, [filter.deviceId ?? null, filter.kinds ?? null, limit]);
  return rows.map(toEvent);
}

/**
 * Every event after `afterId` matching `filter`, in id order, a page at a time: ids become visible in
 * commit order (sql/008), so reading on from the last one seen misses nothing.
 */
export async function* deviceEventsSince(q: Queryable, afterId: number, filter: DeviceEventFilter, pageSize = 500): AsyncGenerator<DeviceEvent> {
  for (let cursor = afterId; ; ) {
    const page = await deviceEventsAfter(q, cursor, pageSize);
    for (const event of page) if (matchesEventFilter(event, filter)) yield event;
    if (page.length < pageSize) return;
    cursor = page.at(-1)!.id;
  }
}

export async function latestDeviceEventId(q: Queryable): Promise<number> {
  return Number((await q.query(SELECT_LATEST_EVENT)).rows[0].id);
}
