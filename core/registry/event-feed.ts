import pg from 'pg';
import type { Logger } from '../log.js';
import { type Deadline, type Repeating, repeatEvery, type Scheduler } from '../scheduler.js';
import {
  DEVICE_EVENTS_CHANNEL,
  type DeviceEvent,
  type DeviceEventFilter,
  deviceEventsAfter,
  deviceEventsSince,
  latestDeviceEventId,
  matchesEventFilter,
} from './events.js';

const FIRST_RETRY_MS = 100;
const MAX_RETRY_MS = 5_000;
/** Read anyway this often, so a notification lost with its connection delays events, never loses them. */
const FALLBACK_MS = 10_000;
const PAGE = 500;
/** Live events held for one subscriber while it catches up; past this it is ended, to resume later. */
const MAX_HELD = 10_000;

export interface EventFeedOptions {
  /** Settings for the feed's own LISTEN connection, which cannot come from a pool. */
  connection: pg.ClientConfig;
  /** Where events are read. */
  pool: pg.Pool;
  scheduler: Scheduler;
  log: Logger;
  fallbackMs?: number;
}

export type SubscriptionEnd = 'behind' | 'failed' | 'closed';

export interface EventSubscriber {
  /** Delivers the events after this id; 'now' starts with the next one written. */
  after: number | 'now';
  filter: DeviceEventFilter;
  /** Takes one event. While catching up the feed waits for what it returns; live events do not wait. */
  deliver(event: DeviceEvent): void | Promise<void>;
  /** Told once when the feed ends the subscription: it fell too far behind, reading failed, or the feed closed. */
  ended?(why: SubscriptionEnd): void;
}

export interface DeviceEventFeed {
  /** Follows events from `subscriber.after`, each delivered once and in id order; cancel() stops it. */
  subscribe(subscriber: EventSubscriber): { cancel(): void };
  readonly subscribers: number;
  close(): Promise<void>;
}

interface Subscription {
  readonly subscriber: EventSubscriber;
  /** The last event id this subscriber has been given (or skipped by its filter). */
  cursor: number;
  /** Live events that arrived while it was catching up; undefined once it is live. */
  held: DeviceEvent[] | undefined;
  done: boolean;
}

/**
 * One follower of the device events per process, shared by every reader: LISTENs on its own
 * connection (reconnecting with backoff), reads what was written after the last event it saw when
 * woken or on a slow fallback interval, and hands each event to every subscriber. Event ids become
 * visible in commit order (sql/008), so "after the last id" is exact: a subscriber resuming from an
 * id first reads what it missed from the table, then takes the live events it was held, skipping
 * what it already had. It connects on the first subscription.
 */
