import type { AedesOptions } from 'aedes';
import type { Logger } from '../../core/log.js';
import type { BrokerMetrics } from '../metrics.js';
import { maySubscribe } from '../policy.js';
import type { AdmittedSessions } from '../session.js';
import { isValidTopicText } from '../topic-text.js';
import { decideSafely } from './guard.js';

export interface SubscribeDeps {
  admitted: AdmittedSessions;
  metrics: BrokerMetrics;
  log: Logger;
}

/**
 * Each filter of a SUBSCRIBE is granted or refused on its own: a refused one gets SUBACK 0x80 and
 * the session continues. A filter with characters no MQTT receiver accepts is refused the same way.
 */
export function authorizeSubscribeHook(deps: SubscribeDeps): Required<AedesOptions>['authorizeSubscribe'] {
  const { admitted, metrics, log } = deps;
  return (client, subscription, callback) => {
    const session = admitted.of(client);
    const verdict = decideSafely(
      log,
      'authorizeSubscribe',
      () => {
        if (!session || session.withdrawn) return 'no_session';
        if (!isValidTopicText(subscription.topic)) return 'invalid_topic';
        return maySubscribe(session.rules, subscription.topic) ? 'ok' : 'not_permitted';
      },
      'failed',
    );
    if (verdict === 'ok') return callback(null, subscription);
    // The hook failed, not the filter: refuse the connection rather than guess.
    if (verdict === 'failed') return callback(new Error('the subscription could not be authorized'));
    metrics.denied('subscribe');
    log.warn({ deviceId: session?.tracked.identity.deviceId, topic: subscription.topic, verdict }, 'subscribe denied');
    // A null subscription is answered with SUBACK 0x80 and keeps the session open.
    callback(null, null);
  };
}
