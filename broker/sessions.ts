import type { Client } from 'aedes';
import type { CertificateIdentity } from '../core/registry/index.js';

/** Longest single timer Node allows (about 24.8 days); longer deadlines are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Session {
  client: Client;
  identity: CertificateIdentity;
  fingerprint: string;
  timer?: NodeJS.Timeout;
}

export type CloseReason = 'revoked' | 'suspended' | 'expired' | 'superseded' | 'issuer_retired' | 'shutdown';

/** When a session must end on its own: its certificate's expiry, or the end of its renewal overlap. */
export function deadlineOf(identity: CertificateIdentity): number {
  const notAfter = identity.notAfter.getTime();
  if (identity.certificateStatus === 'superseded' && identity.acceptUntil) return Math.min(notAfter, identity.acceptUntil.getTime());
  return notAfter;
}

/**
 * The live MQTT sessions of each device, with the certificate each uses, so a revocation can close
 * them at once and each one ends by itself when its certificate stops being valid.
 */
export class DeviceSessions {
  readonly #byDevice = new Map<string, Set<Session>>();

  constructor(
    private readonly now: () => number,
    private readonly onClosed: (session: Session, reason: CloseReason) => void,
  ) {}

  add(client: Client, identity: CertificateIdentity, fingerprint: string): Session {
    const session: Session = { client, identity, fingerprint };
    let sessions = this.#byDevice.get(identity.deviceId);
    if (!sessions) this.#byDevice.set(identity.deviceId, (sessions = new Set()));
    sessions.add(session);
    client.conn.once('close', () => this.#remove(session));
    this.rearm(session, identity);
    return session;
  }

  /** Takes a fresher view of the session's certificate (say, superseded) and moves its deadline. */
  rearm(session: Session, identity: CertificateIdentity): void {
    session.identity = identity;
    clearTimeout(session.timer);
    const wait = deadlineOf(identity) - this.now();
    if (wait <= 0) return this.end(session, identity.certificateStatus === 'superseded' ? 'superseded' : 'expired');
    session.timer = setTimeout(() => this.rearm(session, session.identity), Math.min(wait, MAX_TIMER_MS));
    session.timer.unref();
  }

  #remove(session: Session): void {
    clearTimeout(session.timer);
    const sessions = this.#byDevice.get(session.identity.deviceId);
    if (!sessions) return;
    sessions.delete(session);
    if (sessions.size === 0) this.#byDevice.delete(session.identity.deviceId);
  }

  of(deviceId: string): Session[] {
    return [...(this.#byDevice.get(deviceId) ?? [])];
  }

  *all(): IterableIterator<Session> {
    for (const sessions of this.#byDevice.values()) yield* sessions;
  }

  count(deviceId?: string): number {
    if (deviceId !== undefined) return this.#byDevice.get(deviceId)?.size ?? 0;
    let total = 0;
    for (const sessions of this.#byDevice.values()) total += sessions.size;
    return total;
  }

  /** Ends one session at once, without waiting for MQTT-level goodbyes: its identity is no longer valid. */
  end(session: Session, reason: CloseReason): void {
    this.#remove(session);
    this.onClosed(session, reason);
    session.client.close();
    session.client.conn.destroy();
  }

  /** Ends the device's sessions (only those using `serial`, when given); returns how many. */
  close(deviceId: string, reason: CloseReason, serial?: string): number {
    let closed = 0;
    for (const session of this.of(deviceId)) {
      if (serial !== undefined && session.identity.serial !== serial) continue;
      this.end(session, reason);
      closed++;
    }
    return closed;
  }
}
