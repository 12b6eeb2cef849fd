/**
 * What the kernel says about a process and the machine: a system's CPU and memory are read from
 * /proc, so every system (Node or not, ours or not) is measured the same way, from outside.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';

const TICKS_PER_SECOND = clockTicks();

function clockTicks(): number {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
}

/** User plus system CPU of the process (all its threads), in milliseconds; /proc/<pid>/stat fields 14 and 15, in clock ticks. */
function tickCpuMs(pid: number): number {
  const fields = statFields(pid);
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}

/**
 * Time on a CPU of each of the process's threads, in nanoseconds (/proc/<pid>/task/<tid>/schedstat,
 * first field), summed and in milliseconds. Exact where ticks are 10 ms: Mosquitto spends well
 * under a microsecond on a QoS 0 publish, so ten thousand of them can fall inside one tick.
 */
function scheduledCpuMs(pid: number): number {
  let ns = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return ns / 1e6;
}

const SCHEDSTAT = existsSync('/proc/self/schedstat');

/** CPU of the process in milliseconds: from schedstat where the kernel keeps it, else from stat's ticks. */
export const cpuMs = (pid: number): number => (SCHEDSTAT ? scheduledCpuMs(pid) : tickCpuMs(pid));

/** What cpuMs reads, for the report. */
export const CPU_SOURCE = SCHEDSTAT
  ? 'the time on a CPU of every thread, /proc/<pid>/task/*/schedstat (nanoseconds)'
  : `utime + stime from /proc/<pid>/stat (clock ticks of ${1000 / TICKS_PER_SECOND} ms)`;

/** Resident set size in bytes, from /proc/<pid>/status VmRSS. */
export function rssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) throw new Error(`no VmRSS for process ${pid}`);
  return Number(match[1]) * 1024;
}

/** The fields of /proc/<pid>/stat after the command name, which is in parentheses and may hold spaces. */
function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

const executable = (pid: number): string | undefined => {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return undefined;
  }
};

/**
 * A system's processes: `pid` and every descendant running the same executable, so a broker that
 * runs workers (node:cluster, FLEET_BROKER_WORKERS) is measured whole, while its other children
 * (the embedded PostgreSQL) are not.
 */
export function processGroup(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const parent = Number(statFields(Number(entry))[1]);
      children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
    } catch {
      // Gone between the listing and the read.
    }
  }
  const exe = executable(pid);
  const group = [pid];
  for (let i = 0; i < group.length; i++) {
    for (const child of children.get(group[i]!) ?? []) if (executable(child) === exe) group.push(child);
  }
  return group;
}

const sumOver = (pids: number[], read: (pid: number) => number) =>
  pids.reduce((total, pid) => {
    try {
      return total + read(pid);
    } catch {
      return total; // A worker that exited between the listing and the read.
    }
  }, 0);

/** cpuMs over the process group of `pid` (processGroup). */
export const groupCpuMs = (pid: number): number => sumOver(processGroup(pid), cpuMs);

/** rssBytes over the process group of `pid` (processGroup). */
export const groupRssBytes = (pid: number): number => sumOver(processGroup(pid), rssBytes);


export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  node: string;
  kernel: string;
  /** Load average (1, 5, 15 min) when the run began: other work on the machine shows in every figure. */
  loadAverage: number[];
  database: string;
}

export function machine(): Machine {
  return {
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    node: process.version,
    kernel: `${os.type()} ${os.release()}`,
    loadAverage: os.loadavg().map((load) => Math.round(load * 100) / 100),
    database: process.env.DATABASE_URL ? 'PostgreSQL server (DATABASE_URL), a database of its own' : 'embedded PostgreSQL',
  };
}
