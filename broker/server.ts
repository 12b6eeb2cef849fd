import { once } from 'node:events';
import tls from 'node:tls';
import { Aedes, type Client } from 'aedes';
import type pg from 'pg';
import type { Logger } from '../core/log.js';
import type { CertificateAuthority } from '../core/pki/authority.js';
import { normalizeFingerprint } from '../core/pki/x509.js';
import { type CertificateIdentity, findIdentityByFingerprint, type RegistryChange } from '../core/registry/index.js';
import { decideAdmission, type Refusal } from './admission.js';
import type { ChangeFollower } from './changes.js';
import { secureContextOptions } from '../core/pki/tls.js';
import { presenceWriter } from './presence.js';
import { DeviceSessions } from './sessions.js';
import { mayPublish, maySubscribe } from './topics.js';

export interface BrokerDeps {
  pool: pg.Pool;
  /** Registry changes (revocations) as they commit. */
  changes: ChangeFollower;
  ca: CertificateAuthority;
  clock: () => Date;
  log: Logger;
}

export interface BrokerOptions {
  host?: string;
  port: number;
}

export interface RunningBroker {
  port: number;
  sessions: DeviceSessions;
  /** Refused connections by reason since start. */
  refusals: ReadonlyMap<Refusal, number>;
  /** Takes up the CA's current trust bundle for new handshakes, without a restart. */
  reloadTrust(): void;
  close(): Promise<void>;
}

/** How often a lookup is retried when registry changes keep arriving while it runs. */
const MAX_LOOKUP_ATTEMPTS = 3;

export async function startBroker(deps: BrokerDeps, options: BrokerOptions): Promise<RunningBroker> {
  const { log, clock } = deps;
  const sessions = new DeviceSessions();
  const identities = new WeakMap<Client, CertificateIdentity>();
  const refusals = new Map<Refusal, number>();
  const presence = presenceWriter(deps.pool, log, clock);

  const refuse = (reason: Refusal, peer: string | undefined, details: Record<string, unknown> = {}) => {
    refusals.set(reason, (refusals.get(reason) ?? 0) + 1);
    log.warn({ reason, peer, ...details }, 'connection refused');
    return new Error(`connection refused: ${reason}`);
  };

  const { changes } = deps;
  changes.onChange((change) => {
    const closed = closeAffected(sessions, change);
    if (closed > 0) log.info({ deviceId: change.deviceId, kind: change.kind, closed }, 'closed sessions after registry change');
  });

  /**
   * Looks the certificate up; if a registry change arrived meanwhile, the answer may predate it, so
   * look again. Sessions are registered in the same tick as the final check, so any change after it
   * finds the session and closes it.
   */
  const lookUp = async (fingerprint: string): Promise<CertificateIdentity | undefined> => {
    for (let attempt = 1; ; attempt++) {
      const epoch = changes.epoch;
      const identity = await findIdentityByFingerprint(deps.pool, fingerprint);
      if (changes.epoch === epoch || attempt === MAX_LOOKUP_ATTEMPTS) return identity;
    }
  };

  const aedes = await Aedes.createBroker({
    id: 'fleet-auth',
    maxClientsIdLength: 128,
    connectTimeout: 10_000,
    preConnect(client, packet, callback) {
      const socket = client.conn as tls.TLSSocket;
      const peer = socket.remoteAddress;
      const certificate = socket.getPeerCertificate();
      if (!certificate?.fingerprint256) return callback(refuse('no_certificate', peer), false);
      const fingerprint = normalizeFingerprint(certificate.fingerprint256);
      lookUp(fingerprint).then(
        (identity) => {
          const decision = decideAdmission(identity, packet.clientId, clock());
          if (!decision.admitted) {
            return callback(refuse(decision.reason, peer, { clientId: packet.clientId, deviceId: identity?.deviceId, fingerprint }), false);
          }
          if (socket.destroyed) return callback(new Error('connection closed during lookup'), false);
          identities.set(client, identity!);
          sessions.add(identity!.deviceId, identity!.serial, client);
          presence.seen(identity!.deviceId);
          callback(null, true);
        },
        (error) => {
          log.error({ err: error }, 'registry lookup failed');
          callback(refuse('registry_unavailable', peer, { fingerprint }), false);
        },
      );
    },
    authorizePublish(client, packet, callback) {
      const identity = client ? identities.get(client) : undefined;
      if (identity && mayPublish(identity.deviceId, packet.topic)) return callback(null);
      log.warn({ deviceId: identity?.deviceId, topic: packet.topic }, 'publish denied');
      callback(new Error(`publish to ${packet.topic} denied`));
    },
    authorizeSubscribe(client, subscription, callback) {
      const identity = identities.get(client);
      if (identity && maySubscribe(identity.deviceId, subscription.topic)) return callback(null, subscription);
      log.warn({ deviceId: identity?.deviceId, topic: subscription.topic }, 'subscribe denied');
      // A null subscription is answered with SUBACK 0x80 and keeps the session open.
      callback(null, null);
    },
  });
  aedes.on('clientError', (client, error) => log.debug({ clientId: client.id, err: error.message }, 'client error'));
  aedes.on('connectionError', (client, error) => log.debug({ err: error.message }, 'connection error'));

  const open = new Set<tls.TLSSocket>();
  const server = tls.createServer(
    {
      ...secureContextOptions(deps.ca),
      requestCert: true,
      // Chain, validity and EKU are checked by OpenSSL during the handshake; a peer that fails never
      // sends a byte of MQTT.
      rejectUnauthorized: true,
      handshakeTimeout: 10_000,
    },
    (socket) => {
      open.add(socket);
      socket.once('close', () => open.delete(socket));
      aedes.handle(socket);
    },
  );
  server.on('tlsClientError', (error: NodeJS.ErrnoException, socket) => {
    const reason: Refusal = /did not return a certificate|peer did not return/i.test(error.message)
      ? 'no_certificate'
      : 'tls_handshake_failed';
    refuse(reason, socket.remoteAddress, { tlsError: error.code ?? error.message });
  });

  try {
    server.listen(options.port, options.host);
    await once(server, 'listening');
  } catch (error) {
    await presence.close();
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    throw error;
  }
  const port = (server.address() as { port: number }).port;
  log.info({ port }, 'MQTT broker listening (mTLS)');

  return {
    port,
    sessions,
    refusals,
    reloadTrust: () => server.setSecureContext(secureContextOptions(deps.ca)),
    async close() {
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      for (const socket of open) socket.destroy();
      await stopped;
      await presence.close();
    },
  };
}

/**
 * What a registry change takes away at once. A superseded certificate keeps its sessions through the
 * renewal overlap, and a resumed device has nothing to close.
 */
export function closeAffected(sessions: DeviceSessions, change: RegistryChange): number {
  switch (change.kind) {
    case 'device_revoked':
    case 'device_suspended':
      return sessions.close(change.deviceId);
    case 'certificate_revoked':
      return change.serial ? sessions.close(change.deviceId, change.serial) : 0;
    default:
      return 0;
  }
}
