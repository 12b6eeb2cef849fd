import type { Queryable } from '../db/transaction.js';
import { FleetError } from '../errors.js';

/*
 * What the fleet's security audits read (GET /v1/audits, fleet audit). Each finding set has a count,
 * for the list of checks, and pages in a fixed order for one check's findings. Both go through the
 * partial indexes of sql/010, so the list of checks stays cheap at a million devices.
 *
 * A page's SQL takes the check's parameters, then the key of the last row shown (the cursor), then
 * the limit, and returns each row's key as a text array, which becomes the next cursor.
 */

export interface AuditPageRequest {
  /** The key of the last row of the previous page (decoded from the cursor); unset for the first. */
  after?: string[];
  limit: number;
}

export interface AuditPage<T> {
  rows: T[];
  /** The key to continue after, or null when this was the last page. */
  next: string[] | null;
}

/** An active certificate, as the certificate checks report it. */
export interface AuditedCertificate {
  serial: string;
  deviceId: string;
  issuer: string;
  keyType: string | null;
  notBefore: Date;
  notAfter: Date;
}

const cursorInvalid = () =>
  new FleetError('validation_failed', 400, 'cursor: not a cursor this check gave out; start again without one');

/** A cursor whose key PostgreSQL cannot read back (a forged timestamp) is the client's mistake, not ours. */
const BAD_VALUE_CODES = new Set(['22007', '22008', '22P02', '22009']);

async function keysetPage<T>(
  q: Queryable,
  sql: string,
  params: unknown[],
  page: AuditPageRequest,
  start: string[],
  to: (r: Record<string, any>) => T,
): Promise<AuditPage<T>> {
  const after = page.after ?? start;
  if (after.length !== start.length) throw cursorInvalid();
  let rows: Record<string, any>[];
  try {
    rows = (await q.query(sql, [...params, ...after, page.limit + 1])).rows;
  } catch (error) {
    if (BAD_VALUE_CODES.has((error as { code?: string }).code ?? '')) throw cursorInvalid();
    throw error;
  }
  const shown = rows.slice(0, page.limit);
  return { rows: shown.map(to), next: rows.length > page.limit ? (shown.at(-1)!.key as string[]) : null };
}

const count = async (q: Queryable, sql: string, params: unknown[]): Promise<number> => (await q.query(sql, params)).rows[0].n;

const CERTIFICATE_COLUMNS = 'serial, device_id, issuer, key_type, not_before, not_after';

const toAuditedCertificate = (r: Record<string, any>): AuditedCertificate => ({
  serial: r.serial,
  deviceId: r.device_id,
  issuer: r.issuer,
  keyType: r.key_type,
  notBefore: r.not_before,
  notAfter: r.not_after,
});

/* Active certificates that expire after $1 (now) and by $2. */
const EXPIRING = `FROM certificates WHERE status = 'active' AND not_after > $1 AND not_after <= $2`;
const COUNT_EXPIRING = `SELECT count(*)::int AS n ${EXPIRING}`;
const PAGE_EXPIRING = `
  SELECT ${CERTIFICATE_COLUMNS}, ARRAY[not_after::text, serial] AS key ${EXPIRING}
    AND (not_after, serial) > ($3::timestamptz, $4::text)
  ORDER BY not_after, serial LIMIT $5`;

export const countCertificatesExpiring = (q: Queryable, now: Date, by: Date) => count(q, COUNT_EXPIRING, [now, by]);
export const certificatesExpiring = (q: Queryable, now: Date, by: Date, page: AuditPageRequest) =>
  keysetPage(q, PAGE_EXPIRING, [now, by], page, ['-infinity', ''], toAuditedCertificate);

/* Active, unexpired certificates issued (not_before) before $2. */
const ISSUED_BEFORE = `FROM certificates WHERE status = 'active' AND not_after > $1 AND not_before < $2`;
const COUNT_ISSUED_BEFORE = `SELECT count(*)::int AS n ${ISSUED_BEFORE}`;
const PAGE_ISSUED_BEFORE = `
  SELECT ${CERTIFICATE_COLUMNS}, ARRAY[not_before::text, serial] AS key ${ISSUED_BEFORE}
    AND (not_before, serial) > ($3::timestamptz, $4::text)
  ORDER BY not_before, serial LIMIT $5`;

