import type { Client } from 'aedes';
import type { Logger } from '../../core/log.js';
import type { Refusal } from '../admission.js';
import type { DeviceEventRecorder, DisconnectReason } from '../events.js';
import { peerAddress } from '../front-door.js';
import type { BrokerMetrics } from '../metrics.js';
import { CountedRefusal, type Refusals } from '../refusals.js';
import type { AdmittedSession, AdmittedSessions, Withdrawal } from '../session.js';
import type { CloseReason, DeviceSessions, Session } from '../sessions.js';
import { decideSafely } from './guard.js';

/*
 * How connections end. An admitted session's close is recorded as presence (offline once the device
 * has no session left). A session the broker ends because access was withdrawn is marked so before
 * aedes closes it, so nothing more is published for it, its Will included. A connection aedes closes
 * because the peer broke the protocol is counted under a reason that says so.
 */

export interface CloseDeps {
  sessions: DeviceSessions;
  admitted: AdmittedSessions;
  presence: { disconnected(deviceId: string, serial: string): void };
  events: Pick<DeviceEventRecorder, 'disconnected'>;
  metrics: BrokerMetrics;
  refusals: Refusals;
  log: Logger;
}

/** What mqtt-packet or aedes said when it closed a connection, as a counted reason; undefined for none. */
export function protocolFailureOf(client: Client, error: Error & { errorCode?: number }): Refusal | undefined {
  // Refused by one of our hooks, and counted there.
  if (error instanceof CountedRefusal) return undefined;
  // mqtt-packet keeps the error it emitted until it parses again: this one came from the parser.
  const fromParser = (client as Client & { _parser?: { error?: unknown } })._parser?.error === error;
  // aedes' own CONNACK 0x01 (MQTT 5), or a protocol level mqtt-packet cannot parse at all.
  if (error.errorCode === 1 || (fromParser && error.message === 'Invalid protocol version')) return 'unsupported_protocol_version';
  // Bytes that are not MQTT, or (aedes' 'Invalid protocol') a packet before CONNECT or a second CONNECT.
  if (fromParser || error.message === 'Invalid protocol') return 'protocol_error';
  // aedes' backstop timer; the front door's deadline normally closes such a connection first.
  if (error.message === 'connect did not arrive in time') return 'connect_timeout';
  return undefined;
}

const WITHDRAWN: Record<Withdrawal, DisconnectReason> = {
  revoked: 'revoked',
  suspended: 'suspended',
  expired: 'expired',
  superseded: 'superseded',
  issuer_retired: 'ca_retired',
};

/** Why a session's connection closed: what the broker decided first, then what aedes saw, then the device. */
export function disconnectReasonOf(client: Client, session: AdmittedSession, shuttingDown: boolean): DisconnectReason {
  if (session.withdrawn) return WITHDRAWN[session.withdrawn];
  if (session.ending) return session.ending;
  if (shuttingDown) return 'shutdown';
  // aedes sets this on a DISCONNECT packet, and only then (it also skips the Will for it).
  if ((client as Client & { _disconnected?: boolean })._disconnected) return 'client_disconnect';
  return 'connection_lost';
}

/** What aedes' error says about an admitted session's end, if anything. */
function endingOf(client: Client, error: Error): DisconnectReason | undefined {
  if (error.message === 'keep alive timeout') return 'keepalive_timeout';
  return protocolFailureOf(client, error) ? 'protocol_error' : undefined;
}

export function closeHandlers(deps: CloseDeps) {
  const { log } = deps;
  let shuttingDown = false;
  return {
    /** Follows an admitted session until its connection closes. */
    opened(client: Client, session: AdmittedSession): void {
      const { deviceId, serial } = session.tracked.identity;
      client.conn.once('close', () =>
        decideSafely(log, 'close', () => {
          deps.metrics.disconnected();
          deps.events.disconnected(deviceId, serial, session.peer ?? null, disconnectReasonOf(client, session, shuttingDown));
          if (deps.sessions.count(deviceId) === 0) deps.presence.disconnected(deviceId, serial);
        }, undefined),
      );
    },

    /** The broker is stopping: sessions that close from now on without another reason closed for that. */
    shuttingDown(): void {
      shuttingDown = true;
    },

    /** DeviceSessions is about to close a session whose access is gone (revoked, suspended, expired, superseded). */
    closedByBroker(session: Session, reason: CloseReason): void {
      deps.admitted.withdraw(session.client, reason);
      log.info({ deviceId: session.identity.deviceId, serial: session.identity.serial, reason }, 'session closed by the broker');
    },

    /** aedes' 'clientError' and 'connectionError': it has closed the connection after `error`. */
    failed(client: Client, error: Error): void {
      decideSafely(log, 'connectionError', () => {
        const ending = endingOf(client, error);
        if (ending) deps.admitted.ending(client, ending);
        const reason = protocolFailureOf(client, error);
        const peer = peerAddress(client.conn);
        if (reason) deps.refusals.refuse(reason, peer, { clientId: client.id ?? undefined, error: error.message });
        else log.debug({ clientId: client.id, peer, err: error.message }, 'connection closed after an error');
      }, undefined);
    },
  };
}
