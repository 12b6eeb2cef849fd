import type { Client } from 'aedes';

/** The live MQTT sessions of each device, with the certificate each uses, so a revocation can close them at once. */
export class DeviceSessions {
  readonly #byDevice = new Map<string, Map<Client, string>>();

  add(deviceId: string, serial: string, client: Client): void {
    let sessions = this.#byDevice.get(deviceId);
    if (!sessions) this.#byDevice.set(deviceId, (sessions = new Map()));
    sessions.set(client, serial);
    client.conn.once('close', () => this.#remove(deviceId, client));
  }

  #remove(deviceId: string, client: Client): void {
    const sessions = this.#byDevice.get(deviceId);
    if (!sessions) return;
    sessions.delete(client);
    if (sessions.size === 0) this.#byDevice.delete(deviceId);
  }

  count(deviceId?: string): number {
    if (deviceId !== undefined) return this.#byDevice.get(deviceId)?.size ?? 0;
    let total = 0;
    for (const set of this.#byDevice.values()) total += set.size;
    return total;
  }

  /** Ends the device's sessions (only those using `serial`, when given); returns how many. */
  close(deviceId: string, serial?: string): number {
    const sessions = this.#byDevice.get(deviceId);
    if (!sessions) return 0;
    let closed = 0;
    for (const [client, used] of sessions) {
      if (serial !== undefined && used !== serial) continue;
      client.close();
      // Without waiting for MQTT-level goodbyes: the identity is no longer valid.
      client.conn.destroy();
      closed++;
    }
    return closed;
  }
}
