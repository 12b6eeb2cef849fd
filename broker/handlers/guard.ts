import type { Logger } from '../../core/log.js';

/**
 * Runs a hook's decision. Whatever it throws is logged and answered with `failed`, never passed on:
 * aedes runs hooks from its parser and timers, where an exception would end the process, API included.
 */
export function decideSafely<T>(log: Logger, hook: string, decide: () => T, failed: T): T {
  try {
    return decide();
  } catch (error) {
    log.error({ err: error, hook }, 'a broker hook failed; refusing what it was asked to decide');
    return failed;
  }
}
