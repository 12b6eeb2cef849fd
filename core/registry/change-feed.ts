import pg from 'pg';
import type { Logger } from '../log.js';
import { CA_CHANNEL, CHANGES_CHANNEL, changesSince, latestChangeSeq, parseChange, type RegistryChange } from './changes.js';

/**
 * Sequence numbers are taken at insert but become visible at commit, so a change can appear after one
 * with a higher number. Replaying a window below the last number seen catches those; handling a
 * change twice is harmless (closing a closed session does nothing).
 */
const REPLAY_WINDOW = 1000;
const MAX_RETRY_MS = 5000;

export interface ChangeFollower {
  /** Moves on every change received, so a lookup that raced one can tell and look again. */
  readonly epoch: number;
  /** Resolves once LISTEN is in place for the first time. */
  readonly ready: Promise<void>;
  /** True while LISTEN is in place and every change up to now has been delivered. */
  readonly live: boolean;
  /** When the feed was lost (ms since the epoch), while it is not live. */
  readonly lostSince: number | undefined;
  /** Called for every registry change, in the order received. */
  onChange(listener: (change: RegistryChange) => void): void;
  /** Called when the issuing CAs changed, and after a reconnect (a rotation may have been missed). */
  onCaChange(listener: () => void): void;
  close(): Promise<void>;
}

/**
 * Follows registry changes through LISTEN/NOTIFY on a connection of its own. After losing that
 * connection it reconnects and replays from the registry_changes table, so no change is missed.
 */
export function followRegistryChanges(options: { url: string; log: Logger }): ChangeFollower {
  const { url, log } = options;
  const changeListeners: ((change: RegistryChange) => void)[] = [];
  const caListeners: (() => void)[] = [];
  let lastSeq: number | undefined;
  let epoch = 0;
  let client: pg.Client | undefined;
  let closed = false;
  let live = false;
  let lostSince: number | undefined = Date.now();
  let retryMs = 100;
  let retryTimer: NodeJS.Timeout | undefined;

  const deliver = (change: RegistryChange) => {
    epoch++;
    if (lastSeq === undefined || change.seq > lastSeq) lastSeq = change.seq;
    for (const listener of changeListeners) {
      try {
        listener(change);
      } catch (error) {
        log.error({ err: error, change }, 'handling a registry change failed');
      }
    }
  };
  const caChanged = () => {
    for (const listener of caListeners) listener();
  };

  const scheduleReconnect = (why: unknown) => {
    if (closed || retryTimer) return;
    epoch++;
    if (live) lostSince = Date.now();
    live = false;
    log.warn({ err: why, retryMs }, 'lost the registry change feed; reconnecting');
    const stale = client;
    client = undefined;
    stale?.end().catch(() => undefined);
    retryTimer = setTimeout(() => {
      retryTimer = undefined;
      connect().catch(scheduleReconnect);
    }, retryMs);
    retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
  };

  const connect = async () => {
    const c = new pg.Client({ connectionString: url, application_name: 'fleet-auth broker changes' });
    c.on('notification', (message) => {
      if (message.channel === CA_CHANNEL) return caChanged();
      const change = parseChange(message.payload);
      if (change) deliver(change);
    });
    c.on('error', scheduleReconnect);
    c.on('end', () => {
      if (client === c) scheduleReconnect(new Error('connection ended'));
    });
    client = c;
    await c.connect();
    await c.query(`LISTEN ${CHANGES_CHANNEL}`);
    await c.query(`LISTEN ${CA_CHANNEL}`);
    if (lastSeq === undefined) {
      lastSeq = await latestChangeSeq(c);
    } else {
      const missed = await changesSince(c, Math.max(0, lastSeq - REPLAY_WINDOW), 100_000);
      for (const change of missed) deliver(change);
      caChanged();
      log.info({ replayed: missed.length, lastSeq }, 'registry change feed restored');
    }
    live = true;
    lostSince = undefined;
    retryMs = 100;
  };

  const ready = connect();
  ready.catch(scheduleReconnect);
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
    onChange: (listener) => void changeListeners.push(listener),
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
