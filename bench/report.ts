/**
 * The report of `npm run bench`: each system's figures per round, their medians, fleet-auth's
 * ratios to the others, and the targets marked met or missed; written as JSON (every number)
 * and Markdown (the table the README quotes).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Machine } from './proc.js';
import { SYSTEMS, type SystemName } from './systems.js';

/** One system in one round. Every figure is per operation, from the broker process's /proc. */
export interface Figures {
  cpuMsPerFullConnect: number;
  cpuMsPerResumedConnect: number;
  connectsPerSecond: number;
  rssKiBPerHeldConnection: number;
  cpuUsPerQos0Publish: number;
  cpuUsPerQos1Publish: number;
  /** fleet-auth only (fleet-auth-workers: across Options.revocationNodes nodes, Observations.revocationHeld held). */
  revocationP50Ms?: number;
  revocationP95Ms?: number;
  revocationP99Ms?: number;
  enrollmentsPerSecond?: number;
}

/** What was seen beside the figures: to judge them by, not to quote. */
export interface Observations {
  connectLatencyP50Ms: number;
  connectLatencyP99Ms: number;
  resumedConnectLatencyP50Ms: number;
  /** Share of the resumed pass's handshakes that did resume (a system without tickets does full ones). */
  resumedShare: number;
  failedConnects: number;
  /** The load generator's CPU over the full pass, in cores: near 1, it and not the broker set the connects per second. */
  loadGeneratorCoresInFullPass?: number;
  firstFailure?: string;
  held: number;
  droppedWhileHeld: number;
  revocationMaxMs?: number;
  /** Devices held across the nodes while fleet-auth-workers' revocations were timed. */
  revocationHeld?: number;
  revokeApiRoundTripP50Ms?: number;
  failedEnrollments?: number;
}

export interface SystemResult {
  rounds: { figures: Figures; observations: Observations }[];
  median: Figures;
}

export interface Options {
  devices: number;
  rounds: number;
  systems: SystemName[];
  concurrency: number;
  generators: number;
  publishes: number;
  revocations: number;
  enrollments: number;
  enrollConcurrency: number;
  settle: number;
  /** fleet-auth-workers' revocations: across this many `fleet start` nodes (0: the system was not run). */
  revocationNodes?: number;
}

export interface Target {
  target: string;
  measured: string;
  met: boolean | null;
}

export interface Report {
  date: string;
  machine: Machine;
  options: Options;
  systems: Partial<Record<SystemName, SystemResult>>;
  /** fleet-auth's figure over the other system's, per figure both have. */
  ratios: Partial<Record<SystemName, Partial<Record<keyof Figures, number>>>>;
  targets: Target[];
  notes: string[];
  durationSeconds: number;
}

export const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
};

export function medianFigures(rounds: Figures[]): Figures {
  const keys = [...new Set(rounds.flatMap((r) => Object.keys(r)))] as (keyof Figures)[];
  return Object.fromEntries(keys.map((key) => [key, median(rounds.map((r) => r[key]).filter((v): v is number => v !== undefined))])) as unknown as Figures;
}

const LABELS: Record<keyof Figures, string> = {
  cpuMsPerFullConnect: 'broker CPU per full mTLS handshake + CONNECT (ms)',
  cpuMsPerResumedConnect: 'broker CPU per resumed TLS session + CONNECT (ms)',
  connectsPerSecond: 'connects per second reached (full handshakes)',
  rssKiBPerHeldConnection: 'RSS per held connection, fresh process (KiB)',
  cpuUsPerQos0Publish: 'broker CPU per QoS 0 publish (µs)',
  cpuUsPerQos1Publish: 'broker CPU per QoS 1 publish (µs)',
  revocationP50Ms: 'revocation -> disconnect p50 (ms)',
  revocationP95Ms: 'revocation -> disconnect p95 (ms)',
  revocationP99Ms: 'revocation -> disconnect p99 (ms)',
  enrollmentsPerSecond: 'enrollments per second (POST /v1/enrollments)',
};

const SYSTEM_TITLES: Record<SystemName, string> = {
  'fleet-auth': 'fleet-auth (`npm start`)',
  'fleet-auth-workers': 'fleet-auth, 2 broker workers on Redis',
  aedes: 'aedes, trivial auth',
  floor: 'bare Node TLS answering CONNACK (floor)',
  mosquitto: 'Mosquitto',
};

export function ratiosOf(systems: Report['systems']): Report['ratios'] {
  const ours = systems['fleet-auth']?.median;
  if (!ours) return {};
  const ratios: Report['ratios'] = {};
  for (const [name, result] of Object.entries(systems) as [SystemName, SystemResult][]) {
    // Ratios are one-process fleet-auth's; the workers' own stand in the targets.
    if (name === 'fleet-auth' || name === 'fleet-auth-workers') continue;
    const row: Partial<Record<keyof Figures, number>> = {};
    for (const key of Object.keys(result.median) as (keyof Figures)[]) {
      const theirs = result.median[key];
      const mine = ours[key];
      if (mine !== undefined && theirs !== undefined && theirs > 0) row[key] = mine / theirs;
    }
    ratios[name] = row;
  }
  return ratios;
}

