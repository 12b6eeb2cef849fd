import { createPrivateKey, type KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError } from '../config.js';
import type { Logger } from '../log.js';
import { type CaSigner, pemSigner } from './signer.js';
import { type EcCurve, exportPrivateKeyPem, generateEcKeys } from './x509.js';

/**
 * Where the CA's private keys live. The CA asks for keys by name: 'root', 'issuing' and 'issuing-<n>'
 * (the issuing CAs), and 'server' (the TLS key). CA keys come back as signers, so a store may keep
 * them where they are never bytes in this process (a PKCS#11 token); the TLS key comes back as PEM,
 * because Node's TLS takes it so.
 */
export interface KeyStore {
  /** The named CA key as a signer, or undefined when the store has none. */
  signer(name: string, curve: EcCurve): Promise<CaSigner | undefined>;
  /** Makes a new CA key under the name, where this store keeps such keys, and returns its signer. */
  generate(name: string, curve: EcCurve): Promise<CaSigner>;
  /** The named key as unencrypted PKCS#8 PEM, or undefined when there is none yet. */
  readPem(name: string): Promise<string | undefined>;
  /** Stores the named key, given as unencrypted PKCS#8 PEM, replacing any earlier one. */
  writePem(name: string, pem: string): Promise<void>;
  /** Whether key files are encrypted at rest; when false the operator is told at start. */
  readonly encrypted: boolean;
  /** Lets go of what the store holds open (a token session). */
  close(): Promise<void>;
}

/** The names of issuing CA keys: what a PKCS#11 store keeps in its token. */
export const isIssuingKeyName = (name: string): boolean => /^issuing(-\d+)?$/.test(name);

export const PASSPHRASE_VARIABLE = 'FLEET_CA_PASSPHRASE';

/** The PEM label of encrypted PKCS#8 (RFC 7468 section 11). */
const ENCRYPTED_LABEL = 'ENCRYPTED PRIVATE KEY';
const pemLabel = (contents: string): string | undefined => /^-----BEGIN ([A-Z0-9 ]+)-----/.exec(contents.trimStart())?.[1];
/** PKCS#8 PBES2: PBKDF2-HMAC-SHA256 key derivation, AES-256-CBC, which openssl and every PKCS#8 reader accept. */
const CIPHER = 'aes-256-cbc';

/**
 * Keys as `<dir>/<name>.key`, mode 0600. With a passphrase they are encrypted PKCS#8, and a key
 * found unencrypted (a data directory from before the passphrase was set) is encrypted in place the
 * first time it is read. Without one they are plain PKCS#8, as openssl writes them.
 */
export function fileKeyStore(dir: string, options: { passphrase?: string; log: Logger }): KeyStore {
  const { passphrase, log } = options;
  const fileOf = (name: string) => path.join(dir, `${name}.key`);

  const store = async (file: string, pem: string) => {
    const contents = passphrase === undefined ? pem : encrypt(pem, passphrase);
    // Written aside and renamed, so a crash never leaves a half-written key behind.
    await writeFile(`${file}.tmp`, contents, { mode: 0o600 });
    await rename(`${file}.tmp`, file);
  };

  const readPem = async (name: string) => {
    const file = fileOf(name);
    if (!existsSync(file)) return undefined;
    const contents = await readFile(file, 'utf8');
    if (pemLabel(contents) === ENCRYPTED_LABEL) return decrypt(file, contents, passphrase);
    if (passphrase === undefined) return contents;
    const pem = plainPkcs8(parsePlain(file, contents));
    await store(file, pem);
    log.info({ file }, `encrypted the CA key at rest with ${PASSPHRASE_VARIABLE}`);
    return pem;
  };

  return {
    encrypted: passphrase !== undefined,
    readPem,
    writePem: (name, pem) => store(fileOf(name), pem),
    async signer(name, curve) {
      const pem = await readPem(name);
      return pem === undefined ? undefined : pemSigner(pem, curve, fileOf(name));
    },
    async generate(name, curve) {
      const pem = await exportPrivateKeyPem((await generateEcKeys(curve)).privateKey);
      await store(fileOf(name), pem);
      return pemSigner(pem, curve, fileOf(name));
    },
    close: async () => {},
  };
}

function encrypt(pem: string, passphrase: string): string {
  return createPrivateKey({ key: pem, format: 'pem' }).export({ type: 'pkcs8', format: 'pem', cipher: CIPHER, passphrase }) as string;
}

const plainPkcs8 = (key: KeyObject): string => key.export({ type: 'pkcs8', format: 'pem' }) as string;

/** OpenSSL's reasons (bad decrypt, interrupted) mean nothing to an operator; say what to do instead. */
function decrypt(file: string, contents: string, passphrase: string | undefined): string {
  if (passphrase === undefined) {
    throw new ConfigError(
      `${file} is encrypted but ${PASSPHRASE_VARIABLE} is not set; set it to the passphrase the CA keys were encrypted with`,
    );
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: contents, format: 'pem', passphrase });
  } catch {
    throw new ConfigError(
      `${PASSPHRASE_VARIABLE} does not decrypt ${file}: the passphrase is wrong, or the file is damaged. ` +
        'Set the passphrase the CA keys were encrypted with; if it is lost, the CA must be replaced (every device re-enrolls).',
    );
  }
  return plainPkcs8(key);
}

function parsePlain(file: string, contents: string): KeyObject {
  try {
    return createPrivateKey({ key: contents, format: 'pem' });
  } catch {
    throw new ConfigError(`${file} is not a PEM private key; restore it from a backup, or remove the CA's files to create a new CA`);
  }
}
