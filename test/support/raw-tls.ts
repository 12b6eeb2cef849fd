import tls from 'node:tls';

/**
 * A raw TLS connection to the API, for requests no well-behaved client would send: headers of a body
 * that never comes, a body trickled a byte at a time. What the server sent back is kept as text.
 */
export interface RawConnection {
  socket: tls.TLSSocket;
  /** Everything received so far. */
  received(): string;
  /** Resolves when the received text matches, or rejects if the connection closes first. */
  until(pattern: RegExp): Promise<string>;
  /** Resolves when the server has closed the connection (or it failed). */
  closed: Promise<void>;
  /** 'secure' once the TLS handshake completed; 'closed' if the connection ended before that. */
  handshake: Promise<'secure' | 'closed'>;
}

export function rawConnect(port: number, ca: string): RawConnection {
  const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' });
  let text = '';
  const waiters = new Set<() => void>();
  socket.on('data', (chunk: Buffer) => {
    text += chunk.toString('latin1');
    for (const wake of waiters) wake();
  });
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  void closed.then(() => {
    for (const wake of waiters) wake();
  });
  const handshake = new Promise<'secure' | 'closed'>((resolve) => {
    socket.once('secureConnect', () => resolve('secure'));
    socket.once('close', () => resolve('closed'));
  });
  return {
    socket,
    received: () => text,
    closed,
    handshake,
    until(pattern) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (pattern.test(text)) {
            waiters.delete(check);
            resolve(text);
          } else if (socket.destroyed) {
            waiters.delete(check);
            reject(new Error(`the connection closed before ${pattern} arrived; received: ${JSON.stringify(text.slice(0, 500))}`));
          }
        };
        waiters.add(check);
        check();
      });
    },
  };
}

/** The request line and headers of a chunked request whose body is still to come. */
export const chunkedHead = (method: string, path: string, headers: Record<string, string> = {}) =>
  [`${method} ${path} HTTP/1.1`, 'Host: localhost', 'Transfer-Encoding: chunked', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`), '', ''].join('\r\n');

/** One chunk of a chunked body. */
export const chunk = (data: string | Buffer) => Buffer.concat([Buffer.from(`${Buffer.byteLength(data).toString(16)}\r\n`), Buffer.from(data), Buffer.from('\r\n')]);
