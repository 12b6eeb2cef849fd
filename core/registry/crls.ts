import type pg from 'pg';
import { inTransaction, type Queryable } from '../db/transaction.js';
import { type RevocationList, revocationList } from './certificates.js';
import { latestChangeSeq } from './changes.js';

/** A signed CRL as kept in the registry. */
export interface StoredCrl {
  crlNumber: number;
  /** The last registry change it includes. */
  changeSeq: number;
  refreshAt: Date;
  der: Uint8Array<ArrayBuffer>;
}

export interface CrlRequest {
  /** The issuing CA's key id (its CRLs are kept under it) and subject (its certificates name it). */
  issuerKeyId: string;
  issuer: string;
  now: Date;
  /** How long a CRL is served before it is signed again without any change. */
  refreshAfterMs: number;
}

/** Signs a CRL of these entries with this number; runs while the issuer's CRL lock is held. */
export type CrlSigner = (list: RevocationList['entries'], crlNumber: number) => Promise<ArrayBuffer>;

/** Both keys of a two-key advisory lock: this feature's, then the issuer's. */
const LOCK_CRL = `SELECT pg_advisory_xact_lock(hashtext('fleet_crl'), hashtext($1))`;
const NEXT_CRL_NUMBER = `SELECT nextval('crl_numbers') AS n`;
const SELECT_NEWEST = `
  SELECT crl_number, change_seq, refresh_at, der FROM crls WHERE issuer_key_id = $1 ORDER BY crl_number DESC LIMIT 1`;
const INSERT_CRL = `
  INSERT INTO crls (issuer_key_id, crl_number, change_seq, this_update, refresh_at, der) VALUES ($1, $2, $3, $4, $5, $6)`;
/** Only the newest is ever served; older ones are kept for nothing. */
const DELETE_OLDER = `DELETE FROM crls WHERE issuer_key_id = $1 AND crl_number < $2`;

const toStored = (r: Record<string, any>): StoredCrl => ({
  crlNumber: Number(r.crl_number),
  changeSeq: Number(r.change_seq),
  refreshAt: r.refresh_at,
  der: new Uint8Array(r.der),
});

/** Whether a stored CRL still says everything the registry does at `now`. */
export const crlIsCurrent = (crl: StoredCrl, changeSeq: number, now: Date): boolean =>
  crl.changeSeq >= changeSeq && now.getTime() < crl.refreshAt.getTime();

/**
 * The issuer's current CRL: the newest one signed, or a new one when the registry has changed since
 * or it is due. One process at a time decides, under a transaction-scoped advisory lock per issuer,
 * so across every process a new CRL's number is above every number handed out before it, and a
 * change is signed once: whoever waited on the lock finds the CRL its holder signed, and serves it.
 */
export async function currentCrl(pool: pg.Pool, request: CrlRequest, sign: CrlSigner): Promise<StoredCrl> {
  return inTransaction(pool, async (tx) => {
    await tx.query(LOCK_CRL, [request.issuerKeyId]);
    const changeSeq = await latestChangeSeq(tx);
    const newest = (await tx.query(SELECT_NEWEST, [request.issuerKeyId])).rows[0];
    if (newest && crlIsCurrent(toStored(newest), changeSeq, request.now)) return toStored(newest);
    return signNew(tx, request, changeSeq, sign);
  });
}

async function signNew(tx: Queryable, request: CrlRequest, changeSeq: number, sign: CrlSigner): Promise<StoredCrl> {
  const list = await revocationList(tx, request.issuer, request.now);
  const crlNumber = Number((await tx.query(NEXT_CRL_NUMBER)).rows[0].n);
  const der = new Uint8Array(await sign(list.entries, crlNumber));
  const due = request.now.getTime() + request.refreshAfterMs;
  const refreshAt = new Date(Math.min(due, list.changesAt?.getTime() ?? due));
  await tx.query(INSERT_CRL, [request.issuerKeyId, crlNumber, changeSeq, request.now, refreshAt, der]);
  await tx.query(DELETE_OLDER, [request.issuerKeyId, crlNumber]);
  return { crlNumber, changeSeq, refreshAt, der };
}
