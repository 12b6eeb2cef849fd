import type { EventEmitter } from 'node:events';
import type tls from 'node:tls';
import type { AedesOptions, AuthenticateError, Client, ConnectPacket } from 'aedes';
import type { Logger } from '../../core/log.js';
import type { CertificateIdentity } from '../../core/registry/index.js';
import { decideAdmission, type Refusal } from '../admission.js';
import { peerAddress, verifiedPeer } from '../front-door.js';
import { RegistryUnavailable } from '../identity.js';
import type { DeviceEventRecorder } from '../events.js';
import type { BrokerMetrics } from '../metrics.js';
import { rulesFor, type TopicPolicy } from '../policy.js';
import { checkKeepalive } from '../protection.js';
import type { Refusals } from '../refusals.js';
import type { AdmittedSession, AdmittedSessions } from '../session.js';
import type { DeviceSessions } from '../sessions.js';
import { isValidTopicText } from '../topic-text.js';
import { decideSafely } from './guard.js';

/*
 * What happens on CONNECT. aedes runs, in order: `preConnect` (below: only checks the packet is
 * well formed), its own protocol-level check (anything but MQTT 3.1 and 3.1.1 gets CONNACK 0x01 and
 * never reaches us), then `authenticate` (below: admission). An error from `authenticate` carrying a
 * `returnCode` of 2 to 5 is sent as that CONNACK code before aedes closes the connection, so the
 * device learns why. A packet that is not a well-formed CONNECT is closed without CONNACK, as MQTT
 * requires [MQTT-1.5.3-1], and counted by the close handler as `protocol_error`.
 */

/** MQTT 3.1.1 CONNACK return codes (§3.2.2.3) the broker answers with. */
export const Connack = {
  unacceptableProtocolVersion: 1,
  identifierRejected: 2,
  serverUnavailable: 3,
  notAuthorized: 5,
} as const;

/** What a refused device is told: fix its CONNECT (0x02), retry later (0x03), or stop (0x05). */
export function connackCodeOf(reason: Refusal): number {
  switch (reason) {
    // The same CONNECT will be refused again: the device's configuration is wrong.
    case 'client_id_mismatch':
    case 'keepalive_too_long':
      return Connack.identifierRejected;
    // Nothing is wrong with the device: retry with backoff.
    case 'registry_unavailable':
    case 'internal_error':
      return Connack.serverUnavailable;
    // Unknown, revoked, suspended, superseded, expired or not yet valid: this certificate is not admitted.
    default:
      return Connack.notAuthorized;
  }
}

export interface ConnectDeps {
  /** The registry's answer for a certificate fingerprint, from the cache when it is exact. */
  resolve(fingerprint: string): Promise<CertificateIdentity | undefined>;
  sessions: DeviceSessions;
  admitted: AdmittedSessions;
  policy: TopicPolicy;
  presence: { connected(deviceId: string, serial: string, peer: string | null): void };
  events: Pick<DeviceEventRecorder, 'connected'>;
  /** Called once a session is admitted, to follow it until it closes (see close.ts). */
  opened(client: Client, session: AdmittedSession): void;
  metrics: BrokerMetrics;
  refusals: Refusals;
  clock: () => Date;
  log: Logger;
  keepaliveMaxSeconds: number;
}


