import type { Client } from 'aedes';

/** The live MQTT sessions of each device, so a revocation can find and close them at once. */
export class DeviceSessions {
  readonly #byDevice = new Map<string, Set<Client>>();

  add(deviceId: string, client: Client): void {
    let set = this.#byDevice.get(deviceId);
    if (!set) this.#byDevice.set(deviceId, (set = new Set()));
    set.add(client);
    client.conn.once('close', () => this.#remove(deviceId, client));
  }

  #remove(deviceId: string, client: Client): void {
    const set = this.#byDevice.get(deviceId);
    if (!set) return;
    set.delete(client);
    if (set.size === 0) this.#byDevice.delete(deviceId);
  }

  count(deviceId?: string): number {
    if (deviceId !== undefined) return this.#byDevice.get(deviceId)?.size ?? 0;
    let total = 0;
    for (const set of this.#byDevice.values()) total += set.size;
    return total;
  }

  /** Ends every session of the device; returns how many there were. */
  closeDevice(deviceId: string): number {
    const set = this.#byDevice.get(deviceId);
    if (!set) return 0;
    for (const client of set) {
      client.close();
      // Without waiting for MQTT-level goodbyes: the identity is no longer valid.
      client.conn.destroy();
    }
    return set.size;
  }
}
