import type { Client, PublishPacket } from 'aedes';
import type { Logger } from '../../core/log.js';
import { type AdmittedSessions, publishVerdict } from '../session.js';
import { decideSafely } from './guard.js';

/*
 * The Will: what a session left at CONNECT, published by aedes when the session ends without a
 * DISCONNECT. It is a publish of the session like any other, so it needs the same grant, and it is
 * never published for a session the broker closed because its access was withdrawn (revocation,
 * suspension, expiry, the end of a renewal overlap): a revoked device's last word is not sent.
 */

/** Whether aedes is asking about the Will of `client`, as it does once the client has closed. */
export function isWillOf(client: Client | null, packet: PublishPacket): boolean {
  return client !== null && client.closed && (client as Client & { will?: unknown }).will === packet;
}

export function authorizeWill(deps: { admitted: AdmittedSessions; log: Logger }, client: Client, will: PublishPacket, callback: (error?: Error | null) => void): void {
  const session = deps.admitted.of(client);
  const verdict = decideSafely(deps.log, 'authorizeWill', () => publishVerdict(session, will.topic), 'failed' as const);
  if (verdict === 'ok') return callback(null);
  deps.log.info({ deviceId: session?.tracked.identity.deviceId, topic: will.topic, verdict }, 'Will not published');
  // aedes then drops the Will without publishing it.
  callback(new Error(`Will not published: ${verdict}`));
}
