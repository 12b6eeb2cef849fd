import type { AedesOptions, Client, PublishPacket } from 'aedes';
import type { Logger } from '../../core/log.js';
import type { BrokerMetrics } from '../metrics.js';
import { type AdmittedSessions, publishVerdict } from '../session.js';
import { decideSafely } from './guard.js';
import { authorizeWill, isWillOf } from './will.js';

export interface PublishDeps {
  admitted: AdmittedSessions;
  metrics: BrokerMetrics;
  log: Logger;
}

/**
 * aedes asks `authorizePublish` both for a client's PUBLISH and, when a session ends without
 * DISCONNECT, for its Will; the Will has rules of its own (will.ts). A refused PUBLISH is dropped and
 * the session closed: MQTT 3.1.1 has no way to say no to a publish.
 */
export function authorizePublishHook(deps: PublishDeps): Required<AedesOptions>['authorizePublish'] {
  const { admitted, metrics, log } = deps;
  return (client: Client | null, packet: PublishPacket, callback) => {
    if (isWillOf(client, packet)) return authorizeWill(deps, client!, packet, callback);
    const session = admitted.of(client);
    const verdict = decideSafely(log, 'authorizePublish', () => publishVerdict(session, packet.topic), 'failed' as const);
    if (verdict === 'ok') return callback(null);
    metrics.denied('publish');
    log.warn({ deviceId: session?.tracked.identity.deviceId, topic: packet.topic, verdict }, 'publish denied; closing the session');
    callback(new Error(`publish to ${JSON.stringify(packet.topic)} denied: ${verdict}`));
  };
}