export const countCertificatesIssuedBefore = (q: Queryable, now: Date, before: Date) => count(q, COUNT_ISSUED_BEFORE, [now, before]);
export const certificatesIssuedBefore = (q: Queryable, now: Date, before: Date, page: AuditPageRequest) =>
  keysetPage(q, PAGE_ISSUED_BEFORE, [now, before], page, ['-infinity', ''], toAuditedCertificate);

/**
 * Active certificates grouped by a column with few distinct values (their issuer, their key type):
 * the distinct values by a skip scan of the (column, serial) index, one probe per value, so a million
 * certificates from three issuing CAs cost three probes; then the certificates of the values that
 * are a problem, counted and paged through the same index. Null values (key types not recorded yet)
 * are not among the distinct ones.
 */
const activeCertificatesBy = (column: 'issuer' | 'key_type') => {
  const of = `FROM certificates WHERE status = 'active' AND not_after > $1 AND ${column} = ANY($2::text[])`;
  return {
    distinct: `
      WITH RECURSIVE v AS (
        (SELECT ${column} AS value FROM certificates WHERE status = 'active' AND ${column} IS NOT NULL ORDER BY ${column} LIMIT 1)
        UNION ALL
        SELECT (SELECT c.${column} FROM certificates c WHERE c.status = 'active' AND c.${column} > v.value ORDER BY c.${column} LIMIT 1)
        FROM v WHERE v.value IS NOT NULL
      )
      SELECT value FROM v WHERE value IS NOT NULL`,
    count: `SELECT count(*)::int AS n ${of}`,
    page: `
      SELECT ${CERTIFICATE_COLUMNS}, ARRAY[${column}, serial] AS key ${of}
        AND (${column}, serial) > ($3::text, $4::text)
      ORDER BY ${column}, serial LIMIT $5`,
  };
};

const BY_ISSUER = activeCertificatesBy('issuer');
const BY_KEY_TYPE = activeCertificatesBy('key_type');

const distinctValues = async (q: Queryable, sql: string): Promise<string[]> => (await q.query(sql)).rows.map((r) => r.value as string);

/** The issuers (subjects) of active certificates. */
export const issuersOfActiveCertificates = (q: Queryable) => distinctValues(q, BY_ISSUER.distinct);
export const countActiveCertificatesOfIssuers = (q: Queryable, now: Date, issuers: string[]) =>
  issuers.length === 0 ? Promise.resolve(0) : count(q, BY_ISSUER.count, [now, issuers]);
export const activeCertificatesOfIssuers = (q: Queryable, now: Date, issuers: string[], page: AuditPageRequest) =>
  keysetPage(q, BY_ISSUER.page, [now, issuers], page, ['', ''], toAuditedCertificate);

/** The recorded key types of active certificates. */
export const keyTypesOfActiveCertificates = (q: Queryable) => distinctValues(q, BY_KEY_TYPE.distinct);
export const countActiveCertificatesWithKeyTypes = (q: Queryable, now: Date, types: string[]) =>
  types.length === 0 ? Promise.resolve(0) : count(q, BY_KEY_TYPE.count, [now, types]);
export const activeCertificatesWithKeyTypes = (q: Queryable, now: Date, types: string[], page: AuditPageRequest) =>
  keysetPage(q, BY_KEY_TYPE.page, [now, types], page, ['', ''], toAuditedCertificate);

const UNRECORDED_KEY_TYPES = `SELECT serial, pem FROM certificates WHERE status = 'active' AND key_type IS NULL ORDER BY serial LIMIT $1`;
const RECORD_KEY_TYPES = `
  UPDATE certificates c SET key_type = u.key_type
  FROM unnest($1::text[], $2::text[]) AS u (serial, key_type)
  WHERE c.serial = u.serial AND c.key_type IS NULL`;

/**
 * Records the key type of active certificates issued before the registry kept it (sql/010), at most
 * `batch` at a time, with `classify` reading each PEM; returns how many it recorded, 0 when none is left.
 */
