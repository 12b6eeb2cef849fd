/**
 * The scale benchmark's report: the figures, the settings they were taken with and the machine,
 * written as JSON (for tools) and Markdown (for the README) under bench/results/scale-<date>.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileLimits } from '../device-sim/processes.js';

export interface Machine {
  date: string;
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  commit: string | undefined;
  openFiles: { soft: number; hard: number };
  localPortRange: string | undefined;
  somaxconn: string | undefined;
  tcpTwReuse: string | undefined;
  loadAverage1m: number;
}

export interface RestartFigures {
  /** Whether the devices offered their TLS session tickets when they reconnected. */
  resumption: boolean;
  devices: number;
  signal: string;
  /** From the kill to the old broker's exit, the new one's readiness, and every device connected again. */
  exitedSeconds: number;
  readySeconds: number;
  allConnectedSeconds: number | null;
  /** The same, counted from the new broker's readiness: the reconnect storm itself. */
  stormSeconds: number | null;
  /** From the kill until the first 10,000 (or every device, in a smaller fleet) were connected again: the issue's storm. */
  milestone: { devices: number; seconds: number | null };
  connectedAgain: number;
  /** Connects in the storm, how many of them resumed a TLS session, and the rates seen. */
  connects: number;
  resumed: number;
  averageConnectsPerSecond: number | null;
  peakConnectsPerSecond: number;
  failures: Record<string, number>;
  brokerRefusals: Record<string, number>;
}

export interface HoldFigures {
  devices: number;
  workers: number;
  connectSeconds: number | null;
  averageConnectsPerSecond: number | null;
  holdSeconds: number;
  held: number;
  /** The fewest connected at any report during the hold. */
  minHeld: number;
  brokerSessions: number;
  /** Sessions the broker ended while held (simulated link drops are counted apart, as link_drop). */
  dropped: number;
  /** Connections closed before CONNACK (refused or timed out, then retried) while the fleet came up, and while held. */
  refusedConnecting: number;
  refusedHeld: number;
  failures: Record<string, number>;
  brokerRefusals: Record<string, number>;
  brokerRssMiB: number;
  brokerRssPerConnectionKiB: number | null;
  brokerRssIdleMiB: number;
}

export interface ScaleReport {
  machine: Machine;
  settings: Record<string, string | number | boolean>;
  enrollment: { devices: number; seconds: number; perSecond: number | null };
  hold: HoldFigures;
  restarts: RestartFigures[];
  notes: string[];
  durationSeconds: number;
}

const readProc = (file: string) => {
  try {
    return readFileSync(file, 'utf8').trim().replace(/\s+/g, ' ');
  } catch {
    return undefined;
  }
};

export function machineFacts(): Machine {
  let commit: string | undefined;
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    commit = undefined;
  }
  return {
    date: new Date().toISOString(),
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.availableParallelism(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    kernel: `${os.type()} ${os.release()}`,
    node: process.version,
    commit,
    openFiles: fileLimits(),
    localPortRange: readProc('/proc/sys/net/ipv4/ip_local_port_range'),
    somaxconn: readProc('/proc/sys/net/core/somaxconn'),
    tcpTwReuse: readProc('/proc/sys/net/ipv4/tcp_tw_reuse'),
    loadAverage1m: Math.round(os.loadavg()[0]! * 100) / 100,
  };
}

const s = (v: number | null) => (v === null ? 'not reached' : `${v} s`);
const rate = (v: number | null) => (v === null ? 'n/a' : `${v} /s`);
const reasons = (r: Record<string, number>) => {
  const entries = Object.entries(r).filter(([, n]) => n > 0);
  return entries.length === 0 ? 'none' : entries.map(([k, n]) => `${k} ${n}`).join(', ');
};

export function markdownReport(r: ScaleReport): string {
  const m = r.machine;
  const h = r.hold;
  const lines = [
    `# Scale benchmark, ${m.date.slice(0, 10)}`,
    '',
    `${m.cores} cores (${m.cpu}), ${m.memoryGiB} GiB, ${m.kernel}, Node ${m.node}${m.commit ? `, commit ${m.commit}` : ''}; ` +
      `open files ${m.openFiles.soft}/${m.openFiles.hard} (soft/hard), local ports ${m.localPortRange ?? '?'}, somaxconn ${m.somaxconn ?? '?'}, ` +
      `load average ${m.loadAverage1m} at the end. Run took ${r.durationSeconds} s.`,
    '',
    'Settings: ' + Object.entries(r.settings).map(([k, v]) => `${k}=${v}`).join(', '),
    '',
    '| figure | value |',
    '| --- | --- |',
    `| devices enrolled | ${r.enrollment.devices} in ${r.enrollment.seconds} s (${rate(r.enrollment.perSecond)}) |`,
    `| all connected (from the first connect) | ${s(h.connectSeconds)} at ${rate(h.averageConnectsPerSecond)} on ${h.workers} simulator process(es) |`,
    `| held after ${h.holdSeconds} s / fewest during the hold | ${h.held} / ${h.minHeld} of ${h.devices} (broker sessions ${h.brokerSessions}) |`,
    `| while held: dropped by the broker / refused | ${h.dropped} / ${h.refusedHeld} |`,
    `| while coming up: closed before CONNACK (timed out or refused, retried) | ${h.refusedConnecting} |`,
    `| simulator failures, whole run so far | ${reasons(h.failures)} |`,
    `| broker refusals (metrics) | ${reasons(h.brokerRefusals)} |`,
    `| broker RSS held / idle | ${h.brokerRssMiB} MiB / ${h.brokerRssIdleMiB} MiB (${h.brokerRssPerConnectionKiB ?? 'n/a'} KiB per connection) |`,
  ];
  for (const x of r.restarts) {
    const label = x.resumption ? 'with resumption' : 'without resumption';
    lines.push(
      `| restart ${label}: broker exited / ready | ${x.exitedSeconds} s / ${x.readySeconds} s after ${x.signal} |`,
      `| restart ${label}: all ${x.devices} connected again | ${s(x.allConnectedSeconds)} after the kill, ${s(x.stormSeconds)} after ready (${x.connectedAgain} connected) |`,
      `| restart ${label}: first ${x.milestone.devices} connected again | ${s(x.milestone.seconds)} after the kill |`,
      `| restart ${label}: connects (resumed) | ${x.connects} (${x.resumed}), ${rate(x.averageConnectsPerSecond)} average, ${x.peakConnectsPerSecond} /s peak |`,
      `| restart ${label}: failures / refusals | ${reasons(x.failures)} / ${reasons(x.brokerRefusals)} |`,
    );
  }
  lines.push('', ...r.notes.map((n) => `- ${n}`), '');
  return lines.join('\n');
}

/** Writes scale-<date>.json and .md into `dir`; returns their paths. */
export async function writeReport(dir: string, report: ScaleReport): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const base = path.join(dir, `scale-${report.machine.date.slice(0, 10)}`);
  await writeFile(`${base}.json`, JSON.stringify(report, null, 2) + '\n');
  await writeFile(`${base}.md`, markdownReport(report));
  return [`${base}.json`, `${base}.md`];
}
