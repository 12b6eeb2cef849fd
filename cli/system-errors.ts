import type { FleetConfig } from '../core/config.js';
import { FleetError, fileProblem } from '../core/errors.js';

/** Each listener and the setting that chooses its port, so a failed listen can name what to change. */
function listeners(config: FleetConfig): { setting: string; port: number | undefined; host: string }[] {
  const host = config.listenHost ? 'FLEET_LISTEN_HOST' : 'the host';
  return [
    { setting: 'FLEET_API_PORT', port: config.apiPort, host },
    { setting: 'FLEET_BROKER_PORT', port: config.brokerPort, host },
    { setting: 'FLEET_PKI_HTTP_PORT', port: config.pkiHttpPort, host },
    { setting: 'FLEET_METRICS_PORT', port: config.metricsPort, host: 'FLEET_METRICS_HOST' },
  ];
}

/**
 * A listener that could not open becomes one line naming the setting to change; any other error is
 * returned as it is. Several settings on one port are all named: any of them can move.
 */
export function explainListenFailure(error: unknown, config: FleetConfig): unknown {
  const e = error as NodeJS.ErrnoException & { port?: number; address?: string };
  if (e?.syscall !== 'listen' || e.port === undefined) return error;
  const matching = listeners(config).filter((l) => l.port === e.port);
  const settings = matching.map((l) => l.setting).join(' and ') || 'its port setting';
  switch (e.code) {
    case 'EADDRINUSE':
      return new FleetError('port_in_use', 1, `port ${e.port} is in use (${settings}); stop what holds it or choose another port`);
    case 'EACCES':
      return new FleetError('port_not_allowed', 1, `port ${e.port} needs privileges this process lacks (${settings}); choose a port above 1023`);
    case 'EADDRNOTAVAIL':
      return new FleetError(
        'address_not_available',
        1,
        `address ${e.address} is not one of this machine's (${matching[0]?.host ?? 'FLEET_LISTEN_HOST'}); choose an address this host has`,
      );
    default:
      return error;
  }
}

/** A file system error no caller explained (a path the user typed) as one line, without a stack. */
export function explainFileFailure(error: unknown): FleetError | undefined {
  const e = error as NodeJS.ErrnoException;
  if (!(e instanceof Error) || typeof e.path !== 'string' || typeof e.syscall !== 'string') return undefined;
  return new FleetError('file_unusable', 1, `${e.path}: ${fileProblem(e)}`);
}
