import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import path from 'node:path';
import { projectRoot } from '../../core/paths.js';
import type { TestFleet } from './fleet.js';
import { type ProcessResult, run } from './openssl.js';

const FLEET = path.join(projectRoot, 'dist', 'cli', 'fleet.js');

/** The path of the built fleet command, for a test that spawns it itself (a long-running start or --follow). */
export const FLEET_BIN = FLEET;

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

/** The environment the fleet command gets beside a test fleet: its data directory and database. */
export const fleetCliEnv = (t: TestFleet, env: Record<string, string | undefined> = {}): NodeJS.ProcessEnv =>
  fleetEnv(t.dataDir, { DATABASE_URL: t.config.databaseUrl, ...env });

/** The fleet command on a data directory of the test's own, with no test fleet beside it. */
export function fleetCommand(args: string[], env: Record<string, string | undefined>, dataDir: string): Promise<ProcessResult> {
  return run(process.execPath, [FLEET, ...args], { env: fleetEnv(dataDir, env) });
}

/**
 * The fleet command as an operator runs it beside a test fleet: its data directory and database.
 * `env` adds variables; an undefined value removes one (say, DATABASE_URL on the offline root's machine).
 */
export function fleetCli(t: TestFleet, args: string[], env: Record<string, string | undefined> = {}): Promise<ProcessResult> {
  return fleetCommand(args, { DATABASE_URL: t.config.databaseUrl, ...env }, t.dataDir);
}

/**
 * A test fleet started before the file's tests and closed after, and the fleet command beside it:
 * `fleet` as it ran, `ok` when it must succeed, `json` for its --json output.
 */
export function cliBesideFleet(start: () => Promise<TestFleet>) {
  let t: TestFleet | undefined;
  before(async () => {
    t = await start();
  });
  after(() => t?.close());
  const fleet = (...args: string[]) => fleetCli(t!, args);
  const ok = async (...args: string[]) => {
    const res = await fleet(...args);
    assert.equal(res.code, 0, `fleet ${args.join(' ')}: ${res.stderr}`);
    return res;
  };
  const json = async (...args: string[]) => JSON.parse((await ok(...args, '--json')).stdout);
  return { fleet, ok, json, fleetOf: () => t! };
}