export async function recordMissingKeyTypes(q: Queryable, classify: (pem: string) => string, batch = 500): Promise<number> {
  const rows = (await q.query(UNRECORDED_KEY_TYPES, [batch])).rows;
  if (rows.length === 0) return 0;
  await q.query(RECORD_KEY_TYPES, [rows.map((r) => r.serial), rows.map((r) => classify(r.pem))]);
  return rows.length;
}

/** An active identity that has never connected since it enrolled. */
export interface NeverSeenDevice {
  deviceId: string;
  kind: string;
  /** When it first enrolled (its first certificate). */
  enrolledAt: Date;
  /** When it became active: its last enrollment, or its resumption. */
  activeSince: Date;
}

/*
 * Active since $1 or earlier and never seen: a range of the partial index on (updated_at, id), read
 * without the table for the count. An active device's updated_at is when it last became active
 * (enrolled, re-enrolled or resumed), so a device given a new credential gets the full threshold again.
 */
const NEVER_SEEN = `FROM devices d WHERE d.status = 'active' AND d.last_seen_at IS NULL AND d.updated_at <= $1`;
const COUNT_NEVER_SEEN = `SELECT count(*)::int AS n ${NEVER_SEEN}`;
const PAGE_NEVER_SEEN = `
  SELECT d.id, d.kind, d.updated_at, (SELECT min(c.created_at) FROM certificates c WHERE c.device_id = d.id) AS enrolled_at,
    ARRAY[d.updated_at::text, d.id] AS key
  ${NEVER_SEEN} AND (d.updated_at, d.id) > ($2::timestamptz, $3::text)
  ORDER BY d.updated_at, d.id LIMIT $4`;

export const countNeverSeen = (q: Queryable, activeBy: Date) => count(q, COUNT_NEVER_SEEN, [activeBy]);
export const neverSeenDevices = (q: Queryable, activeBy: Date, page: AuditPageRequest) =>
  keysetPage(q, PAGE_NEVER_SEEN, [activeBy], page, ['-infinity', ''], (r): NeverSeenDevice => ({
    deviceId: r.id,
    kind: r.kind,
    enrolledAt: r.enrolled_at ?? r.updated_at,
    activeSince: r.updated_at,
  }));

/** A certificate that connected from more than one address in the window. */
export interface SharedCertificate {
  serial: string;
  deviceId: string | null;
  /** The first 20 addresses, in order. */
  addresses: string[];
  addressCount: number;
  connects: number;
  lastConnectedAt: Date;
}

/* Connects since $1, by certificate, from two addresses or more. */
const SHARED = `
  FROM device_events
  WHERE kind = 'connected' AND at >= $1 AND certificate_serial IS NOT NULL AND address IS NOT NULL`;
const SHARED_GROUPS = `GROUP BY certificate_serial HAVING count(DISTINCT address) > 1`;
const COUNT_SHARED = `SELECT count(*)::int AS n FROM (SELECT certificate_serial ${SHARED} ${SHARED_GROUPS}) s`;
/* The window's events first, from the time index, here and for takeovers: else the planner walks every event in serial order to feed the LIMIT. */
const PAGE_SHARED = `
  WITH e AS MATERIALIZED (SELECT certificate_serial, device_id, address, at ${SHARED} AND certificate_serial > $2)
  SELECT certificate_serial AS serial, min(device_id) AS device_id,
    (array_agg(DISTINCT address ORDER BY address))[1:20] AS addresses, count(DISTINCT address)::int AS address_count,
    count(*)::int AS connects, max(at) AS last_at, ARRAY[certificate_serial] AS key
  FROM e ${SHARED_GROUPS}
  ORDER BY certificate_serial LIMIT $3`;

export const countSharedCertificates = (q: Queryable, since: Date) => count(q, COUNT_SHARED, [since]);
export const sharedCertificates = (q: Queryable, since: Date, page: AuditPageRequest) =>
  keysetPage(q, PAGE_SHARED, [since], page, [''], (r): SharedCertificate => ({
    serial: r.serial,
    deviceId: r.device_id,
    addresses: r.addresses,
    addressCount: r.address_count,
    connects: r.connects,
    lastConnectedAt: r.last_at,
  }));

