import path from 'node:path';
import { loadConfig } from '../core/config.js';
import { ensureDataDir } from '../core/db/database.js';
import { logTo } from '../core/log.js';
import { createOperatorToken } from '../core/registry/index.js';
import type { Backend, StartBackend } from '../device-sim/run.js';
import { startFleet } from './start.js';

/** Settings of the operator's own fleet that must not reach the simulator's: its data, database and key token. */
const OPERATORS_OWN = ['DATABASE_URL', 'FLEET_DATA_DIR', 'FLEET_CA_PKCS11_MODULE', 'FLEET_CA_PKCS11_TOKEN', 'FLEET_CA_PKCS11_PIN'];

/**
 * A backend of the simulator's own in this process: its CA and embedded database under
 * `<state>/backend`, so simulated devices never land in the operator's registry and a rerun on the
 * same state directory finds the fleet it enrolled. Free ports, and a per-address connect limit
 * raised out of the way since every simulated device connects from 127.0.0.1.
 */
export const startSimBackend: StartBackend = async ({ lifetime, stateDir }): Promise<Backend> => {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !OPERATORS_OWN.includes(name)));
  const config = loadConfig({
    ...env,
    FLEET_DATA_DIR: path.join(stateDir, 'backend'),
    FLEET_API_PORT: '0',
    FLEET_BROKER_PORT: '0',
    FLEET_METRICS_PORT: '0',
    FLEET_PKI_HTTP_PORT: '0',
    FLEET_BROKER_CONNECT_RATE: '1000000',
    FLEET_BROKER_CONNECT_BURST: '1000000',
    ...(lifetime ? { FLEET_CERT_LIFETIME: lifetime, FLEET_CERT_LIFETIME_MIN: lifetime } : {}),
  });
  // The embedded database runs as 'postgres' when we are root: it must pass through the state directory.
  await ensureDataDir(stateDir);
  // Logs go to stderr: stdout's last line belongs to the JSON report. Errors only: the custody warnings
  // of a CA made for a simulation (keys unencrypted, root online) are not the user's concern.
  const log = logTo(2, process.env.LOG_LEVEL ?? 'error', config.logFormat);
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
};
