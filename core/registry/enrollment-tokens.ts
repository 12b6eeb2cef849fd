import type { Queryable } from '../db/transaction.js';
import { FleetError } from '../errors.js';
import { ENROLLMENT_TOKEN_PREFIX, hashSecret } from './secrets.js';

export const unknownEnrollmentToken = () =>
  new FleetError('token_unknown', 401, 'the enrollment token is not known for this device; ask an operator for a new one (fleet device add)');

export interface PresentedToken {
  token: string;
  /** When the caller names the device (EST's HTTP Basic user), the token must belong to it. */
  deviceId?: string;
}

const SELECT_TOKEN_OWNERS = `SELECT token_hash, device_id FROM enrollment_tokens WHERE token_hash = ANY($1::bytea[])`;

/**
 * Which presented tokens are ones we issued (to the device named, if any): one lookup by hash for
 * the whole list, no lock and no CSR parsed, so unknown tokens cost the sender more than us. Whether
 * a known token is still usable is decided under lock when it is redeemed.
 */
export async function knownEnrollmentTokens(q: Queryable, presented: PresentedToken[]): Promise<boolean[]> {
  const hashes = presented.map((p) => (p.token.startsWith(ENROLLMENT_TOKEN_PREFIX) ? hashSecret(p.token) : undefined));
  const wanted = hashes.filter((h): h is Buffer => h !== undefined);
  const owners = new Map<string, string>();
  if (wanted.length > 0) {
    for (const row of (await q.query(SELECT_TOKEN_OWNERS, [wanted])).rows) owners.set((row.token_hash as Buffer).toString('hex'), row.device_id);
  }
  return presented.map((p, i) => {
    const owner = hashes[i] && owners.get(hashes[i]!.toString('hex'));
    return owner !== undefined && (p.deviceId === undefined || p.deviceId === owner);
  });
}