/** A device whose session was taken over by another connection with its client id, again and again. */
export interface ConflictingClientId {
  deviceId: string;
  takeovers: number;
  /** The addresses of the sessions taken over (the first 20). */
  addresses: string[];
  lastTakeoverAt: Date;
}

/* Takeovers since $1, by device, at least $2 of them. */
const TAKEOVERS = `
  FROM device_events
  WHERE kind = 'disconnected' AND reason = 'takeover' AND at >= $1 AND device_id IS NOT NULL`;
const TAKEOVER_GROUPS = `GROUP BY device_id HAVING count(*) >= $2`;
const COUNT_TAKEOVERS = `SELECT count(*)::int AS n FROM (SELECT device_id ${TAKEOVERS} ${TAKEOVER_GROUPS}) s`;
const PAGE_TAKEOVERS = `
  WITH e AS MATERIALIZED (SELECT device_id, address, at ${TAKEOVERS} AND device_id > $3)
  SELECT device_id, count(*)::int AS takeovers, max(at) AS last_at,
    coalesce((array_agg(DISTINCT address ORDER BY address) FILTER (WHERE address IS NOT NULL))[1:20], '{}') AS addresses,
    ARRAY[device_id] AS key
  FROM e ${TAKEOVER_GROUPS}
  ORDER BY device_id LIMIT $4`;

export const countConflictingClientIds = (q: Queryable, since: Date, atLeast: number) => count(q, COUNT_TAKEOVERS, [since, atLeast]);
export const conflictingClientIds = (q: Queryable, since: Date, atLeast: number, page: AuditPageRequest) =>
  keysetPage(q, PAGE_TAKEOVERS, [since, atLeast], page, [''], (r): ConflictingClientId => ({
    deviceId: r.device_id,
    takeovers: r.takeovers,
    addresses: r.addresses,
    lastTakeoverAt: r.last_at,
  }));

/** A live session the registry says should have been cut. */
export interface SurvivingSession {
  deviceId: string;
  /** The certificate the session presented, when the broker recorded it. */
  serial: string | null;
  deviceStatus: string;
  certificateStatus: string | null;
  /** When the device or the certificate was revoked or suspended. */
  revokedAt: Date;
  connectedSince: Date | null;
  peerAddress: string | null;
}

/*
 * The ids of connected devices revoked or suspended by $1, and of connected devices whose live
 * session presented a certificate revoked by $1. Each half is an index-only scan of a small partial
 * index (sql/010), never a pass over every connected device.
 */
const SURVIVING_IDS = `
  SELECT d.id FROM devices d WHERE d.connected AND d.status IN ('revoked', 'suspended') AND d.updated_at <= $1
  UNION
  SELECT d.id FROM certificates c JOIN devices d ON d.connected_serial = c.serial AND d.connected
  WHERE c.status = 'revoked' AND c.revoked_at <= $1`;
const COUNT_SURVIVING = `SELECT count(*)::int AS n FROM (${SURVIVING_IDS}) s`;
/** When the device was revoked or suspended, else when the certificate its session presented was. */
const PAGE_SURVIVING = `
  SELECT d.id AS device_id, d.connected_serial AS serial, d.status AS device_status, c.status AS certificate_status,
    CASE WHEN d.status IN ('revoked', 'suspended') THEN d.updated_at ELSE c.revoked_at END AS revoked_at,
    d.connected_since, d.peer_address, ARRAY[d.id] AS key
  FROM devices d LEFT JOIN certificates c ON c.serial = d.connected_serial
  WHERE d.id IN (SELECT s.id FROM (${SURVIVING_IDS}) s WHERE s.id > $2 ORDER BY s.id LIMIT $3)
  ORDER BY d.id`;

export const countSurvivingSessions = (q: Queryable, revokedBy: Date) => count(q, COUNT_SURVIVING, [revokedBy]);
export const survivingSessions = (q: Queryable, revokedBy: Date, page: AuditPageRequest) =>
  keysetPage(q, PAGE_SURVIVING, [revokedBy], page, [''], (r): SurvivingSession => ({
    deviceId: r.device_id,
    serial: r.serial,
    deviceStatus: r.device_status,
    certificateStatus: r.certificate_status,
    revokedAt: r.revoked_at,
    connectedSince: r.connected_since,
    peerAddress: r.peer_address,
  }));
