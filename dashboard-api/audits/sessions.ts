import {
  conflictingClientIds,
  countConflictingClientIds,
  countNeverSeen,
  countSharedCertificates,
  countSurvivingSessions,
  neverSeenDevices,
  sharedCertificates,
  survivingSessions,
} from '../../core/registry/index.js';
import { type AuditCheck, type AuditContext, DAY_MS, daysThreshold, findingsOf, HOUR_MS, isoDate, plural } from './check.js';

/** Checks of how identities connect: shared certificates, fighting clients, sessions that outlived revocation, devices never seen. */

const hoursAgo = (ctx: AuditContext, hours: number) => new Date(ctx.now.getTime() - hours * HOUR_MS);

export const certificateShared: AuditCheck = {
  id: 'certificate_shared',
  title: 'Certificate in use from several addresses',
  severity: 'critical',
  description:
    'Device certificates that connected from more than one address within the window (?hours=, default 1), from the broker\'s ' +
    'connect events. Two machines holding the same key is a cloned or stolen credential; a device that really moved networks ' +
    'shows here too. Revoke the certificate if the addresses are not the device\'s.',
  thresholds: [{ name: 'hours', description: 'connects within this many hours', min: 1, max: 720, default: () => 1 }],
  count: (ctx) => countSharedCertificates(ctx.deps.pool, hoursAgo(ctx, ctx.threshold('hours'))),
  findings: async (ctx, page) =>
    findingsOf(await sharedCertificates(ctx.deps.pool, hoursAgo(ctx, ctx.threshold('hours')), page), (s) => ({
      deviceId: s.deviceId,
      serial: s.serial,
      detail:
        `certificate ${s.serial}${s.deviceId ? ` of ${s.deviceId}` : ''} connected from ${plural(s.addressCount, 'address', 'addresses')} ` +
        `in the last ${plural(ctx.threshold('hours'), 'hour')}: ${s.addresses.join(', ')}`,
      addresses: s.addresses,
      connects: s.connects,
      lastConnectedAt: isoDate(s.lastConnectedAt),
    })),
};

const TAKEOVER_WINDOW_HOURS = 24;

export const conflictingClientIdsCheck: AuditCheck = {
  id: 'conflicting_client_ids',
  title: 'Conflicting client ids (repeated takeovers)',
  severity: 'high',
  description:
    'Devices whose session was taken over by a new connection with the same client id at least the threshold number of times in ' +
    `the last ${TAKEOVER_WINDOW_HOURS} hours (?count=, default 3): two clients fighting over one identity, or a device reconnecting ` +
    'in a loop. The broker closes the older session each time.',
  thresholds: [{ name: 'count', description: 'takeovers in 24 hours', min: 1, max: 100_000, default: () => 3 }],
  count: (ctx) => countConflictingClientIds(ctx.deps.pool, hoursAgo(ctx, TAKEOVER_WINDOW_HOURS), ctx.threshold('count')),
  findings: async (ctx, page) =>
    findingsOf(await conflictingClientIds(ctx.deps.pool, hoursAgo(ctx, TAKEOVER_WINDOW_HOURS), ctx.threshold('count'), page), (c) => ({
      deviceId: c.deviceId,
      serial: null,
      detail:
        `${c.deviceId}'s session was taken over ${plural(c.takeovers, 'time')} in the last ${TAKEOVER_WINDOW_HOURS} hours` +
        (c.addresses.length > 0 ? `; sessions taken over came from ${c.addresses.join(', ')}` : ''),
      takeovers: c.takeovers,
      addresses: c.addresses,
      lastTakeoverAt: isoDate(c.lastTakeoverAt),
    })),
};

/**
 * How long after a revocation a session may still show as connected: the broker cuts it at once, but
 * writes presence in batches (every second) and may be catching up on the change feed after a
 * reconnect. A session older than this past its revocation was not cut.
 */
export const LIVE_CUT_GRACE_MS = 60_000;

export const revokedCertificateConnected: AuditCheck = {
  id: 'revoked_certificate_connected',
  title: 'Revoked identity still with a live session',
  severity: 'critical',
  description:
    'Devices shown connected more than a minute after they, or the certificate their session presented, were revoked or suspended. ' +
    'The broker closes such sessions at once, so this stays empty while the live cut works; a finding means a broker that did not ' +
    'follow the registry\'s changes. Restart that broker.',
  thresholds: [],
  count: (ctx) => countSurvivingSessions(ctx.deps.pool, new Date(ctx.now.getTime() - LIVE_CUT_GRACE_MS)),
  findings: async (ctx, page) =>
    findingsOf(await survivingSessions(ctx.deps.pool, new Date(ctx.now.getTime() - LIVE_CUT_GRACE_MS), page), (s) => {
      const what =
        s.deviceStatus === 'revoked' || s.deviceStatus === 'suspended'
          ? `the device was ${s.deviceStatus}`
          : `the certificate it presented (${s.serial}) was ${s.certificateStatus}`;
      const since = s.connectedSince ? ` since ${isoDate(s.connectedSince)}` : '';
      const from = s.peerAddress ? ` from ${s.peerAddress}` : '';
      return {
        deviceId: s.deviceId,
        serial: s.serial,
        detail: `${s.deviceId} is connected${since}${from} although ${what} at ${isoDate(s.revokedAt)}`,
        deviceStatus: s.deviceStatus,
        certificateStatus: s.certificateStatus,
        revokedAt: isoDate(s.revokedAt),
        connectedSince: s.connectedSince ? isoDate(s.connectedSince) : null,
        address: s.peerAddress,
      };
    }),
};

const activeBy = (ctx: AuditContext) => new Date(ctx.now.getTime() - ctx.threshold('days') * DAY_MS);

export const neverSeen: AuditCheck = {
  id: 'never_seen',
  title: 'Devices never seen since enrollment',
  severity: 'low',
  description:
    'Active identities that enrolled (or were last re-enrolled or resumed) longer ago than the threshold (?days=, default 7) and ' +
    'have never connected to the broker, longest first: ' +
    'a certificate issued to something that is not using it. Find the device, or revoke it.',
  thresholds: [daysThreshold('enrolled more than this many days ago', () => 7)],
  count: (ctx) => countNeverSeen(ctx.deps.pool, activeBy(ctx)),
  findings: async (ctx, page) =>
    findingsOf(await neverSeenDevices(ctx.deps.pool, activeBy(ctx), page), (d) => ({
      deviceId: d.deviceId,
      serial: null,
      detail: `${d.kind === 'service' ? 'service' : 'device'} ${d.deviceId} enrolled at ${isoDate(d.enrolledAt)} and has never connected`,
      kind: d.kind,
      enrolledAt: isoDate(d.enrolledAt),
      activeSince: isoDate(d.activeSince),
    })),
};
