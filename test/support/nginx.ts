import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { access, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';

/** nginx from Debian's package (.ci/run installs it), or undefined when this machine has none. */
export async function findNginx(): Promise<string | undefined> {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin'];
  for (const dir of dirs.filter(Boolean)) {
    const candidate = path.join(dir, 'nginx');
    try {
      await access(candidate);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** A free port on 127.0.0.1 for a server that cannot report the port it was given. */
async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

export interface RunningNginx {
  port: number;
  errorLog(): Promise<string>;
  stop(): Promise<void>;
}

/** Debian builds nginx's stream module (TCP proxying) as a dynamic module: libnginx-mod-stream. */
export const STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';

/**
 * A real nginx in the foreground with everything under `dir`: its config, pid file, logs and temp
 * files. `http` is the body of the http block, given the port to listen on; `stream`, when given, is
 * the body of a stream block (TCP proxying) and loads STREAM_MODULE.
 */
export async function startNginx(binary: string, dir: string, http: (port: number) => string, stream?: (port: number) => string): Promise<RunningNginx> {
  const port = await freePort();
  const conf = path.join(dir, 'nginx.conf');
  const errorLog = path.join(dir, 'error.log');
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `${k}_temp_path ${path.join(dir, k)};`).join('\n  ');
  await writeFile(
    conf,
    `${stream ? `load_module ${STREAM_MODULE};` : ''}
user root;
worker_processes 1;
pid ${path.join(dir, 'nginx.pid')};
error_log ${errorLog} info;
events { worker_connections 64; }
http {
  access_log ${path.join(dir, 'access.log')};
  ${temp}
  ${http(port)}
}
${stream ? `stream {\n  ${stream(port)}\n}` : ''}
`,
  );
  const child: ChildProcess = spawn(binary, ['-p', dir, '-c', conf, '-e', errorLog, '-g', 'daemon off;'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  let exited = false;
  child.once('exit', () => (exited = true));
  const log = () => readFile(errorLog, 'utf8').catch(() => '');
  while (!(await accepts(port))) {
    if (exited) throw new Error(`nginx did not start: ${stderr}\n${await log()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    port,
    errorLog: log,
    async stop() {
      if (exited) return;
      const gone = once(child, 'exit');
      child.kill('SIGTERM');
      await gone;
    },
  };
}
