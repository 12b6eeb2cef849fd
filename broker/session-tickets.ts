import { randomBytes } from 'node:crypto';
import { repeatEvery, type Scheduler } from '../core/scheduler.js';

/*
 * TLS session-ticket keys shared by the broker workers of one machine, so a device that resumes its
 * session reaches any worker the listener hands it to and still skips the full handshake. The primary
 * makes the keys, in memory only (never on disk, never in the environment), sends them to each worker
 * over the cluster's IPC channel, and replaces them on a schedule.
 *
 * Node's TLS takes one ticket key set at a time (48 bytes: name, HMAC and AES keys), so the previous
 * set cannot stay valid beside the new one: a ticket issued under the old keys gets a full handshake
 * once, and a new ticket. Node also refuses tickets older than the session timeout (300 s by default),
 * so at a 12 h rotation about 300 s / 12 h, under 1 %, of resumable tickets are lost at each rotation.
 */

export const TICKET_KEY_BYTES = 48;
export const DEFAULT_ROTATION_MS = 12 * 3_600_000;

const MESSAGE_TYPE = 'fleet:ticket-keys';
const REQUEST_TYPE = 'fleet:ticket-keys-request';

/** What the primary sends a worker: the keys in force now. */
export interface TicketKeyMessage {
  type: typeof MESSAGE_TYPE;
  keys: string;
}

export interface TicketKeyRotation {
  /** The message that carries the keys in force: for a worker that starts now. */
  message(): TicketKeyMessage;
  stop(): void;
}

/** The primary's keys: new ones every `intervalMs`, each handed to `rotated` (which sends them to every worker). */
export function rotateTicketKeys(o: { rotated(message: TicketKeyMessage): void; scheduler: Scheduler; intervalMs?: number }): TicketKeyRotation {
  let keys = randomBytes(TICKET_KEY_BYTES);
  const message = (): TicketKeyMessage => ({ type: MESSAGE_TYPE, keys: keys.toString('base64') });
  const rotation = repeatEvery(o.scheduler, o.intervalMs ?? DEFAULT_ROTATION_MS, () => {
    keys = randomBytes(TICKET_KEY_BYTES);
    o.rotated(message());
  });
  return { message, stop: () => rotation.stop() };
}

/** The keys in a message from the primary, or undefined when it is another message or malformed. */
export function ticketKeysOf(message: unknown): Buffer | undefined {
  if (typeof message !== 'object' || message === null) return undefined;
  const { type, keys } = message as Partial<TicketKeyMessage>;
  if (type !== MESSAGE_TYPE || typeof keys !== 'string') return undefined;
  const bytes = Buffer.from(keys, 'base64');
  return bytes.length === TICKET_KEY_BYTES ? bytes : undefined;
}

/** Whether a worker's message asks for the keys in force (it does once, when it is ready to take them). */
export const asksForTicketKeys = (message: unknown): boolean =>
  typeof message === 'object' && message !== null && (message as { type?: unknown }).type === REQUEST_TYPE;

/**
 * A worker's side: asks the primary for the keys once it listens for them (a message sent before would
 * be lost), resolves with the first set (the broker starts with it), then hands every later set to `apply`.
 */
export function requestTicketKeys(channel: NodeJS.Process, apply: (keys: Buffer) => void): Promise<Buffer> {
  return new Promise((resolve) => {
    let first = true;
    channel.on('message', (message: unknown) => {
      const keys = ticketKeysOf(message);
      if (!keys) return;
      if (first) {
        first = false;
        resolve(keys);
      } else apply(keys);
    });
    channel.send?.({ type: REQUEST_TYPE });
  });
}
