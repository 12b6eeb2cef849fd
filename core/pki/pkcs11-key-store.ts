import type * as graphene from 'graphene-pk11';
import type { Crypto as P11Crypto, CryptoKey as P11CryptoKey } from 'node-webcrypto-p11';
import { ConfigError } from '../config.js';
import type { Logger } from '../log.js';
import { isIssuingKeyName, type KeyStore } from './key-store.js';
import type { CaSigner } from './signer.js';
import { type EcCurve, ecKeyAlgorithm, ecSigningAlgorithm, x509 } from './x509.js';

export interface Pkcs11Options {
  /** The PKCS#11 module (a shared library, such as /usr/lib/softhsm/libsofthsm2.so). */
  module: string;
  /** The label of the token that holds the issuing CA keys. */
  token: string;
  /** The token's user PIN. Never logged, never in a message. */
  pin: string;
  /** Keys are labelled `<keyLabel>-<name>`: fleet-ca-issuing, fleet-ca-issuing-2, ... */
  keyLabel: string;
}

/** PKCS#11 v2.40 return values that mean something to the operator. */
const CKR_PIN_INCORRECT = 0xa0;
const CKR_PIN_LOCKED = 0xa4;
const CKR_USER_ALREADY_LOGGED_IN = 0x100;
const codeOf = (error: unknown): number | undefined => (error as { code?: unknown }).code as number | undefined;

/** One loaded module per library path in a process: C_Finalize by one user would end every other's sessions. */
const modules = new Map<string, { module: graphene.Module; users: number }>();

interface OpenToken {
  graphene: typeof graphene;
  session: graphene.Session;
  crypto: P11Crypto;
}

/**
 * Issuing CA keys in a PKCS#11 token: generated there (sensitive, not extractable), found by label,
 * and used only through the token's C_Sign, so the private key is never bytes in this process. Other
 * keys (the root, which belongs offline, and the TLS server key, which Node needs as PEM) are the
 * file store's, and an issuing CA key made before the token was configured stays a file until
 * that CA is rotated away.
 */
export function pkcs11KeyStore(options: Pkcs11Options, files: KeyStore, log: Logger): KeyStore {
  let opening: Promise<OpenToken> | undefined;
  // One PKCS#11 session runs one operation at a time (CKR_OPERATION_ACTIVE otherwise).
  let queue: Promise<unknown> = Promise.resolve();
  const exclusive = <T>(work: (token: OpenToken) => Promise<T> | T): Promise<T> => {
    const next = queue.then(() => (opening ??= openToken(options, log))).then(work);
    queue = next.catch(() => undefined);
    return next;
  };
  const labelOf = (name: string) => `${options.keyLabel}-${name}`;
  const where = (label: string) => `PKCS#11 token "${options.token}", key "${label}"`;

  const signerOf = (keys: { privateKey: P11CryptoKey; spki: ArrayBuffer }, curve: EcCurve, label: string): CaSigner => {
    const publicKey = new x509.PublicKey(keys.spki);
    const actual = (publicKey.algorithm as EcKeyAlgorithm).namedCurve;
    if (actual !== curve) throw new ConfigError(`${where(label)} is on ${actual}, not ${curve}; an issuing CA key must be ECDSA ${curve}`);
    const algorithm = ecSigningAlgorithm(curve);
    return {
      curve,
      publicKey,
      location: where(label),
      sign: (data) => exclusive(({ crypto }) => crypto.subtle.sign(algorithm, keys.privateKey, data)),
    };
  };

  return {
    encrypted: files.encrypted,
    readPem: (name) => files.readPem(name),
    writePem: (name, pem) => files.writePem(name, pem),
    async signer(name, curve) {
      if (!isIssuingKeyName(name)) return files.signer(name, curve);
      const label = labelOf(name);
      const found = await exclusive((token) => findKeys(token, label, curve));
      return found ? signerOf(found, curve, label) : files.signer(name, curve);
    },
    async generate(name, curve) {
      if (!isIssuingKeyName(name)) return files.generate(name, curve);
      const label = labelOf(name);
      const made = await exclusive(async (token) => {
        if (await findKeys(token, label, curve)) {
          throw new ConfigError(`${where(label)} already exists; use another FLEET_CA_PKCS11_KEY_LABEL, or delete that key from the token`);
        }
        const algorithm = { ...ecKeyAlgorithm(curve), token: true, sensitive: true, label };
        const pair = (await token.crypto.subtle.generateKey(algorithm, false, ['sign', 'verify'])) as CryptoKeyPair;
        return { privateKey: pair.privateKey as P11CryptoKey, spki: await token.crypto.subtle.exportKey('spki', pair.publicKey) };
      });
      log.info({ pkcs11Token: options.token, label }, 'generated a CA key in the PKCS#11 token');
      return signerOf(made, curve, label);
    },
    async close() {
      const open = opening;
      opening = undefined;
      await queue;
      if (!open) return;
      const token = await open.catch(() => undefined);
      if (!token) return;
      token.session.close();
      releaseModule(options.module);
    },
  };
}

