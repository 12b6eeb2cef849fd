/**
 * Worker processes and the open-file limit. Each simulated device holds one socket, so one process
 * can hold no more devices than its open-file limit (ulimit -n) allows; worker threads would share
 * one process's file table. The fleet is spread over enough processes to keep each under its limit,
 * and each worker raises its soft limit to the hard one where the system lets it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface FileLimits {
  soft: number;
  hard: number;
}

/** Files a worker keeps besides device sockets (Node itself, its pipes, an API call in flight). */
const RESERVED_FILES = 256;
/** Headroom per device: a reconnect opens the new socket before the old one is closed, a renewal calls the API. */
const FILES_PER_DEVICE = 1.25;

/** This process's open-file limits from /proc (Linux); elsewhere the common default of 1,024. */
export function fileLimits(procLimits = '/proc/self/limits'): FileLimits {
  try {
    const line = readFileSync(procLimits, 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const [soft, hard] = (line?.trim().split(/\s+/).slice(3, 5) ?? []).map((v) => (v === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(v)));
    if (soft && hard) return { soft, hard };
  } catch {
    // Not Linux: fall through to the conservative default.
  }
  return { soft: 1024, hard: 1024 };
}

/** The devices one worker may hold under a given open-file limit. */
export function devicesPerProcess(fileLimit: number): number {
  return Math.max(1, Math.floor((fileLimit - RESERVED_FILES) / FILES_PER_DEVICE));
}

/** At least the workers asked for, and as many more as the file limit needs; never more than devices. */
export function workerCount(requested: number, devices: number, limits: FileLimits = fileLimits()): number {
  const needed = Math.ceil(devices / devicesPerProcess(limits.hard));
  return Math.max(1, Math.min(devices, Math.max(requested, needed)));
}

/**
 * One worker process. A shell raises the soft file limit to the hard one before it becomes node
 * (Node has no setrlimit); where it may not, the worker runs at the limit it inherited.
 */
export function spawnWorker(): ChildProcess {
  const script = fileURLToPath(new URL('./worker.js', import.meta.url));
  const raise = 'ulimit -n "$(ulimit -H -n)" 2>/dev/null; exec "$0" "$@"';
  return spawn('/bin/sh', ['-c', raise, process.execPath, ...process.execArgv, script], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    // Typed arrays and large orders (every device's key and chain) pass without JSON.
    serialization: 'advanced',
  });
}
