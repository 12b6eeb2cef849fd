import { type Finding, listedCheck } from './check.js';

/** Levels at which the warnings that matter (refusals, revocations, key custody) are no longer written. */
const QUIET_LOG_LEVELS = new Set(['error', 'fatal', 'silent']);

export const metricsDisabled = listedCheck(
  {
    id: 'metrics_disabled',
    title: 'Metrics or logging turned off',
    severity: 'low',
    description:
      'The Prometheus endpoint is turned off (FLEET_METRICS_PORT=off), or LOG_LEVEL is error or quieter, so refusals, takeovers ' +
      'and revocations go uncounted or unlogged and an attack is seen late. Serve metrics and log at warn or info.',
  },
  ({ deps }) => {
    const findings: Finding[] = [];
    if (!deps.audits.metricsEnabled) {
      findings.push({ deviceId: null, serial: null, detail: 'metrics are off (FLEET_METRICS_PORT=off); set it to a port and scrape GET /metrics', setting: 'FLEET_METRICS_PORT' });
    }
    if (QUIET_LOG_LEVELS.has(deps.audits.logLevel)) {
      findings.push({ deviceId: null, serial: null, detail: `LOG_LEVEL is ${deps.audits.logLevel}: warnings are not logged; set it to info or warn`, setting: 'LOG_LEVEL' });
    }
    return findings;
  },
);