export function connectHandlers(deps: ConnectDeps): Required<Pick<AedesOptions, 'preConnect' | 'authenticate'>> {
  const { log, refusals } = deps;
  // The CONNECT between preConnect and authenticate, which aedes does not hand to the latter.
  const connects = new WeakMap<Client, ConnectPacket>();

  const refuse = (reason: Refusal, peer: string | undefined, details: Record<string, unknown>) =>
    refusals.refuse(reason, peer, details, connackCodeOf(reason));

  /** Decides whether the CONNECT is admitted; registers the session in the same tick as the decision. */
  async function admit(client: Client, packet: ConnectPacket): Promise<Error | undefined> {
    const started = performance.now();
    const socket = client.conn as tls.TLSSocket;
    const peer = peerAddress(socket);
    if (checkKeepalive(packet.keepalive ?? 0, deps.keepaliveMaxSeconds) !== 'ok') {
      return refuse('keepalive_too_long', peer, { keepalive: packet.keepalive });
    }
    // The certificate that passed the front door's check at the handshake, never a later one.
    const fingerprint = verifiedPeer(socket)?.fingerprint;
    if (!fingerprint) return refuse('no_certificate', peer, {});
    let identity: CertificateIdentity | undefined;
    try {
      identity = await deps.resolve(fingerprint);
    } catch (error) {
      if (!(error instanceof RegistryUnavailable)) log.error({ err: error }, 'registry lookup failed');
      return refuse('registry_unavailable', peer, { fingerprint, lookup: error instanceof RegistryUnavailable ? error.why : 'failed' });
    }
    const decision = decideAdmission(identity, packet.clientId, deps.clock());
    deps.metrics.observeConnect((performance.now() - started) / 1000);
    if (!decision.admitted) {
      return refuse(decision.reason, peer, { clientId: packet.clientId, deviceId: identity?.deviceId, serial: identity?.serial, fingerprint });
    }
    // aedes drops the answer to a client that is gone; nothing to count, nobody to tell.
    if (socket.destroyed) return new Error('connection closed during lookup');

    // aedes closes a live session with the same client id once this one registers [MQTT-3.1.4-2].
    for (const earlier of deps.sessions.of(identity!.deviceId)) {
      if (earlier.client.id === packet.clientId) deps.admitted.ending(earlier.client, 'takeover');
    }
    // Registered in the same tick as the decision, so any later registry change finds the session.
    const tracked = deps.sessions.add(client, identity!, fingerprint);
    const session = deps.admitted.admit(client, tracked, rulesFor(deps.policy, identity!), peer);
    deps.opened(client, session);
    deps.metrics.connected();
    deps.events.connected(identity!.deviceId, identity!.serial, peer ?? null);
    // Presence (a retained publish and a lifecycle event) waits until CONNACK is out: the device's
    // answer waits for nothing but the decision. A session that closed before then was never online.
    const { deviceId, serial } = identity!;
    client.once('connected', () => {
      if (!client.closed) deps.presence.connected(deviceId, serial, peer ?? null);
    });
    return undefined;
  }

  return {
    preConnect(client, packet, callback) {
      // A Will topic that is not valid MQTT text makes a malformed CONNECT: closed, no CONNACK.
      const verdict = decideSafely(log, 'preConnect', () => (packet.will && !isValidTopicText(packet.will.topic) ? 'invalid_will_topic' : 'ok'), 'failed');
      if (verdict === 'ok') {
        connects.set(client, packet);
        return callback(null, true);
      }
      const peer = peerAddress(client.conn);
      const reason = verdict === 'failed' ? 'internal_error' : 'protocol_error';
      callback(refusals.refuse(reason, peer, { clientId: packet.clientId, problem: verdict }), false);
    },

    authenticate(client, _username, _password, done) {
      const packet = connects.get(client);
      connects.delete(client);
      let answered = false;
      const answer = (refusal: Error | undefined) => {
        if (answered) return;
        answered = true;
        if (refusal) done(refusal as AuthenticateError, false);
        else done(null, true);
      };
      // Nothing thrown here may escape as an unhandled rejection: it would end the process.
      (packet ? admit(client, packet) : Promise.reject(new Error('authenticate ran without a CONNECT')))
        .then(answer, (error) => {
          log.error({ err: error, clientId: packet?.clientId }, 'admission failed inside the broker; the device is told to retry');
          answer(refuse('internal_error', peerAddress(client.conn), { clientId: packet?.clientId }));
        })
        .catch((error) => log.error({ err: error }, 'answering a CONNECT failed'));
    },
  };
}

/**
 * mqtt-packet refuses to parse a CONNECT whose protocol level is not 3, 4 or 5, so aedes never sees
 * it and just closes. MQTT 3.1.1 asks for CONNACK 0x01 [MQTT-3.1.2-2]: send it before aedes closes
 * the socket. (Levels 3 to 5 parse, and aedes answers 5 with 0x01 itself.) Call with each new client.
 */
export function answerUnknownProtocolLevels(client: Client): void {
  const parser = (client as Client & { _parser?: EventEmitter })._parser;
  parser?.prependListener('error', (error: Error) => {
    if (error.message !== 'Invalid protocol version') return;
    const socket = client.conn as tls.TLSSocket;
    if (!socket.destroyed) socket.end(Buffer.from([0x20, 0x02, 0x00, Connack.unacceptableProtocolVersion]));
  });
}
