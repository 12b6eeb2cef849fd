import { performance } from 'node:perf_hooks';
import { createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import mqtt, { type MqttClient } from 'mqtt';
import type { FleetApi } from './api.js';
import { type Counters, countFailure, type DeviceState } from './counters.js';
import { createDeviceIdentity } from './identity.js';
import { backoffMs, type HardwareProfile, type Semaphore } from './profiles.js';
import { markRevoked, saveIdentity, type StoredIdentity } from './state.js';

/** setTimeout's longest delay; a 90-day certificate's renewal is planned in hops of at most this. */
const MAX_TIMER_MS = 2 ** 31 - 1;
const CONNECT_TIMEOUT_MS = 30_000;
/** Renew at this share of the lifetime, give or take the jitter, so a fleet does not renew in step. */
const RENEW_AT = 2 / 3;
const RENEW_JITTER = 0.08;

/** What every device of a worker shares: where the backend is, how to behave, and where to count. */
export interface DeviceEnvironment {
  api: FleetApi;
  rootPem: string;
  brokerHost: string;
  brokerPort: number;
  stateDir: string;
  /** Telemetry messages per second per device, and their size in bytes. */
  rate: number;
  size: number;
  /** Asked for on renewal; undefined takes the CA's default. */
  lifetime?: string;
  /** Offer the last session ticket on reconnect; false makes every connect a full handshake. */
  resume: boolean;
  counters: Counters;
  cryptoEngine(profile: HardwareProfile): Semaphore;
  recordLatency(kind: 'handshake' | 'connack', ms: number): void;
  onRevoked(id: string): void;
}

/**
 * One simulated device: connects over mutual TLS, publishes telemetry, answers commands, renews its
 * certificate with a new key before it expires, and stops for good once it learns it was revoked.
 */
export class SimDevice {
  state: DeviceState = 'waiting';
  private identity: StoredIdentity;
  private context: SecureContext;
  /** A TLS session ticket from the last connection, so a reconnect can resume (cheap for the broker). */
  private ticket: Buffer | undefined;
  private client: MqttClient | undefined;
  private generation = 0;
  private reconnectAttempt = 0;
  private renewAttempt = 0;
  private stopped = false;
  private renewing = false;
  private seq = 0;
  private readonly timers = new Set<NodeJS.Timeout>();
  private telemetryTimer: NodeJS.Timeout | undefined;
  private readonly skewMs: number;
  /** When, by the device's clock, the next renewal is due. */
  private renewDue = 0;

  constructor(
    identity: StoredIdentity,
    readonly profile: HardwareProfile,
    private readonly env: DeviceEnvironment,
  ) {
    this.identity = identity;
    this.context = this.contextFor(identity);
    this.skewMs = Math.round((Math.random() * 2 - 1) * profile.maxClockSkewMs);
  }

  get id(): string {
    return this.identity.id;
  }

  /** The device's own idea of the time: its clock is off by a fixed skew. */
  private deviceNow(): number {
    return Date.now() + this.skewMs;
  }

  /** One TLS context per certificate, reused by every reconnect until the next renewal. */
  private contextFor(identity: StoredIdentity): SecureContext {
    return createSecureContext({ ca: this.env.rootPem, cert: identity.chainPem, key: identity.keyPem });
  }

  start(): void {
    this.scheduleRenewal();
    void this.connect();
  }

  private later(ms: number, work: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (!this.stopped) work();
    }, Math.min(ms, MAX_TIMER_MS));
    this.timers.add(timer);
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    if (Date.parse(this.identity.notAfter) <= Date.now()) return this.expire();
    this.state = 'connecting';
    const generation = ++this.generation;
    const retiring = this.client;
    // The handshake signs with the device key: a slow crypto core makes the device wait its turn.
    if (this.profile.handshakeDelayMs > 0) {
      await this.env.cryptoEngine(this.profile).run(() => sleep(this.profile.handshakeDelayMs));
    }
    if (this.stopped || generation !== this.generation) return;
    this.env.counters.connectAttempts++;
    const started = performance.now();
    let secured: number | undefined;
    let accepted = false;
    const client = mqtt.connect({
      protocol: 'mqtts',
      host: this.env.brokerHost,
      port: this.env.brokerPort,
      clientId: this.id,
      // MQTT.js hands these to tls.connect; its types do not list them.
      ...({ secureContext: this.context, session: this.env.resume ? this.ticket : undefined, servername: 'localhost' } as object),
      reconnectPeriod: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
      keepalive: this.profile.keepaliveSeconds,
      protocolVersion: 4,
      clean: true,
    });
    this.client = client;
    const socket = client.stream as unknown as TLSSocket;
    socket.once('secureConnect', () => (secured = performance.now()));
    socket.on('session', (ticket: Buffer) => {
      if (this.env.resume) this.ticket = ticket;
    });
    client.on('error', () => {});
    client.on('message', (topic, payload) => this.onCommand(client, topic, payload));
    client.once('connect', () => {
      accepted = true;
      if (generation !== this.generation || this.stopped) return void client.end(true);
      this.env.counters.connects++;
      if (socket.isSessionReused()) this.env.counters.resumed++;
      if (secured !== undefined) {
        this.env.recordLatency('handshake', secured - started);
        this.env.recordLatency('connack', performance.now() - secured);
      }
      this.reconnectAttempt = 0;
      this.state = this.renewing ? 'renewing' : 'connected';
      // Taking over the client id closes the older session anyway; end ours so its socket is freed now.
      retiring?.end(true);
      client.subscribe(`devices/${this.id}/commands/#`, { qos: 0 });
      this.startTelemetry(client);
      this.planLinkDrop(client, generation);
    });
    client.once('close', () => {
      if (generation !== this.generation || this.stopped) return;
      retiring?.end(true);
      this.stopTelemetry();
      if (!accepted) void this.refused(secured !== undefined);
      else this.lost(client);
    });
  }

  /** A live session ended: our simulated link drop, or the broker closed it (revocation, expiry). */
  private lost(client: MqttClient): void {
    const dropped = (client as unknown as { simulatedDrop?: boolean }).simulatedDrop === true;
    countFailure(this.env.counters, dropped ? 'link_drop' : 'connection_lost');
    this.reconnectLater();
  }

  /**
   * Closed before CONNACK. The broker says nothing about why, so ask the registry as an operator
   * would: a revoked or suspended device stops here instead of retrying forever. Only after a
   * completed handshake, since the broker judges the certificate after it: a connection refused,
   * timed out or cut during the handshake (a broker restarting, a reconnect storm) says nothing
   * about revocation, and thousands of such lookups would only load the backend further.
   */
  private async refused(handshakeDone: boolean): Promise<void> {
    countFailure(this.env.counters, handshakeDone ? 'refused_before_connack' : 'tls_handshake_failed');
    if (handshakeDone && (await this.isRevoked())) return this.revoked();
    this.reconnectLater();
  }

  private async isRevoked(): Promise<boolean> {
    try {
      const res = await this.env.api.operator('GET', `/v1/devices/${encodeURIComponent(this.id)}`);
      if (res.status !== 200) return false;
      const mine = (res.json.certificates as { serial: string; status: string }[] | undefined)?.find((c) => c.serial === this.identity.serial);
      return res.json.status === 'revoked' || res.json.status === 'suspended' || mine?.status === 'revoked';
    } catch {
      return false;
    }
  }

  private revoked(): void {
    this.state = 'revoked';
    this.clearTimers();
    this.env.onRevoked(this.id);
    void markRevoked(this.env.stateDir, this.identity).catch(() => {});
  }

  private expire(): void {
    this.state = 'expired';
    countFailure(this.env.counters, 'certificate_expired');
    this.clearTimers();
  }

  private reconnectLater(): void {
    if (this.stopped) return;
    this.state = 'backoff';
    this.later(backoffMs(this.profile, this.reconnectAttempt++), () => void this.connect());
  }

  // Telemetry and commands ---------------------------------------------------------------------

  private startTelemetry(client: MqttClient): void {
    this.stopTelemetry();
    if (this.env.rate <= 0) return;
    const every = 1000 / this.env.rate;
    const topic = `devices/${this.id}/telemetry`;
    // A random phase, so the fleet's messages do not all leave in the same millisecond.
    const first = setTimeout(() => {
      this.publish(client, topic);
      this.telemetryTimer = setInterval(() => this.publish(client, topic), every);
    }, Math.random() * every);
    this.telemetryTimer = first;
  }

  private stopTelemetry(): void {
    if (this.telemetryTimer) clearTimeout(this.telemetryTimer);
    this.telemetryTimer = undefined;
  }

  private publish(client: MqttClient, topic: string): void {
    if (!client.connected) return;
    if (Math.random() < this.profile.packetLoss) {
      this.env.counters.lostOnLink++;
      return;
    }
    client.publish(topic, telemetryPayload(this.id, ++this.seq, this.env.size), { qos: 0 });
    this.env.counters.publishes++;
  }

  /** A command on devices/<id>/commands/<name> is answered on devices/<id>/responses/<name>. */
  private onCommand(client: MqttClient, topic: string, payload: Buffer): void {
    const prefix = `devices/${this.id}/commands/`;
    if (!topic.startsWith(prefix)) return;
    const command = topic.slice(prefix.length);
    const answer = JSON.stringify({ command, ok: true, at: new Date().toISOString(), received: payload.length });
    client.publish(`devices/${this.id}/responses/${command}`, answer, { qos: 0 });
    this.env.counters.commandsAnswered++;
  }

  /** Exponential gaps between drops (a Poisson process), at the profile's mean rate. */
  private planLinkDrop(client: MqttClient, generation: number): void {
    if (this.profile.linkDropsPerHour <= 0) return;
    const gapMs = (-Math.log(1 - Math.random()) * 3_600_000) / this.profile.linkDropsPerHour;
    this.later(gapMs, () => {
      if (generation !== this.generation || !client.connected) return;
      this.env.counters.linkDrops++;
      (client as unknown as { simulatedDrop: boolean }).simulatedDrop = true;
      client.stream.destroy();
    });
  }

  // Renewal ------------------------------------------------------------------------------------

  /** At about two thirds of the lifetime, by the device's own (skewed) clock. */
  private scheduleRenewal(): void {
    const issued = Date.parse(this.identity.issuedAt);
    const notAfter = Date.parse(this.identity.notAfter);
    const lifetime = notAfter - issued;
    const jitter = (Math.random() * 2 - 1) * RENEW_JITTER * lifetime;
    this.renewDue = issued + lifetime * RENEW_AT + jitter;
    this.later(Math.max(0, this.renewDue - this.deviceNow()), () => this.renewIfDue());
  }

  /** A long lifetime outlasts setTimeout's limit; such a timer only brings the device closer. */
  private renewIfDue(): void {
    if (this.renewDue - this.deviceNow() > 1000) this.later(this.renewDue - this.deviceNow(), () => this.renewIfDue());
    else void this.renew();
  }

  private async renew(): Promise<void> {
    if (this.stopped || this.state === 'revoked') return;
    this.renewing = true;
    if (this.state === 'connected') this.state = 'renewing';
    try {
      const fresh = await this.env.cryptoEngine(this.profile).run(async () => {
        if (this.profile.signDelayMs > 0) await sleep(this.profile.signDelayMs);
        return createDeviceIdentity(this.id);
      });
      const res = await this.env.api.asDevice(
        'POST',
        '/v1/renewals',
        { cert: this.identity.chainPem, key: this.identity.keyPem },
        { csr: fresh.csrPem, ...(this.env.lifetime ? { lifetime: this.env.lifetime } : {}) },
      );
      if (res.status !== 201) return await this.renewalFailed(String(res.json?.code ?? res.status));
      const renewed: StoredIdentity = {
        ...this.identity,
        keyPem: fresh.keyPem,
        certificatePem: res.json.certificate,
        chainPem: res.json.chain,
        serial: res.json.serial,
        notAfter: res.json.notAfter,
        issuedAt: new Date().toISOString(),
      };
      await saveIdentity(this.env.stateDir, renewed);
      this.identity = renewed;
      this.context = this.contextFor(renewed);
      this.ticket = undefined;
      this.env.counters.renewals++;
      this.renewAttempt = 0;
      this.renewing = false;
      this.scheduleRenewal();
      // Reconnect on the new certificate now, long before the old one expires.
      if (!this.stopped && this.state !== 'backoff') void this.connect();
      else if (this.state === 'renewing') this.state = 'connected';
    } catch (error) {
      await this.renewalFailed(error instanceof Error ? 'network' : 'unknown');
    }
  }

  private async renewalFailed(code: string): Promise<void> {
    this.env.counters.renewalFailures++;
    countFailure(this.env.counters, `renewal_${code}`);
    this.renewing = false;
    if (this.state === 'renewing') this.state = 'connected';
    if (/revoked|suspended/.test(code) || (await this.isRevoked())) {
      this.client?.end(true);
      return this.revoked();
    }
    // Retry with backoff, but never past the certificate's end: a device that missed it must be re-enrolled.
    const left = Date.parse(this.identity.notAfter) - this.deviceNow();
    const wait = Math.min(backoffMs(this.profile, this.renewAttempt++), Math.max(1000, left / 2));
    if (left > 0) this.later(wait, () => void this.renew());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.clearTimers();
    this.stopTelemetry();
    if (this.state !== 'revoked' && this.state !== 'expired') this.state = 'stopped';
    const client = this.client;
    this.client = undefined;
    if (client) await client.endAsync(true).catch(() => {});
  }

  private clearTimers(): void {
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.stopTelemetry();
  }
}

/** JSON telemetry padded to the requested size, as a fixed-size sensor frame would be. */
export function telemetryPayload(id: string, seq: number, size: number): string {
  const base = JSON.stringify({ id, seq, ts: Date.now(), pad: '' });
  return base.length >= size ? base : base.replace('"pad":""', `"pad":"${'x'.repeat(size - base.length)}"`);
}
