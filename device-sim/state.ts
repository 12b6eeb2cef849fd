import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * What a simulated device keeps in its flash: its key, certificate and chain. One pair of files per
 * device in the state directory, so a second run reuses the fleet instead of enrolling it again.
 */
export interface StoredIdentity {
  id: string;
  profile: string;
  keyPem: string;
  certificatePem: string;
  chainPem: string;
  serial: string;
  notAfter: string;
  /** When the device received the certificate (real time): renewal is planned from here, not from notBefore, which is backdated. */
  issuedAt: string;
  /** Set once the device learned it was revoked, so a later run reports it instead of retrying. */
  revoked?: boolean;
}

const keyFile = (dir: string, id: string) => path.join(dir, `${id}.key`);
const certFile = (dir: string, id: string) => path.join(dir, `${id}.json`);

/** Write to a temporary file and rename, so a crash mid-write never leaves half a key or certificate. */
async function writeAtomically(file: string, content: string, mode: number): Promise<void> {
  const temporary = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  await writeFile(temporary, content, { mode });
  await rename(temporary, file);
}

export async function ensureStateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
}

export async function saveIdentity(dir: string, identity: StoredIdentity): Promise<void> {
  const { keyPem, ...rest } = identity;
  // The key first: a certificate on disk must never point at a key that is not there yet.
  await writeAtomically(keyFile(dir, identity.id), keyPem, 0o600);
  await writeAtomically(certFile(dir, identity.id), JSON.stringify(rest, null, 2) + '\n', 0o644);
}

export async function loadIdentity(dir: string, id: string): Promise<StoredIdentity | undefined> {
  try {
    const [keyPem, json] = await Promise.all([readFile(keyFile(dir, id), 'utf8'), readFile(certFile(dir, id), 'utf8')]);
    return { ...(JSON.parse(json) as Omit<StoredIdentity, 'keyPem'>), keyPem };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

export async function markRevoked(dir: string, identity: StoredIdentity): Promise<void> {
  await saveIdentity(dir, { ...identity, revoked: true });
}
