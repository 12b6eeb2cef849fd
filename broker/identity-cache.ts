import type { CertificateIdentity } from '../core/registry/index.js';

/**
 * Identities by certificate fingerprint, most recently used last, at most `capacity` of them. Kept
 * correct by the change feed: any change to a device drops its entries.
 */
export class IdentityCache {
  readonly #entries = new Map<string, CertificateIdentity>();
  readonly #byDevice = new Map<string, Set<string>>();

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.#entries.size;
  }

  get(fingerprint: string): CertificateIdentity | undefined {
    const identity = this.#entries.get(fingerprint);
    if (identity) {
      this.#entries.delete(fingerprint);
      this.#entries.set(fingerprint, identity);
    }
    return identity;
  }

  set(fingerprint: string, identity: CertificateIdentity): void {
    this.#drop(fingerprint);
    this.#entries.set(fingerprint, identity);
    let fingerprints = this.#byDevice.get(identity.deviceId);
    if (!fingerprints) this.#byDevice.set(identity.deviceId, (fingerprints = new Set()));
    fingerprints.add(fingerprint);
    while (this.#entries.size > this.capacity) this.#drop(this.#entries.keys().next().value!);
  }

  /** Forgets everything: the registry's history was lost, so nothing learnt from it can be trusted. */
  clear(): void {
    this.#entries.clear();
    this.#byDevice.clear();
  }

  forgetDevice(deviceId: string): void {
    for (const fingerprint of this.#byDevice.get(deviceId) ?? []) this.#drop(fingerprint);
  }

  #drop(fingerprint: string): void {
    const identity = this.#entries.get(fingerprint);
    if (!identity) return;
    this.#entries.delete(fingerprint);
    const fingerprints = this.#byDevice.get(identity.deviceId);
    fingerprints?.delete(fingerprint);
    if (fingerprints?.size === 0) this.#byDevice.delete(identity.deviceId);
  }
}
