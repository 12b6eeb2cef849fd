import { type Command, InvalidArgumentError } from 'commander';
import { logTo } from '../core/log.js';
import {
  DEVICE_EVENT_KINDS,
  type DeviceEvent,
  type DeviceEventFilter,
  type DeviceEventKind,
  deviceEventsSince,
  followDeviceEvents,
  latestDeviceEventId,
  recentDeviceEvents,
} from '../core/registry/index.js';
import { createScheduler } from '../core/scheduler.js';
import type { WithRegistry } from './commands.js';
import { cellOf, printResult, table } from './table.js';

interface EventsOptions {
  follow?: boolean;
  device?: string;
  kinds?: DeviceEventKind[];
  since?: number;
  limit: number;
  json?: boolean;
}

const HEADER = ['ID', 'AT', 'KIND', 'DEVICE', 'SERIAL', 'ADDRESS', 'REASON'];
const cells = (e: DeviceEvent) => [e.id, e.at, e.kind, e.deviceId, e.serial, e.address, e.reason];

/** One event on one line as it arrives: the table's columns, padded to fixed widths. */
const line = (e: DeviceEvent) => {
  const [id, at, kind, ...rest] = cells(e).map(cellOf);
  return [id!.padStart(8), at, kind!.padEnd(12), ...rest].join('  ');
};

function kindsOption(text: string): DeviceEventKind[] {
  const kinds = text.split(',').map((k) => k.trim());
  const unknown = kinds.filter((k) => !(DEVICE_EVENT_KINDS as readonly string[]).includes(k));
  if (unknown.length > 0) throw new InvalidArgumentError(`unknown kind ${unknown.join(', ')}; the kinds are ${DEVICE_EVENT_KINDS.join(', ')}`);
  return kinds as DeviceEventKind[];
}

const wholeNumber = (what: string, min: number) => (text: string) => {
  if (!/^\d{1,15}$/.test(text) || Number(text) < min) throw new InvalidArgumentError(`give ${what}`);
  return Number(text);
};

/** `fleet events`: what happened to devices, from the registry, and with --follow as it happens. */
export function registerEventCommands(program: Command, withRegistry: WithRegistry): void {
  program
    .command('events')
    .description('device events (connects, disconnects, refusals, enrollments, renewals, revocations, CA changes), oldest first; --follow keeps printing new ones until Ctrl-C')
    .option('-f, --follow', 'keep printing events as they are written, one line each, until Ctrl-C')
    .option('--device <id>', "only this device's events")
    .option('--kinds <kinds>', `only these kinds, comma-separated (${DEVICE_EVENT_KINDS.join(', ')})`, kindsOption)
    .option('--since <id>', 'every event after this event id, rather than the latest few', wholeNumber('an event id (a whole number)', 0))
    .option('--limit <n>', 'without --since: how many of the latest events to show', wholeNumber('a number of events, 1 or more', 1), 20)
    .option('--json', 'JSON for scripts: an array, or with --follow one object per line')
    .addHelpText('after', '\nExamples:\n  fleet events --device sensor-0001\n  fleet events --follow --kinds refused,disconnected --json')
    .action(async (options: EventsOptions) => {
      const filter: DeviceEventFilter = { deviceId: options.device, kinds: options.kinds };
      await withRegistry(async (db) => {
        const latest = await latestDeviceEventId(db.pool);
        const backlog: DeviceEvent[] = [];
        if (options.since !== undefined) {
          // Following reads these itself, from the same id.
          if (!options.follow) for await (const event of deviceEventsSince(db.pool, options.since, filter)) backlog.push(event);
        } else {
          backlog.push(...(await recentDeviceEvents(db.pool, filter, options.limit)).reverse());
        }
        if (!options.follow) {
          return printResult(options, backlog.map((e) => ({ ...e, at: e.at.toISOString() })), () => table(HEADER, backlog.map(cells)));
        }
        const print = (e: DeviceEvent) => process.stdout.write((options.json ? JSON.stringify({ ...e, at: e.at.toISOString() }) : line(e)) + '\n');
        backlog.forEach(print);
        const after = options.since ?? Math.max(latest, backlog.at(-1)?.id ?? 0);
        await follow(db, filter, after, print);
      });
    });
}

/** Prints every event after `after` as it is written, until SIGINT or SIGTERM. */
async function follow(db: Parameters<Parameters<WithRegistry>[0]>[0], filter: DeviceEventFilter, after: number, print: (e: DeviceEvent) => void): Promise<void> {
  const log = logTo(2, process.env.LOG_LEVEL ?? 'warn');
  const feed = followDeviceEvents({ connection: { ...db.changeFeedConnection, application_name: 'fleet events' }, pool: db.pool, scheduler: createScheduler(), log });
  let last = after;
  const subscribe = () =>
    feed.subscribe({
      after: last,
      filter,
      deliver(event) {
        last = event.id;
        print(event);
      },
      // Fell behind or lost a read: go on from the last event printed.
      ended: (why) => why !== 'closed' && subscribe(),
    });
  subscribe();
  // The feed's own timers do not hold the process; waiting for Ctrl-C does.
  const waiting = setInterval(() => undefined, 1 << 30);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  clearInterval(waiting);
  await feed.close();
}
