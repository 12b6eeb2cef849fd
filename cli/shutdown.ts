import type { Logger } from '../core/log.js';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/**
 * Runs `stop` once on SIGINT, SIGTERM or SIGHUP, then exits. The same signal may arrive twice (a
 * Ctrl-C reaches `npm start` and node alike, and npm forwards it too), so a signal while stopping
 * is only noted: cutting the shutdown short would lose the presence it is writing. A shutdown that
 * hangs is ended after `timeoutMs`.
 */
export function stopOnSignals(stop: () => Promise<void>, log: Logger, timeoutMs = 30_000): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) return void log.info({ signal }, 'already shutting down');
    stopping = true;
    log.info({ signal }, 'shutting down');
    setTimeout(() => {
      log.error({ timeoutMs }, 'shutdown did not finish in time; exiting without it');
      process.exit(1);
    }, timeoutMs).unref();
    stop().then(
      () => process.exit(0),
      (error) => {
        log.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  for (const signal of SIGNALS) process.on(signal, onSignal);
}