/** The targets, each a ratio measured in this run; null where the run lacks the system compared with. */
export function targetsOf(report: Pick<Report, 'ratios' | 'systems' | 'options'>): Target[] {
  const { ratios } = report;
  const ratio = (system: SystemName, key: keyof Figures, limit: number, target: string, atMost = true): Target => {
    const value = ratios[system]?.[key];
    if (value === undefined) return { target, measured: `not measured (no ${system} in this run)`, met: null };
    return { target, measured: `${value.toFixed(2)}×`, met: atMost ? value <= limit : value >= limit };
  };
  return [
    ratio('floor', 'cpuMsPerFullConnect', 1.25, 'CPU per full connect ≤ 1.25× the floor'),
    ratio('floor', 'cpuMsPerResumedConnect', 1.2, 'CPU per resumed connect ≤ 1.2× the floor'),
    workersConnectsTarget(report) ?? ratio('mosquitto', 'connectsPerSecond', 1, 'connects per second ≥ Mosquitto’s', false),
    ratio('aedes', 'rssKiBPerHeldConnection', 1.2, 'RSS per held connection ≤ 1.2× bare aedes'),
    ratio('aedes', 'cpuUsPerQos1Publish', 1.15, 'QoS 1 publish ≤ 1.15× bare aedes'),
    revocationTarget(report),
  ];
}

/** The issue means its connects target for the broker on every core: fleet-auth-workers, when the run has it. */
function workersConnectsTarget(report: Pick<Report, 'systems'>): Target | undefined {
  const workers = report.systems['fleet-auth-workers']?.median.connectsPerSecond;
  if (workers === undefined) return undefined;
  const target = 'connects per second of fleet-auth-workers (2 broker workers) ≥ Mosquitto’s';
  const mosquitto = report.systems.mosquitto?.median.connectsPerSecond;
  if (!mosquitto) return { target, measured: 'not measured (no mosquitto in this run)', met: null };
  const value = workers / mosquitto;
  return { target, measured: `${value.toFixed(2)}× (${workers.toFixed(0)} against ${mosquitto.toFixed(0)} per second)`, met: value >= 1 };
}

/** Across two nodes (fleet-auth-workers and a second node) when measured so, else fleet-auth's on one node; always with the held count. */
function revocationTarget(report: Pick<Report, 'systems' | 'options'>): Target {
  const target = 'revocation -> disconnect p99 ≤ 50 ms (issue: 10,000 held across two nodes)';
  const workers = report.systems['fleet-auth-workers'];
  if (workers?.median.revocationP99Ms !== undefined) {
    const held = median(workers.rounds.map((r) => r.observations.revocationHeld ?? 0));
    const nodes = report.options.revocationNodes ?? 1;
    const p99 = workers.median.revocationP99Ms;
    return { target, measured: `${p99.toFixed(1)} ms with ${held} held across ${nodes} node${nodes === 1 ? '' : 's'} (fleet-auth-workers)`, met: p99 <= 50 };
  }
  const p99 = report.systems['fleet-auth']?.median.revocationP99Ms;
  if (p99 === undefined) return { target: 'revocation -> disconnect p99 ≤ 50 ms', measured: 'not measured', met: null };
  return { target, measured: `${p99.toFixed(1)} ms with ${report.options.devices} held on one node`, met: p99 <= 50 };
}

const number = (value: number | undefined): string => {
  if (value === undefined || !Number.isFinite(value)) return '–';
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
};

export function markdown(report: Report): string {
  const names = SYSTEMS.filter((name) => report.systems[name]);
  const compared = (['floor', 'aedes', 'mosquitto'] as const).filter((name) => report.ratios[name]);
  const keys = Object.keys(LABELS) as (keyof Figures)[];
  const header = ['figure (median of rounds)', ...names.map((n) => SYSTEM_TITLES[n]), ...compared.map((n) => `fleet-auth / ${n}`)];
  const rows = keys
    .filter((key) => names.some((name) => report.systems[name]!.median[key] !== undefined))
    .map((key) => [
      LABELS[key],
      ...names.map((name) => number(report.systems[name]!.median[key])),
      ...compared.map((name) => {
        const value = report.ratios[name]?.[key];
        return value === undefined ? '–' : `${value.toFixed(2)}×`;
      }),
    ]);
  const tableOf = (cells: string[][]) => cells.map((row) => `| ${row.join(' | ')} |`).join('\n');
  const rule = (count: number) => `| ${Array.from({ length: count }, () => '---').join(' | ')} |`;
  const m = report.machine;
  const o = report.options;
  return [
    `# fleet-auth broker benchmark, ${report.date}`,
    '',
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB RAM, ${m.kernel}, Node ${m.node}; ${m.database}. ` +
      `Load average at the start: ${m.loadAverage.join(', ')}.`,
    '',
    `${o.devices} devices (P-256 keys, root -> issuing CA -> device, the fleet's own chain for every system), ${o.rounds} round(s) interleaved, ` +
      `connect concurrency ${o.concurrency}, ${o.publishes} publishes per device per QoS, ${o.revocations} revocations and ${o.enrollments} enrollments per round. ` +
      `The run took ${Math.round(report.durationSeconds)} s.`,
    '',
    tableOf([header, ...rows].slice(0, 1)),
    rule(header.length),
    tableOf(rows),
    '',
    '## Targets',
    '',
    tableOf([['target', 'measured', 'status']]),
    rule(3),
    tableOf(report.targets.map((t) => [t.target, t.measured, t.met === null ? 'not measured' : t.met ? 'met' : 'missed'])),
    '',
    ...(report.notes.length ? ['## Notes', '', ...report.notes.map((note) => `- ${note}`), ''] : []),
  ].join('\n');
}

/** Writes bench-<date>.json and .md into `dir`; returns their paths. */
export async function writeReport(report: Report, dir: string): Promise<{ json: string; markdown: string }> {
  await mkdir(dir, { recursive: true });
  const stamp = report.date.replace(/\.\d+Z$/, '').replace(/[T:]/g, '-');
  const base = path.join(dir, `bench-${stamp}`);
  await writeFile(`${base}.json`, JSON.stringify(report, null, 2) + '\n');
  await writeFile(`${base}.md`, markdown(report));
  return { json: `${base}.json`, markdown: `${base}.md` };
}
