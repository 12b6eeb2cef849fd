import { z } from '@hono/zod-openapi';
import { parse } from 'csv-parse/sync';
import type { Context } from 'hono';
import { FleetError } from '../../core/errors.js';
import { MAX_BULK_DEVICES, type NewDevice } from '../../core/registry/index.js';
import { BatchName, DeviceId, Metadata, Profile } from './schemas.js';

/** 10,000 rows with metadata fit well inside this; the default limit for other routes is far lower. */
export const MAX_BULK_BODY_BYTES = 8 * 1024 * 1024;
const MAX_ROW_ERRORS = 100;

export const BulkRow = z.object({ id: DeviceId, profile: Profile.optional(), metadata: Metadata.optional() });
export const BulkRequest = z
  .object({
    batch: BatchName.optional(),
    profile: Profile.optional().openapi({ description: 'hardware profile for every row that names none' }),
    metadata: Metadata.optional().openapi({ description: 'metadata every row starts from; a row may add or override keys' }),
    devices: z.array(z.unknown()).min(1).max(MAX_BULK_DEVICES),
  })
  .openapi('BulkRegistration');

export interface BulkRegistration {
  batch?: string;
  devices: NewDevice[];
}

interface RowError {
  row: number;
  id?: string;
  message: string;
}

function rowsInvalid(errors: RowError[], total: number): FleetError {
  const shown = errors.slice(0, 3).map((e) => `row ${e.row}${e.id ? ` (${e.id})` : ''}: ${e.message}`);
  const more = errors.length > 3 ? `; and ${errors.length - 3} more` : '';
  return new FleetError('bulk_rows_invalid', 400, `${errors.length} of ${total} rows are invalid, so none was registered: ${shown.join('; ')}${more}`, {
    rows: errors.slice(0, MAX_ROW_ERRORS),
  });
}

/** Every row is checked before anything is written; one bad row refuses the request and each is named. */
function checkRows(rows: unknown[], defaults: { profile?: string; metadata?: Record<string, unknown> }): NewDevice[] {
  const errors: RowError[] = [];
  const devices: NewDevice[] = [];
  const seen = new Map<string, number>();
  rows.forEach((raw, index) => {
    const row = index + 1;
    const parsed = BulkRow.safeParse(raw);
    const id = typeof (raw as { id?: unknown })?.id === 'string' ? (raw as { id: string }).id : undefined;
    if (!parsed.success) {
      errors.push({ row, id, message: parsed.error.issues.map((i) => `${i.path.join('.') || 'row'}: ${i.message}`).join(', ') });
      return;
    }
    const first = seen.get(parsed.data.id);
    if (first !== undefined) {
      errors.push({ row, id: parsed.data.id, message: `device id repeats row ${first}` });
      return;
    }
    seen.set(parsed.data.id, row);
    devices.push({
      id: parsed.data.id,
      profile: parsed.data.profile ?? defaults.profile,
      metadata: { ...defaults.metadata, ...parsed.data.metadata },
    });
  });
  if (errors.length > 0) throw rowsInvalid(errors, rows.length);
  return devices;
}

function fromJson(body: unknown): BulkRegistration {
  const parsed = BulkRequest.safeParse(body);
  if (!parsed.success) {
    const detail = parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
    throw new FleetError('validation_failed', 400, detail);
  }
  const { batch, profile, metadata, devices } = parsed.data;
  return { batch, devices: checkRows(devices, { profile, metadata }) };
}

/**
 * CSV with a header row: an `id` column, an optional `profile` column, and any other columns as
 * metadata. The batch, and a profile for rows without one, come from the query string.
 */
export function bulkFromCsv(text: string, query: { batch?: string; profile?: string }): BulkRegistration {
  let records: Record<string, string>[];
  try {
    records = parse(text, { columns: true, skip_empty_lines: true, trim: true, bom: true, max_record_size: 64 * 1024 });
  } catch (error) {
    throw new FleetError('csv_invalid', 400, `the CSV does not parse: ${(error as Error).message}`);
  }
  if (records.length === 0) throw new FleetError('no_devices', 400, 'the CSV has a header but no device rows');
  if (!('id' in records[0]!)) throw new FleetError('csv_invalid', 400, 'the CSV header must have an "id" column');
  if (records.length > MAX_BULK_DEVICES) {
    throw new FleetError('too_many_devices', 400, `at most ${MAX_BULK_DEVICES} devices per request; this one has ${records.length}`);
  }
  const batch = query.batch === undefined ? undefined : BatchName.safeParse(query.batch);
  if (batch && !batch.success) throw new FleetError('batch_name_invalid', 400, `"${query.batch}" is not a valid batch name`);
  const rows = records.map(({ id, profile, ...metadata }) => ({
    id,
    ...(profile ? { profile } : {}),
    ...(Object.keys(metadata).length > 0 ? { metadata } : {}),
  }));
  return { batch: batch?.data, devices: checkRows(rows, { profile: query.profile }) };
}

export async function readBulkRegistration(c: Context): Promise<BulkRegistration> {
  const type = (c.req.header('content-type') ?? '').split(';')[0]!.trim().toLowerCase();
  if (type === 'text/csv') return bulkFromCsv(await c.req.text(), { batch: c.req.query('batch'), profile: c.req.query('profile') });
  if (type !== 'application/json') {
    throw new FleetError('unsupported_media_type', 415, 'send the devices as application/json or text/csv');
  }
  let body: unknown;
  try {
    body = await c.req.json();
  } catch {
    throw new FleetError('request_malformed', 400, 'the body is not valid JSON');
  }
  return fromJson(body);
}

/** CSV out for CSV-minded factory scripts: one `id,enrollment_token` line per device. */
export const tokensAsCsv = (devices: { id: string; enrollmentToken: string }[]): string =>
  'id,enrollment_token\n' + devices.map((d) => `${d.id},${d.enrollmentToken}`).join('\n') + '\n';