export function followDeviceEvents(options: EventFeedOptions): DeviceEventFeed {
  const { log, scheduler, pool } = options;
  const subscriptions = new Set<Subscription>();
  let lastId: number | undefined;
  let markKnown!: () => void;
  /** Resolves once the feed knows where "now" is: subscribers catch up only after that, so nothing falls between. */
  const known = new Promise<void>((resolve) => (markKnown = resolve));
  let started = false;
  let closed = false;
  let client: pg.Client | undefined;
  let retry: Deadline | undefined;
  let retryMs = FIRST_RETRY_MS;
  let fallback: Repeating | undefined;
  let reading = false;
  let readAgain = false;

  const end = (sub: Subscription, why: SubscriptionEnd) => {
    if (sub.done) return;
    sub.done = true;
    subscriptions.delete(sub);
    sub.subscriber.ended?.(why);
  };

  const give = (sub: Subscription, event: DeviceEvent) => {
    sub.cursor = event.id;
    if (!matchesEventFilter(event, sub.subscriber.filter)) return;
    try {
      void Promise.resolve(sub.subscriber.deliver(event)).catch(() => end(sub, 'failed'));
    } catch {
      end(sub, 'failed');
    }
  };

  const offer = (sub: Subscription, event: DeviceEvent) => {
    if (sub.done) return;
    if (!sub.held) return event.id > sub.cursor ? give(sub, event) : undefined;
    if (sub.held.length >= MAX_HELD) return end(sub, 'behind');
    sub.held.push(event);
  };

  const setKnown = (id: number) => {
    if (lastId !== undefined) return;
    lastId = id;
    markKnown();
  };

  /** Reads everything after `lastId` and hands it out; a wake-up during a read reads again after it. */
  const pump = async (): Promise<void> => {
    if (lastId === undefined || closed) return;
    if (reading) {
      readAgain = true;
      return;
    }
    reading = true;
    try {
      do {
        readAgain = false;
        for (;;) {
          const page = await deviceEventsAfter(pool, lastId, PAGE);
          for (const event of page) {
            lastId = event.id;
            for (const sub of subscriptions) offer(sub, event);
          }
          if (page.length < PAGE || closed) break;
        }
      } while (readAgain && !closed);
    } catch (error) {
      log.warn({ err: error }, 'could not read device events; trying again on the next notification or poll');
    } finally {
      reading = false;
    }
  };

  const lose = (why: unknown) => {
    if (closed || retry?.pending) return;
    const stale = client;
    client = undefined;
    stale?.end().catch(() => undefined);
    log.warn({ err: why, retryMs }, 'lost the device event feed; reconnecting (events are read on a slower interval meanwhile)');
    const delay = retryMs;
    retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
    retry = scheduler.at(scheduler.now() + delay, () => void connect().catch(lose));
  };

  const connect = async () => {
    const c = new pg.Client(options.connection);
    client = c;
    const current = () => client === c && !closed;
    c.on('notification', () => current() && void pump());
    c.on('error', (error) => current() && lose(error));
    c.on('end', () => current() && lose(new Error('connection ended')));
    await c.connect();
    if (!current()) return void c.end().catch(() => undefined);
    await c.query(`LISTEN ${DEVICE_EVENTS_CHANNEL}`);
    // Listening first, then reading where "now" is: an event written in between is read, not missed.
    setKnown(await latestDeviceEventId(c));
    retryMs = FIRST_RETRY_MS;
    await pump();
  };

  const start = () => {
    if (started) return;
    started = true;
    connect().catch(lose);
    fallback = repeatEvery(scheduler, options.fallbackMs ?? FALLBACK_MS, async () => {
      try {
        if (lastId === undefined) setKnown(await latestDeviceEventId(pool));
        await pump();
      } catch (error) {
        log.warn({ err: error }, 'could not read device events');
      }
    });
  };

  /** Reads what the subscriber missed, then hands it the live events held meanwhile. */
  const catchUp = async (sub: Subscription, after: number | 'now') => {
    await known;
    if (sub.done) return;
    try {
      if (after === 'now') sub.cursor = lastId!;
      // An id from the future (a restored database) would hold every event back: start from the latest.
      else sub.cursor = after > lastId! ? Math.min(after, await latestDeviceEventId(pool)) : after;
      for await (const event of deviceEventsSince(pool, sub.cursor, {}, PAGE)) {
        if (sub.done) return;
        sub.cursor = event.id;
        if (matchesEventFilter(event, sub.subscriber.filter)) await sub.subscriber.deliver(event);
      }
    } catch (error) {
      log.warn({ err: error }, 'could not read the device events a subscriber missed; it may resume later');
      return end(sub, 'failed');
    }
    if (sub.done) return;
    const held = sub.held ?? [];
    sub.held = undefined;
    for (const event of held) offer(sub, event);
  };

  return {
    subscribe(subscriber) {
      if (closed) {
        subscriber.ended?.('closed');
        return { cancel: () => undefined };
      }
      start();
      const sub: Subscription = { subscriber, cursor: 0, held: [], done: false };
      subscriptions.add(sub);
      void catchUp(sub, subscriber.after);
      return {
        cancel() {
          sub.done = true;
          subscriptions.delete(sub);
        },
      };
    },
    get subscribers() {
      return subscriptions.size;
    },
    async close() {
      closed = true;
      retry?.cancel();
      fallback?.stop();
      for (const sub of [...subscriptions]) end(sub, 'closed');
      const c = client;
      client = undefined;
      await c?.end().catch(() => undefined);
    },
  };
}
