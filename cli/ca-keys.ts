import { existsSync } from 'node:fs';
import path from 'node:path';
import type { FleetConfig } from '../core/config.js';
import type { Logger } from '../core/log.js';
import { fileKeyStore, type KeyStore, PASSPHRASE_VARIABLE } from '../core/pki/key-store.js';
import { pkcs11KeyStore } from '../core/pki/pkcs11-key-store.js';

const pkiDir = (config: FleetConfig) => path.join(config.dataDir, 'pki');

/** Where the root CA key is while it is online; offline, the file is elsewhere and only root.crt is here. */
export const rootKeyFile = (config: FleetConfig) => path.join(pkiDir(config), 'root.key');

/**
 * The CA's keys: files in `<dataDir>/pki` (encrypted at rest when FLEET_CA_PASSPHRASE is set), with
 * the issuing CA keys in a PKCS#11 token when FLEET_CA_PKCS11_MODULE is set. Close it when done.
 */
export function caKeyStore(config: FleetConfig, log: Logger): KeyStore {
  const files = fileKeyStore(pkiDir(config), { passphrase: config.caPassphrase, log });
  return config.caPkcs11 ? pkcs11KeyStore(config.caPkcs11, files, log) : files;
}

/** Runs work with the CA's key store open, and closes it (the token session) afterwards. */
export async function withCaKeys<T>(config: FleetConfig, log: Logger, work: (keys: KeyStore) => Promise<T>): Promise<T> {
  const keys = caKeyStore(config, log);
  try {
    return await work(keys);
  } finally {
    await keys.close();
  }
}

/**
 * What start says about key custody, once the CA has loaded (so a start refused for its keys does not
 * also warn about them): unencrypted key files, and a root key kept online beside the issuing keys.
 */
export function warnAboutCaKeys(keyStore: KeyStore, config: FleetConfig, log: Logger): void {
  const dir = pkiDir(config);
  if (!keyStore.encrypted) {
    log.warn(
      { dir },
      `the CA private keys are not encrypted at rest; set ${PASSPHRASE_VARIABLE} (12 characters or more) to encrypt them on the next start`,
    );
  }
  const rootKey = rootKeyFile(config);
  if (!existsSync(rootKey)) return;
  const offline = '<offline-dir>';
  log.warn(
    { file: rootKey },
    `the root CA key is online (${rootKey}); take it offline: mkdir -p ${offline}/pki && cp ${dir}/root.crt ${offline}/pki/ && mv ${rootKey} ${offline}/pki/ ` +
      `(then rotate with: fleet ca rotate --csr issuing.csr; FLEET_DATA_DIR=${offline} fleet ca sign-issuing issuing.csr --out issuing.crt; fleet ca import issuing.crt)`,
  );
}