/** The private key labelled so, and its public half's SubjectPublicKeyInfo; undefined when the token has no such key. */
async function findKeys(token: OpenToken, label: string, curve: EcCurve): Promise<{ privateKey: P11CryptoKey; spki: ArrayBuffer } | undefined> {
  const { ObjectClass } = token.graphene;
  const objects = (objectClass: number) => {
    const found: graphene.SessionObject[] = [];
    token.session.find({ class: objectClass, token: true, label }, (object) => void found.push(object));
    return found;
  };
  const privates = objects(ObjectClass.PRIVATE_KEY);
  if (privates.length === 0) return undefined;
  const publics = objects(ObjectClass.PUBLIC_KEY);
  if (privates.length > 1 || publics.length !== 1) {
    throw new ConfigError(
      `the PKCS#11 token holds ${privates.length} private and ${publics.length} public keys labelled "${label}"; ` +
        'it must hold one pair: remove the others from the token',
    );
  }
  const { CryptoKey } = await import('node-webcrypto-p11');
  const item = (object: graphene.SessionObject, extractable: boolean, usages: KeyUsage[]) =>
    token.crypto.keyStorage.getItem(CryptoKey.getID(object.toType()), ecKeyAlgorithm(curve), extractable, usages);
  const privateKey = await item(privates[0]!, false, ['sign']);
  const spki = await token.crypto.subtle.exportKey('spki', await item(publics[0]!, true, ['verify']));
  return { privateKey, spki };
}

async function openToken(options: Pkcs11Options, log: Logger): Promise<OpenToken> {
  const lib = await import('graphene-pk11');
  const { Crypto } = await import('node-webcrypto-p11');
  const module = loadModule(lib, options.module);
  try {
    const slots = module.getSlots(true);
    const labels: string[] = [];
    let slot: graphene.Slot | undefined;
    for (let i = 0; i < slots.length; i++) {
      const label = slots.items(i).getToken().label.trim();
      labels.push(label);
      if (label === options.token) slot = slots.items(i);
    }
    if (!slot) {
      const seen = labels.length > 0 ? `it has ${labels.map((l) => `"${l}"`).join(', ')}` : 'it has no initialised token';
      throw new ConfigError(`FLEET_CA_PKCS11_TOKEN: ${options.module} has no token labelled "${options.token}"; ${seen}`);
    }
    const session = slot.open(lib.SessionFlag.SERIAL_SESSION | lib.SessionFlag.RW_SESSION);
    try {
      session.login(options.pin, lib.UserType.USER);
    } catch (error) {
      if (codeOf(error) !== CKR_USER_ALREADY_LOGGED_IN) {
        session.close();
        throw loginError(error, options.token);
      }
    }
    log.debug({ module: options.module, pkcs11Token: options.token }, 'opened the PKCS#11 token');
    return { graphene: lib, session, crypto: new Crypto({ session }) };
  } catch (error) {
    releaseModule(options.module);
    throw error;
  }
}

function loginError(error: unknown, token: string): Error {
  const code = codeOf(error);
  if (code === CKR_PIN_INCORRECT) return new ConfigError(`FLEET_CA_PKCS11_PIN is not the user PIN of the PKCS#11 token "${token}"`);
  if (code === CKR_PIN_LOCKED) return new ConfigError(`the user PIN of the PKCS#11 token "${token}" is locked; the token's security officer must unlock it`);
  return error instanceof Error ? error : new Error(String(error));
}

function loadModule(lib: typeof graphene, file: string): graphene.Module {
  const loaded = modules.get(file);
  if (loaded) {
    loaded.users++;
    return loaded.module;
  }
  let module: graphene.Module;
  try {
    module = lib.Module.load(file, 'fleet-ca');
    module.initialize();
  } catch (error) {
    throw new ConfigError(`FLEET_CA_PKCS11_MODULE: cannot load the PKCS#11 module ${file}: ${error instanceof Error ? error.message : String(error)}`);
  }
  modules.set(file, { module, users: 1 });
  return module;
}

function releaseModule(file: string): void {
  const loaded = modules.get(file);
  if (!loaded || --loaded.users > 0) return;
  modules.delete(file);
  loaded.module.finalize();
}
