import type { Queryable } from '../db/transaction.js';

/**
 * The CA certificates of the fleet (sql/013): the root as generation 0 and the issuing CAs from 1.
 * Only certificates: the private keys stay in each node's key store.
 */
export interface CaCertificateRow {
  generation: number;
  role: 'root' | 'issuing';
  /** Lower-case hex SHA-256 of the DER certificate. */
  fingerprint: string;
  /** Lower-case hex. */
  serial: string;
  subject: string;
  pem: string;
  state: 'current' | 'retired';
  createdAt: Date;
  retiredAt: Date | null;
}

/** Any constant will do; every process changing the CA certificates of one database takes it. */
const CA_CERTIFICATES_LOCK = 7_215_004_213;

const LOCK = `SELECT pg_advisory_xact_lock($1)`;

const SELECT_ALL = `
  SELECT generation, role, fingerprint, serial, subject, pem, state, created_at, retired_at
    FROM ca_certificates ORDER BY generation DESC`;

const INSERT = `
  INSERT INTO ca_certificates (generation, role, fingerprint, serial, subject, pem, state, created_at, retired_at)
  SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::timestamptz[])`;

const RETIRE = `
  UPDATE ca_certificates SET state = 'retired', retired_at = $2
   WHERE generation = $1 AND role = 'issuing' AND state = 'current'`;

/**
 * Serialises every change to the CA certificates until the transaction ends. An advisory lock
 * rather than a row lock: on an empty table (two nodes starting a new fleet at once) there is no
 * row to lock, and only one of them may create the root.
 */
export async function lockCaCertificates(tx: Queryable): Promise<void> {
  await tx.query(LOCK, [CA_CERTIFICATES_LOCK]);
}

/** Every CA certificate, retired ones included, newest issuing CA first and the root last. */
export async function caCertificates(q: Queryable): Promise<CaCertificateRow[]> {
  const { rows } = await q.query(SELECT_ALL);
  return rows.map((r) => ({
    generation: r.generation,
    role: r.role,
    fingerprint: r.fingerprint,
    serial: r.serial,
    subject: r.subject,
    pem: r.pem,
    state: r.state,
    createdAt: r.created_at,
    retiredAt: r.retired_at,
  }));
}

/** Adds CA certificates; a generation already present is an error (take lockCaCertificates first). */
export async function addCaCertificates(tx: Queryable, rows: CaCertificateRow[]): Promise<void> {
  if (rows.length === 0) return;
  const column = <K extends keyof CaCertificateRow>(key: K) => rows.map((r) => r[key]);
  await tx.query(INSERT, [
    column('generation'),
    column('role'),
    column('fingerprint'),
    column('serial'),
    column('subject'),
    column('pem'),
    column('state'),
    column('createdAt'),
    column('retiredAt'),
  ]);
}

/** Marks a current issuing CA retired; false when there is no such current issuing CA. */
export async function retireCaCertificate(tx: Queryable, generation: number, at: Date): Promise<boolean> {
  return ((await tx.query(RETIRE, [generation, at])).rowCount ?? 0) > 0;
}
