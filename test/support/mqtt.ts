import type { TLSSocket } from 'node:tls';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

export interface DeviceTls {
  ca: string;
  cert?: string;
  key?: string;
  /** A TLS session from an earlier connection, to resume it. */
  session?: Buffer;
}

export interface Connection {
  client: MqttClient;
  /** 'connected' once CONNACK accepted the session; 'refused' if the connection ended before that. */
  outcome: 'connected' | 'refused';
  /** Whether any CONNACK arrived, accepting or refusing: a refused identity must not get one. */
  sawConnack: boolean;
  /** Whether TLS resumed the session given in `tls.session`. */
  resumed: boolean;
  /** TLS session tickets the server sent on this connection, to resume with later. */
  tickets: Buffer[];
  error?: Error;
}

/**
 * Connects one real MQTT.js client over mutual TLS, without reconnecting, and reports what happened.
 * `options` overrides MQTT.js's (keepalive, localAddress, ...).
 */
export function connectDevice(port: number, clientId: string, tls: DeviceTls, options: IClientOptions = {}): Promise<Connection> {
  const client = mqtt.connect({
    protocol: 'mqtts',
    host: 'localhost',
    port,
    clientId,
    ca: tls.ca,
    cert: tls.cert,
    key: tls.key,
    // MQTT.js hands unknown options to tls.connect; its types just do not list this one.
    ...({ session: tls.session } as object),
    reconnectPeriod: 0,
    connectTimeout: 5000,
    protocolVersion: 4,
    ...options,
  });
  return new Promise((resolve) => {
    let lastError: Error | undefined;
    let sawConnack = false;
    let resumed = false;
    const tickets: Buffer[] = [];
    const socket = client.stream as unknown as TLSSocket;
    socket.on('session', (ticket: Buffer) => tickets.push(ticket));
    socket.once('secureConnect', () => (resumed = socket.isSessionReused()));
    client.on('packetreceive', (packet) => (sawConnack ||= packet.cmd === 'connack'));
    client.on('error', (error) => (lastError = error));
    client.once('connect', () => resolve({ client, outcome: 'connected', sawConnack, resumed, tickets }));
    client.once('close', () => resolve({ client, outcome: 'refused', sawConnack, resumed, tickets, error: lastError }));
  });
}

/** Resolves with the first message on a topic matching `prefix`, or undefined after `ms`. */
export function nextMessage(client: MqttClient, prefix: string, ms: number): Promise<{ topic: string; payload: string } | undefined> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      client.off('message', onMessage);
      resolve(undefined);
    }, ms);
    const onMessage = (topic: string, payload: Buffer) => {
      if (!topic.startsWith(prefix)) return;
      clearTimeout(timer);
      client.off('message', onMessage);
      resolve({ topic, payload: payload.toString() });
    };
    client.on('message', onMessage);
  });
}

export const closed = (client: MqttClient): Promise<void> =>
  new Promise((resolve) => (client.disconnected || !client.connected ? resolve() : client.once('close', () => resolve())));
