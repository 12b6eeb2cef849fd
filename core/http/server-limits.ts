import type http from 'node:http';
import type https from 'node:https';
import { announcesBody } from './body-limit.js';

/** How much of the server one client may hold, and for how long. */
export interface ServerLimits {
  /** Connections open at once, from everyone; past it new ones are closed on arrival. */
  maxConnections: number;
  /** A client must finish the TLS handshake, and then send its request headers, within this. */
  headersTimeoutMs: number;
  /** A whole request, body included, must arrive within this. */
  requestTimeoutMs: number;
  /** While a body is being read, at least this many bytes a second must arrive, over each window. */
  bodyMinBytesPerSecond: number;
  bodyRateWindowMs: number;
}

export type DroppedReason = 'too_many_connections' | 'slow_body';

/** Node's own timeouts, which must be given when the server is created. */
export function serverTimeouts(limits: ServerLimits): https.ServerOptions {
  return {
    handshakeTimeout: limits.headersTimeoutMs,
    headersTimeout: limits.headersTimeoutMs,
    requestTimeout: Math.max(limits.requestTimeoutMs, limits.headersTimeoutMs),
    // Node checks both timeouts on this interval (30 s by default), so it bounds how late they fire.
    connectionsCheckingInterval: Math.max(25, Math.min(1_000, Math.floor(limits.headersTimeoutMs / 4))),
  };
}

/**
 * Caps connections and drops a client whose body trickles in below the minimum rate. A window in
 * which we, not the client, held things up (the request's buffer is full because the route has not
 * read yet) does not count against it.
 */
export function limitConnections(server: http.Server, limits: ServerLimits, onDrop: (reason: DroppedReason, address: string) => void): void {
  server.maxConnections = limits.maxConnections;
  server.on('drop', (data?: { remoteAddress?: string }) => onDrop('too_many_connections', data?.remoteAddress ?? ''));
  const minBytesPerWindow = (limits.bodyMinBytesPerSecond * limits.bodyRateWindowMs) / 1000;
  server.on('request', (req: http.IncomingMessage) => {
    // Only a body can trickle; most requests (GETs) need no watch.
    if (!announcesBody(req)) return;
    const socket = req.socket;
    let seen = socket.bytesRead;
    const timer = setInterval(() => {
      if (req.complete || socket.destroyed) return clearInterval(timer);
      const read = socket.bytesRead;
      const heldByUs = req.readableLength >= req.readableHighWaterMark;
      if (!heldByUs && read - seen < minBytesPerWindow) {
        clearInterval(timer);
        socket.destroy();
        onDrop('slow_body', socket.remoteAddress ?? '');
        return;
      }
      seen = read;
    }, limits.bodyRateWindowMs);
    // It stops itself on the first tick after the request completes or the socket closes.
    timer.unref();
  });
}
