import type { Logger } from '../core/log.js';
import type { BrokerMetrics } from './metrics.js';
import type { DeviceSessions, Session } from './sessions.js';

/**
 * Ends at once every live session whose certificate was signed by an issuing CA no longer trusted
 * (`fleet ca retire`): the new TLS trust only refuses the next handshake. Run after each CA reload,
 * in every broker; the registry's record of the issuer, not what the peer sent, decides. Returns
 * how many sessions it closed.
 */
export function closeSessionsOfRetiredIssuers(
  sessions: DeviceSessions,
  trustedIssuers: readonly string[],
  deps: { metrics: BrokerMetrics; log: Logger },
): number {
  const trusted = new Set(trustedIssuers);
  // Collected first: ending a session removes it from the set being walked.
  const retired: Session[] = [];
  for (const session of sessions.all()) if (!trusted.has(session.identity.issuer)) retired.push(session);
  for (const session of retired) sessions.end(session, 'issuer_retired');
  deps.metrics.retirementClosed(retired.length);
  if (retired.length > 0) {
    const issuers = [...new Set(retired.map((s) => s.identity.issuer))];
    deps.log.warn({ closed: retired.length, issuers }, 'closed the sessions of devices whose issuing CA was retired');
  }
  return retired.length;
}
