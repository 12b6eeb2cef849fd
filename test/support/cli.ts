import path from 'node:path';
import { projectRoot } from '../../core/paths.js';
import type { TestFleet } from './fleet.js';
import { type ProcessResult, run } from './openssl.js';

const FLEET = path.join(projectRoot, 'dist', 'cli', 'fleet.js');

/**
 * The fleet command as an operator runs it beside a test fleet: its data directory and database.
 * `env` adds variables; an undefined value removes one (say, DATABASE_URL on the offline root's machine).
 */
export function fleetCli(t: TestFleet, args: string[], env: Record<string, string | undefined> = {}): Promise<ProcessResult> {
  return fleetCommand(args, { DATABASE_URL: t.config.databaseUrl, ...env }, t.dataDir);
}

/** The environment the fleet command gets: free ports, warnings only, `env` on top (undefined removes). */
export function fleetEnv(dataDir: string, env: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const full: NodeJS.ProcessEnv = { ...process.env, FLEET_DATA_DIR: dataDir, FLEET_API_PORT: '0', FLEET_BROKER_PORT: '0', FLEET_METRICS_PORT: '0', FLEET_PKI_HTTP_PORT: '0', LOG_LEVEL: 'warn' };
  delete full.DATABASE_URL;
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined) delete full[name];
    else full[name] = value;
  }
  return full;
}

/** The fleet command on a data directory of the test's own, with no test fleet beside it. */
export function fleetCommand(args: string[], env: Record<string, string | undefined>, dataDir: string): Promise<ProcessResult> {
  return run(process.execPath, [FLEET, ...args], { env: fleetEnv(dataDir, env) });
}

export const FLEET_BIN = FLEET;
