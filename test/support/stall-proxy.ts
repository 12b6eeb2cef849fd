import net from 'node:net';
import { once } from 'node:events';

export interface StallProxy {
  port: number;
  /**
   * The database "hangs": every open connection is cut, and new ones are accepted but never
   * answered, as a host whose PostgreSQL stopped behind a live TCP stack.
   */
  stall(): void;
  /** Answers again, as PostgreSQL after SIGCONT: the connections held meanwhile are served too. */
  resume(): void;
  close(): Promise<void>;
}

/** A TCP forwarder in front of a real PostgreSQL that a test can stall: a network fault, not a mock. */
export async function startStallProxy(target: { host: string; port: number }): Promise<StallProxy> {
  const open = new Set<net.Socket>();
  let held: net.Socket[] = [];
  let stalled = false;
  const track = (socket: net.Socket) => {
    open.add(socket);
    socket.on('close', () => open.delete(socket));
    socket.on('error', () => socket.destroy());
  };
  const forward = (client: net.Socket) => {
    const upstream = net.connect(target.port, target.host);
    track(upstream);
    client.pipe(upstream).pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  };
  const server = net.createServer((client) => {
    track(client);
    if (stalled) held.push(client); // accepted, never answered while stalled
    else forward(client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    stall() {
      stalled = true;
      for (const socket of open) socket.resetAndDestroy();
    },
    resume() {
      stalled = false;
      for (const client of held) if (!client.destroyed) forward(client);
      held = [];
    },
    async close() {
      for (const socket of open) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
