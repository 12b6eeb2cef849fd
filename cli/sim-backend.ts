import { loadConfig } from '../core/config.js';
import { logTo } from '../core/log.js';
import { createOperatorToken } from '../core/registry/index.js';
import type { Backend } from '../device-sim/run.js';
import { startFleet } from './start.js';

/**
 * The embedded default in this process, set for a simulator: free ports, and a per-address connect
 * limit raised out of the way since every simulated device connects from 127.0.0.1.
 */
export async function startSimBackend(lifetime: string | undefined): Promise<Backend> {
  const config = loadConfig({
    ...process.env,
    FLEET_API_PORT: '0',
    FLEET_BROKER_PORT: '0',
    FLEET_METRICS_PORT: '0',
    FLEET_PKI_HTTP_PORT: '0',
    FLEET_BROKER_CONNECT_RATE: '1000000',
    FLEET_BROKER_CONNECT_BURST: '1000000',
    ...(lifetime ? { FLEET_CERT_LIFETIME: lifetime, FLEET_CERT_LIFETIME_MIN: lifetime } : {}),
  });
  // Logs go to stderr: stdout's last line belongs to the JSON report.
  const log = logTo(2, process.env.LOG_LEVEL ?? 'warn', config.logFormat);
  const fleet = await startFleet(config, log);
  const operator = await createOperatorToken(fleet.db.pool, { name: 'device-sim', role: 'operator', actor: 'cli:device-sim', now: new Date() });
  return {
    apiUrl: `https://localhost:${fleet.api.port}`,
    brokerHost: 'localhost',
    brokerPort: fleet.broker.port,
    rootPem: fleet.ca.rootPem,
    token: operator.token,
    close: () => fleet.close(),
  };
}
