import type { Client } from 'aedes';
import type { DisconnectReason } from './events.js';
import { mayPublish, type TopicRules } from './policy.js';
import type { CloseReason, Session } from './sessions.js';
import { isValidTopicText } from './topic-text.js';

/** Why the broker took a session's access away; a session ended for any of these publishes nothing more, not even its Will. */
export type Withdrawal = Exclude<CloseReason, 'shutdown'>;

/**
 * One MQTT session as decided at CONNECT: the certificate's identity and fingerprint (kept in
 * `tracked`, which DeviceSessions updates when a renewal moves its deadline), the topics its policy
 * grants, and, once the broker has closed it for good reason, why.
 */
export interface AdmittedSession {
  readonly tracked: Session;
  readonly rules: TopicRules;
  readonly peer: string | undefined;
  withdrawn?: Withdrawal;
  /** Why the session is ending, when aedes ends it for a reason of its own (a takeover, the keepalive). */
  ending?: DisconnectReason;
}

/** The admitted sessions by aedes client. Weak, so a closed client takes its entry with it. */
export class AdmittedSessions {
  readonly #byClient = new WeakMap<Client, AdmittedSession>();

  admit(client: Client, tracked: Session, rules: TopicRules, peer: string | undefined): AdmittedSession {
    const session: AdmittedSession = { tracked, rules, peer };
    this.#byClient.set(client, session);
    return session;
  }

  of(client: Client | null): AdmittedSession | undefined {
    return client ? this.#byClient.get(client) : undefined;
  }

  /** Notes why aedes is about to end the client's session; the first reason given stands. */
  ending(client: Client, reason: DisconnectReason): void {
    const session = this.#byClient.get(client);
    if (session) session.ending ??= reason;
  }

  /** Marks the session's access as withdrawn: from now on nothing it sends or left behind is published. */
  withdraw(client: Client, reason: CloseReason): void {
    const session = this.#byClient.get(client);
    if (session && reason !== 'shutdown') session.withdrawn ??= reason;
  }
}

export type PublishVerdict = 'ok' | 'no_session' | 'withdrawn' | 'invalid_topic' | 'not_permitted';

/** Whether a session may publish to `topic` now: the one rule for its PUBLISH packets and its Will. */
export function publishVerdict(session: AdmittedSession | undefined, topic: string): PublishVerdict {
  if (!session) return 'no_session';
  // Access withdrawn means nothing more is published for the session, even what is already in flight.
  if (session.withdrawn) return 'withdrawn';
  if (!isValidTopicText(topic)) return 'invalid_topic';
  return mayPublish(session.rules, topic) ? 'ok' : 'not_permitted';
}
