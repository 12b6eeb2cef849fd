/**
 * A worker process running its share of the simulated fleet, so the simulator's own TLS and MQTT work
 * spreads over the cores, and each process's open files (one socket per device) stay under its own
 * limit: worker threads would share one file table. It reports to the parent over IPC each second.
 */
import { FleetApi } from './api.js';
import { type Counters, DEVICE_STATES, type DeviceState, emptyCounters } from './counters.js';
import { type DeviceEnvironment, SimDevice } from './device.js';
import { type HardwareProfile, PROFILES, Semaphore } from './profiles.js';
import type { StoredIdentity } from './state.js';

/** What a worker is sent: the environment's plain fields (the rest is built in the worker), and its devices. */
export interface WorkerOrder extends Pick<DeviceEnvironment, 'rootPem' | 'brokerHost' | 'brokerPort' | 'stateDir' | 'rate' | 'size' | 'lifetime' | 'resume'> {
  devices: StoredIdentity[];
  apiUrl: string;
  operatorToken: string;
  /** This worker's share of the fleet-wide ramp, connections per second. */
  ramp: number;
}

export interface WorkerReport {
  type: 'tick' | 'final';
  states: Record<DeviceState, number>;
  counters: Counters;
  /** Latency samples since the last report, milliseconds. */
  handshakeMs: number[];
  connackMs: number[];
  revoked: string[];
}

export type ParentMessage = { type: 'order'; order: WorkerOrder } | { type: 'stop' };

const REPORT_EVERY_MS = 1000;

function run(order: WorkerOrder, send: (report: WorkerReport, then?: () => void) => void): (message: ParentMessage) => void {
  const counters = emptyCounters();
  const engines = new Map<string, Semaphore>();
  let handshakeMs: number[] = [];
  let connackMs: number[] = [];
  const revoked: string[] = [];
  const api = new FleetApi(order.apiUrl, order.rootPem, order.operatorToken);
  const env: DeviceEnvironment = {
    api,
    rootPem: order.rootPem,
    brokerHost: order.brokerHost,
    brokerPort: order.brokerPort,
    stateDir: order.stateDir,
    rate: order.rate,
    size: order.size,
    lifetime: order.lifetime,
    resume: order.resume,
    counters,
    cryptoEngine(profile: HardwareProfile) {
      let engine = engines.get(profile.name);
      if (!engine) engines.set(profile.name, (engine = new Semaphore(profile.cryptoConcurrency)));
      return engine;
    },
    recordLatency: (kind, ms) => (kind === 'handshake' ? handshakeMs : connackMs).push(ms),
    onRevoked: (id) => revoked.push(id),
  };
  const devices = order.devices.map((identity) => new SimDevice(identity, PROFILES[identity.profile as HardwareProfile['name']] ?? PROFILES.gateway, env));

  const report = (type: WorkerReport['type'], then?: () => void) => {
    const states = Object.fromEntries(DEVICE_STATES.map((s) => [s, 0])) as Record<DeviceState, number>;
    for (const device of devices) states[device.state]++;
    const message: WorkerReport = { type, states, counters, handshakeMs, connackMs, revoked: revoked.splice(0) };
    handshakeMs = [];
    connackMs = [];
    send(message, then);
  };
  const reporter = setInterval(() => report('tick'), REPORT_EVERY_MS);

  // The ramp: one device starts every 1/ramp seconds, so the broker sees a bounded connect rate.
  let next = 0;
  const gap = 1000 / order.ramp;
  const started = Date.now();
  const ramp = setInterval(() => {
    const due = Math.min(devices.length, Math.floor((Date.now() - started) / gap) + 1);
    while (next < due) devices[next++]!.start();
    if (next >= devices.length) clearInterval(ramp);
  }, Math.max(5, Math.min(100, gap)));

  return (message) => {
    if (message.type !== 'stop') return;
    clearInterval(ramp);
    clearInterval(reporter);
    void Promise.all(devices.map((d) => d.stop())).then(() => {
      api.close();
      report('final', () => process.exit(0));
    });
  };
}

/** The order is the first message; a parent that goes away takes its workers with it. */
function serve(): void {
  let handle: ((message: ParentMessage) => void) | undefined;
  const send = (report: WorkerReport, then?: () => void) => {
    if (!process.connected) return void process.exit(0);
    process.send!(report, undefined, {}, () => then?.());
  };
  process.on('message', (message: ParentMessage) => {
    if (message.type === 'order') handle ??= run(message.order, send);
    else handle?.(message);
  });
  process.on('disconnect', () => process.exit(0));
}

if (process.send) serve();
else {
  process.stderr.write('worker.js is started by the simulator (fleet sim) over IPC, not by hand\n');
  process.exit(2);
}
