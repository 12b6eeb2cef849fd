import { type Command, InvalidArgumentError, Option } from 'commander';
import type { FleetConfig } from '../core/config.js';
import type { Database } from '../core/db/database.js';
import { IsoTime } from '../core/http/schemas.js';
import { listCaGenerations } from '../core/pki/authority.js';
import {
  DEVICE_STATUSES,
  type DeviceListFilter,
  type DeviceStatus,
  eventsOfDevice,
  getDevice,
  IDENTITY_KINDS,
  type IdentityKind,
  listDevices,
  MAX_PAGE_SIZE,
} from '../core/registry/index.js';
import { FleetError } from '../core/errors.js';
import { cellOf, printResult, table } from './table.js';

type WithRegistry = <T>(run: (db: Database, config: FleetConfig) => Promise<T>) => Promise<T>;

const RECENT_EVENTS = 20;

const explain = (text: string) => process.stderr.write(text + '\n');

/** An existing command group (device, ca…) that these listings join. */
const group = (program: Command, name: string): Command => {
  const found = program.commands.find((c) => c.name() === name);
  if (!found) throw new Error(`no "${name}" command group to add listings to`);
  return found;
};

function isoTimeOption(text: string): Date {
  const parsed = IsoTime.safeParse(text);
  if (!parsed.success) throw new InvalidArgumentError('give an ISO 8601 date or time with offset, such as 2026-12-31 or 2026-12-31T12:00:00Z');
  return parsed.data;
}

function limitOption(text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > MAX_PAGE_SIZE) throw new InvalidArgumentError(`give a whole number from 1 to ${MAX_PAGE_SIZE}`);
  return n;
}

interface DeviceListOptions {
  status?: DeviceStatus;
  kind?: IdentityKind;
  batch?: string;
  profile?: string;
  online?: boolean;
  offline?: boolean;
  expiringBefore?: Date;
  q?: string;
  limit: number;
  cursor?: string;
  json?: boolean;
}

/** `fleet device list`, `fleet device show`, `fleet ca list`: what the registry and the CA hold, as tables or JSON. */
export function registerListCommands(program: Command, withRegistry: WithRegistry): void {
  const device = group(program, 'device');
  device
    .command('list')
    .description('list devices in id order, a page at a time; when there are more, the next page\'s --cursor is printed on stderr')
    .addOption(new Option('--status <status>', 'only devices in this state').choices(DEVICE_STATUSES))
    .addOption(new Option('--kind <kind>', 'devices or backend services').choices(IDENTITY_KINDS))
    .option('--batch <name>', 'only this factory batch')
    .option('--profile <profile>', 'only this hardware profile')
    .addOption(new Option('--online', 'only devices connected now').conflicts('offline'))
    .option('--offline', 'only devices not connected now')
    .option('--expiring-before <time>', 'only devices whose active certificate ends before then (2026-12-31 or 2026-12-31T12:00:00Z)', isoTimeOption)
    .option('--q <text>', 'an id prefix, or key=value to match a metadata value')
    .option('--limit <n>', `devices per page, 1 to ${MAX_PAGE_SIZE}`, limitOption, 50)
    .option('--cursor <cursor>', 'the next page, as the previous run printed it')
    .option('--json', 'print JSON ({ devices, nextCursor }) instead of a table')
    .action(async (options: DeviceListOptions) => {
      const { online, offline, json, ...rest } = options;
      const filter: DeviceListFilter = { ...rest, online: online ? true : offline ? false : undefined };
      const page = await withRegistry((db) => listDevices(db.pool, filter));
      printResult({ json }, page, () =>
        table(
          ['ID', 'STATUS', 'KIND', 'BATCH', 'PROFILE', 'ONLINE', 'LAST SEEN', 'CERTIFICATE ENDS'],
          page.devices.map((d) => [d.id, d.status, d.kind, d.batch, d.profile, d.connected ? 'yes' : 'no', d.lastSeenAt, d.certificateNotAfter]),
        ),
      );
      if (page.nextCursor) explain(`More devices: run again with --cursor ${page.nextCursor}`);
    });

  device
    .command('show')
    .description(`one device: its state, live session, certificates and its ${RECENT_EVENTS} latest events`)
    .argument('<id>', 'the device id')
    .option('--json', 'print JSON instead of text')
    .action(async (id: string, options: { json?: boolean }) => {
      const shown = await withRegistry(async (db) => {
        const found = await getDevice(db.pool, id);
        if (!found) throw new FleetError('device_not_found', 404, `no device ${id} is registered; list them with: fleet device list --q ${id.slice(0, 8)}`);
        return { ...found, events: await eventsOfDevice(db.pool, id, { limit: RECENT_EVENTS }) };
      });
      printResult(options, shown, () => deviceText(shown));
    });

  group(program, 'ca')
    .command('list')
    .description('the root and every issuing CA: validity, which one signs new certificates, which are trusted or retired')
    .option('--json', 'print JSON instead of a table')
    .action(async (options: { json?: boolean }) => {
      const generations = await withRegistry((db, config) => listCaGenerations(db.pool, config.dataDir));
      printResult(options, generations, () =>
        table(
          ['GENERATION', 'ROLE', 'STATE', 'SUBJECT', 'KEY ID', 'NOT BEFORE', 'NOT AFTER'],
          generations.map((g) => [g.role === 'root' ? 'root' : g.generation, g.role, g.state, g.subject, g.keyId, g.notBefore, g.notAfter]),
        ),
      );
    });
}

type ShownDevice = NonNullable<Awaited<ReturnType<typeof getDevice>>> & { events: Awaited<ReturnType<typeof eventsOfDevice>> };

function deviceText(d: ShownDevice): string {
  const fields: [string, unknown][] = [
    ['id', d.id],
    ['status', d.status],
    ['kind', d.role ? `${d.kind} (${d.role})` : d.kind],
    ['batch', d.batch],
    ['profile', d.profile],
    ['metadata', Object.keys(d.metadata).length ? d.metadata : null],
    ['registered', d.createdAt],
    ['last seen', d.lastSeenAt],
    ['session', d.session.connected ? `connected since ${cellOf(d.session.since)} from ${cellOf(d.session.address)}, certificate ${cellOf(d.session.serial)}` : 'not connected'],
  ];
  const width = Math.max(...fields.map(([k]) => k.length));
  const head = fields.map(([k, v]) => `${k.padEnd(width)}  ${cellOf(v)}`).join('\n');
  const certificates = d.certificates.length
    ? table(['SERIAL', 'STATUS', 'NOT BEFORE', 'NOT AFTER', 'REVOKED'], d.certificates.map((c) => [c.serial, c.status, c.notBefore, c.notAfter, c.revokedAt]))
    : 'none\n';
  const events = d.events.length
    ? table(['AT', 'EVENT', 'REASON', 'ADDRESS', 'SERIAL'], d.events.map((e) => [e.at, e.kind, e.reason, e.address, e.serial]))
    : 'none recorded\n';
  return `${head}\n\nCertificates\n${certificates}\nRecent events (newest first)\n${events}`;
}
