import type { Client } from 'aedes';
import type { CertificateIdentity } from '../core/registry/index.js';
import type { Deadline, Scheduler } from '../core/scheduler.js';

export interface Session {
  client: Client;
  identity: CertificateIdentity;
  fingerprint: string;
  /** When the session ends by itself, held in the broker's one deadline scheduler. */
  deadline?: Deadline;
}

export type CloseReason = 'revoked' | 'suspended' | 'expired' | 'superseded' | 'issuer_retired' | 'shutdown';

/** When a session must end on its own: its certificate's expiry, or the end of its renewal overlap. */
export function deadlineOf(identity: CertificateIdentity): number {
  const notAfter = identity.notAfter.getTime();
  if (identity.certificateStatus === 'superseded' && identity.acceptUntil) return Math.min(notAfter, identity.acceptUntil.getTime());
  return notAfter;
}

const reasonAtDeadline = (identity: CertificateIdentity): CloseReason =>
  identity.certificateStatus === 'superseded' ? 'superseded' : 'expired';

/**
 * The live MQTT sessions of each device, with the certificate each uses, so a revocation can close
 * them at once and each one ends by itself when its certificate stops being valid.
 */
export class DeviceSessions {
  readonly #byDevice = new Map<string, Set<Session>>();

  constructor(
    private readonly scheduler: Scheduler,
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
    // A session that closed while its certificate was re-read keeps no deadline behind.
    if (!this.#byDevice.get(session.identity.deviceId)?.has(session)) return;
    session.identity = identity;
    const at = deadlineOf(identity);
    if (at <= this.scheduler.now()) return this.end(session, reasonAtDeadline(identity));
    if (session.deadline) session.deadline.reschedule(at);
    else session.deadline = this.scheduler.at(at, () => this.end(session, reasonAtDeadline(session.identity)));
  }

  #remove(session: Session): void {
    session.deadline?.cancel();
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
