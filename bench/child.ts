/**
 * A forked helper process spoken to over IPC, one request at a time: the load generator and the
 * comparison systems. A request fails at once if the process exits before answering.
 */
import { type ChildProcess, fork, type ForkOptions } from 'node:child_process';
import { once } from 'node:events';

export interface Child<Request, Answer> {
  process: ChildProcess;
  ask(request: Request): Promise<Answer>;
  /** Disconnects (the child closes what it holds and exits), then kills it if it lingers. */
  stop(): Promise<void>;
}

export function forkChild<Request, Answer extends { type: string }>(script: URL, name: string, options: ForkOptions = {}): Child<Request, Answer> {
  const child = fork(script, [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], ...options });
  let exitCode: number | null | undefined;
  const exited = new Promise<never>((_, reject) =>
    child.once('exit', (code) => {
      exitCode = code;
      reject(new Error(`${name} exited (code ${code})`));
    }),
  );
  exited.catch(() => undefined);
  // A send on a closed channel reports through its callback below; this keeps it from throwing.
  child.on('error', () => undefined);
  return {
    process: child,
    ask(request) {
      const answer = new Promise<Answer>((resolve, reject) => {
        child.once('message', (message) => resolve(message as Answer));
        child.send(request as object, (error) => error && reject(new Error(`${name} is gone: ${error.message}`)));
      });
      return Promise.race([answer, exited]).then((message) => {
        if (message.type === 'failed') throw new Error(`${name} failed: ${(message as unknown as { message: string }).message}`);
        return message;
      });
    },
    async stop() {
      if (exitCode !== undefined) return;
      if (child.connected) child.disconnect();
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await once(child, 'exit').catch(() => undefined);
      clearTimeout(timer);
    },
  };
}
