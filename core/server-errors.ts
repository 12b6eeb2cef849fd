import type { EventEmitter } from 'node:events';
import type { Logger } from './log.js';

/**
 * Keeps an 'error' listener on a listening server for its whole life. Node throws an 'error' event
 * nobody listens to, and `once(server, 'listening')` removes its listener once listening, so an
 * EMFILE on accept (a flood of connections past the open-file limit) would end the process, API,
 * broker and all. The server keeps listening after such an error; it is logged and the refused
 * connection is the only casualty.
 */
export function logServerErrors(server: EventEmitter, log: Logger, name: string): void {
  server.on('error', (error: NodeJS.ErrnoException) =>
    log.error({ err: error, server: name, code: error.code }, `the ${name} server hit an error and keeps serving`),
  );
}
