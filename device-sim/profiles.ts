/**
 * Hardware profiles: how a class of device behaves on crypto and on the network. The numbers are
 * rough stand-ins for real hardware, chosen so a run shows the effects without dominating it.
 */
export interface HardwareProfile {
  name: 'mcu' | 'gateway';
  /** Added before each private-key operation we control (CSR signing), as a slow crypto core would take. */
  signDelayMs: number;
  /** Added before each TLS handshake, which signs with the device key too. */
  handshakeDelayMs: number;
  /** Private-key operations one worker lets run at once for this class (a shared, small crypto engine). */
  cryptoConcurrency: number;
  /** Share of telemetry messages lost on the link before they reach the broker. */
  packetLoss: number;
  /** Mean link drops per device per hour; each drop destroys the socket and the device reconnects. */
  linkDropsPerHour: number;
  /** The device clock is off by up to this much either way; renewals are scheduled on that clock. */
  maxClockSkewMs: number;
  keepaliveSeconds: number;
  /** Reconnect backoff: base doubles per failure up to cap, with full jitter. */
  backoffBaseMs: number;
  backoffCapMs: number;
}

export const PROFILES: Record<HardwareProfile['name'], HardwareProfile> = {
  mcu: {
    name: 'mcu',
    signDelayMs: 120,
    handshakeDelayMs: 80,
    cryptoConcurrency: 4,
    packetLoss: 0.02,
    linkDropsPerHour: 4,
    maxClockSkewMs: 3000,
    keepaliveSeconds: 60,
    backoffBaseMs: 1000,
    backoffCapMs: 60_000,
  },
  gateway: {
    name: 'gateway',
    signDelayMs: 0,
    handshakeDelayMs: 0,
    cryptoConcurrency: 64,
    packetLoss: 0.001,
    linkDropsPerHour: 0.5,
    maxClockSkewMs: 200,
    keepaliveSeconds: 30,
    backoffBaseMs: 500,
    backoffCapMs: 30_000,
  },
};

export type ProfileChoice = HardwareProfile['name'] | 'mixed';
export const PROFILE_CHOICES: ProfileChoice[] = ['mcu', 'gateway', 'mixed'];

/** In a mixed fleet every fifth device is a gateway, the rest microcontrollers, fixed by index so reruns agree. */
export function profileFor(choice: ProfileChoice, index: number): HardwareProfile {
  if (choice !== 'mixed') return PROFILES[choice];
  return index % 5 === 4 ? PROFILES.gateway : PROFILES.mcu;
}

/** Full jitter (AWS style): a uniform wait in [0, min(cap, base·2^attempt)], so a fleet does not retry in step. */
export function backoffMs(profile: HardwareProfile, attempt: number, random: () => number = Math.random): number {
  const ceiling = Math.min(profile.backoffCapMs, profile.backoffBaseMs * 2 ** Math.min(attempt, 20));
  return Math.max(50, Math.round(random() * ceiling));
}

/** A small counting semaphore: a worker's crypto engine, shared by its devices of one class. */
export class Semaphore {
  private waiting: (() => void)[] = [];
  private free: number;
  constructor(size: number) {
    this.free = size;
  }
  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await work();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}
