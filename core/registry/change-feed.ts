import pg from 'pg';
import type { Logger } from '../log.js';
import {
  CA_CHANNEL,
  CHANGES_CHANNEL,
  changeIsKept,
  changesSince,
  latestChangeSeq,
  parseChange,
  type RegistryChange,
} from './changes.js';

const FIRST_RETRY_MS = 100;
const MAX_RETRY_MS = 5000;
const REPLAY_PAGE = 10_000;

export interface ChangeFollower {
  /** Moves on every change delivered and every loss of the feed, so a lookup that raced one can tell. */
  readonly epoch: number;
  /** Resolves once LISTEN is in place for the first time. */
  readonly ready: Promise<void>;
  /** True while LISTEN is in place and every change up to now has been delivered. */
  readonly live: boolean;
  /** When the feed was lost (ms, by `now`), while it is not live. */
  readonly lostSince: number | undefined;
  /** The number of the last change delivered (or seen at start). */
  readonly lastSeq: number | undefined;
  /** Called for every registry change, exactly once, in the order the changes committed. */
  onChange(listener: (change: RegistryChange) => void): void;
  /**
   * Called when changes missed while disconnected cannot be replayed (the table no longer holds
   * them): anything learnt from the registry before may be stale and must be read again.
   */
  onGap(listener: () => void): void;
  /** Called when the issuing CAs changed, and after a reconnect (a rotation may have been missed). */
  onCaChange(listener: () => void): void;
  close(): Promise<void>;
}

export interface ChangeFeedOptions {
  /** Where to connect, with the name and timeouts of the feed's own connection. */
  connection: pg.ClientConfig;
  log: Logger;
  /** Milliseconds since the epoch; the broker's clock, so the stale grace is measured on one clock. */
  now?: () => number;
  /** Waits before reconnecting (with backoff); the default is a timer. */
  waitToReconnect?: (delayMs: number) => Promise<void>;
  /** Changes read per query while replaying. */
  replayPageSize?: number;
}

/**
 * Follows registry changes through LISTEN/NOTIFY on a connection of its own, delivering each change
 * exactly once and in order. Change numbers become visible in increasing order (sql/004), so
 * "every change after the last one delivered" is exact: after a lost connection the feed LISTENs
 * again, pages through the table from there until it has caught up, and only then delivers the
 * notifications that arrived meanwhile (skipping those the replay already read) and reports live.
 */
export function followRegistryChanges(options: ChangeFeedOptions): ChangeFollower {
  const { log } = options;
  const now = options.now ?? Date.now;
  const pageSize = options.replayPageSize ?? REPLAY_PAGE;
  const changeListeners: ((change: RegistryChange) => void)[] = [];
  const gapListeners: (() => void)[] = [];
  const caListeners: (() => void)[] = [];
  let lastSeq: number | undefined;
  let epoch = 0;
  let client: pg.Client | undefined;
  let closed = false;
  let live = false;
  let lostSince: number | undefined = now();
  let retryMs = FIRST_RETRY_MS;
  let reconnecting = false;
  let retryTimer: NodeJS.Timeout | undefined;
  /** Notifications received while catching up wait here, so nothing overtakes the replay. */
  let held: RegistryChange[] | undefined;

  const waitToReconnect =
    options.waitToReconnect ?? ((ms: number) => new Promise<void>((resolve) => (retryTimer = setTimeout(resolve, ms))));

  const notify = <T extends unknown[]>(listeners: ((...args: T) => void)[], ...args: T) => {
    for (const listener of listeners) {
      try {
        listener(...args);
      } catch (error) {
        log.error({ err: error, args }, 'handling a registry change failed');
      }
    }
  };

  const deliver = (change: RegistryChange): boolean => {
    // A notification for a change the replay already read.
    if (lastSeq !== undefined && change.seq <= lastSeq) return false;
    epoch++;
    lastSeq = change.seq;
    notify(changeListeners, change);
    return true;
  };

  const lose = (why: unknown) => {
    if (closed || reconnecting) return;
    reconnecting = true;
    epoch++;
    if (live) lostSince = now();
    live = false;
    held = undefined;
    log.warn({ err: why, retryMs }, 'lost the registry change feed; reconnecting');
    const stale = client;
    client = undefined;
    stale?.end().catch(() => undefined);
    const delay = retryMs;
    retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
    waitToReconnect(delay)
      .then(() => {
        reconnecting = false;
        if (!closed) return connect();
      })
      .catch(lose);
  };

  /** Replays what committed since `lastSeq`; the number replayed, or undefined if it cannot be. */
  const catchUp = async (c: pg.Client, from: number): Promise<number | undefined> => {
    if (!(await changeIsKept(c, from))) return undefined;
    let replayed = 0;
    for (;;) {
      const page = await changesSince(c, lastSeq!, pageSize);
      for (const change of page) if (deliver(change)) replayed++;
      if (page.length < pageSize) return replayed;
    }
  };

  const connect = async () => {
    const c = new pg.Client(options.connection);
    client = c;
    held = [];
    const current = () => client === c && !closed;
    c.on('notification', (message) => {
      if (!current()) return;
      if (message.channel === CA_CHANNEL) return notify(caListeners);
      const change = parseChange(message.payload);
      if (!change) return;
      if (held) held.push(change);
      else deliver(change);
    });
    c.on('error', (error) => current() && lose(error));
    c.on('end', () => current() && lose(new Error('connection ended')));
    await c.connect();
    await c.query(`LISTEN ${CHANGES_CHANNEL}`);
    await c.query(`LISTEN ${CA_CHANNEL}`);
    const resumedFrom = lastSeq;
    let replayed: number | undefined;
    if (resumedFrom === undefined) {
      lastSeq = await latestChangeSeq(c);
    } else {
      replayed = await catchUp(c, resumedFrom);
      if (replayed === undefined) {
        const latest = await latestChangeSeq(c);
        log.error(
          { lastSeq: resumedFrom, latest },
          'the registry changes since the last one delivered are gone (the table was pruned or the database restored) and cannot be replayed; ' +
            'dropping every identity cached from the registry, so each is read again',
        );
        lastSeq = latest;
        epoch++;
        notify(gapListeners);
      }
    }
    if (!current()) return;
    const waiting = (held ?? []).sort((a, b) => a.seq - b.seq);
    held = undefined;
    for (const change of waiting) deliver(change);
    live = true;
    lostSince = undefined;
    retryMs = FIRST_RETRY_MS;
    if (resumedFrom !== undefined) {
      notify(caListeners);
      log.info({ replayed: replayed ?? 0, from: resumedFrom, lastSeq }, 'registry change feed restored');
    }
  };

  const ready = connect();
  ready.catch(lose);
  return {
    get epoch() {
      return epoch;
    },
    ready,
    get live() {
      return live;
    },
    get lostSince() {
      return lostSince;
    },
    get lastSeq() {
      return lastSeq;
    },
    onChange: (listener) => void changeListeners.push(listener),
    onGap: (listener) => void gapListeners.push(listener),
    onCaChange: (listener) => void caListeners.push(listener),
    async close() {
      closed = true;
      clearTimeout(retryTimer);
      const c = client;
      client = undefined;
      await c?.end().catch(() => undefined);
    },
  };
}
