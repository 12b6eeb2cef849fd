import type { Queryable } from '../db/transaction.js';
import { DEVICE_COLUMNS, DEVICE_ID_PATTERN, type Device, type DeviceStatus, type IdentityKind, toDevice } from './devices.js';
import { decodeCursor, invalidParameter, pageSize, toPage } from './page-cursor.js';

export const DEVICE_STATUSES: readonly DeviceStatus[] = ['pending', 'active', 'suspended', 'revoked'];
export const IDENTITY_KINDS: readonly IdentityKind[] = ['device', 'service'];

export interface DeviceListFilter {
  status?: DeviceStatus;
  kind?: IdentityKind;
  batch?: string;
  profile?: string;
  online?: boolean;
  /** Devices with an active certificate that ends before then. */
  expiringBefore?: Date;
  /** An id prefix, or `key=value`: a metadata value (as a string, or the number or boolean it spells). */
  q?: string;
  limit?: number;
  cursor?: string;
}

export interface ListedDevice extends Device {
  /** When the device's active certificate ends (the latest, if it holds more than one). */
  certificateNotAfter: Date | null;
}

/**
 * One statement for every combination of filters: an absent filter is a NULL parameter, and the
 * planner, which sees the values, drops its condition, so each page walks the index of the filter it
 * has, in id order (byte-wise, COLLATE "C"), from the cursor on.
 */
const DEVICE_PAGE = `
  SELECT ${DEVICE_COLUMNS},
    (SELECT max(c.not_after) FROM certificates c WHERE c.device_id = d.id AND c.status = 'active') AS certificate_not_after
  FROM devices d
  WHERE ($1::text IS NULL OR d.id COLLATE "C" > $1::text COLLATE "C")
    AND ($2::text IS NULL OR d.status = $2::text)
    AND ($3::text IS NULL OR d.kind = $3::text)
    AND ($4::text IS NULL OR d.batch = $4::text)
    AND ($5::text IS NULL OR d.profile = $5::text)
    AND ($6::boolean IS NULL OR d.connected = $6::boolean)
    AND ($7::text IS NULL OR (d.id COLLATE "C" >= $7::text COLLATE "C" AND d.id COLLATE "C" < $8::text COLLATE "C"))
    AND ($9::jsonb IS NULL OR d.metadata @> $9::jsonb OR d.metadata @> $10::jsonb)`;

const SELECT_DEVICE_PAGE = `${DEVICE_PAGE} ORDER BY d.id COLLATE "C" LIMIT $11`;

/**
 * With expiringBefore the certificate condition stands alone, outside any "parameter IS NULL OR", so
 * the planner can make it a semi-join and pick a side: walk devices in id order and probe each one's
 * active certificate when many match, or start from the certificates ending before then when few do.
 */
const SELECT_EXPIRING_DEVICE_PAGE = `${DEVICE_PAGE}
    AND EXISTS (SELECT 1 FROM certificates c WHERE c.device_id = d.id AND c.status = 'active' AND c.not_after < $12::timestamptz)
  ORDER BY d.id COLLATE "C" LIMIT $11`;

const DEVICE_LIST = 'devices';

/** A page of devices in id order, with the cursor of the next page (null on the last). */
export async function listDevices(q: Queryable, filter: DeviceListFilter): Promise<{ devices: ListedDevice[]; nextCursor: string | null }> {
  const limit = pageSize(filter.limit);
  const after = decodeCursor(DEVICE_LIST, filter.cursor, DEVICE_ID_PATTERN);
  const search = parseQuery(filter.q);
  const values = [
    after ?? null,
    filter.status ?? null,
    filter.kind ?? null,
    filter.batch ?? null,
    filter.profile ?? null,
    filter.online ?? null,
    search.prefix ?? null,
    search.prefix === undefined ? null : prefixEnd(search.prefix),
    search.metadata?.[0] ?? null,
    search.metadata?.[1] ?? null,
    limit + 1,
  ];
  const { rows } = filter.expiringBefore
    ? await q.query(SELECT_EXPIRING_DEVICE_PAGE, [...values, filter.expiringBefore])
    : await q.query(SELECT_DEVICE_PAGE, values);
  const page = toPage(rows, limit, toListedDevice, (r) => r.id, DEVICE_LIST);
  return { devices: page.items, nextCursor: page.nextCursor };
}

const toListedDevice = (r: Record<string, any>): ListedDevice => ({ ...toDevice(r), certificateNotAfter: r.certificate_not_after });

/** `key=value` is a metadata search (ids cannot hold '='); anything else an id prefix. */
function parseQuery(text: string | undefined): { prefix?: string; metadata?: [string, string] } {
  if (text === undefined || text === '') return {};
  const eq = text.indexOf('=');
  if (eq < 0) {
    if (!DEVICE_ID_PATTERN.test(text)) throw invalidParameter('q', 'is neither an id prefix (letters, digits and . _ : -) nor key=value');
    return { prefix: text };
  }
  const key = text.slice(0, eq);
  const value = text.slice(eq + 1);
  if (key.length === 0 || key.length > 64) throw invalidParameter('q', 'key=value needs a key of 1 to 64 characters');
  return { metadata: [JSON.stringify({ [key]: value }), JSON.stringify({ [key]: scalarOf(value) })] };
}

/** "42" also matches the number 42, "true" the boolean: metadata from CSV and JSON imports differ. */
function scalarOf(value: string): unknown {
  if (value === 'true' || value === 'false') return value === 'true';
  const n = Number(value);
  return value.trim() !== '' && Number.isFinite(n) ? n : value;
}

/** The first string after every one that starts with `prefix`, byte-wise. */
const prefixEnd = (prefix: string) => prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
