import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { recordDeviceEvents, recordPresence, registerDevices } from '../core/registry/index.js';
import { cliBesideFleet } from './support/cli.js';
import { startTestFleet } from './support/fleet.js';

/*
 * The listing commands as an operator runs them beside a fleet: tables for people, --json for
 * scripts, paging by the cursor printed on stderr, and never a secret.
 */

const { fleet, ok, json, fleetOf } = cliBesideFleet(() => startTestFleet());

describe('fleet device list', () => {
  test('pages through every device exactly once, following the cursor it prints on stderr', async () => {
    const ids = Array.from({ length: 7 }, (_, i) => `cli-page-${i}`);
    await registerDevices(fleetOf().fleet.db.pool, { devices: ids.map((id) => ({ id })), actor: 'test', tokenTtlMs: 86_400_000, now: new Date() });
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let pages = 0; pages < 10; pages++) {
      const res = await ok('device', 'list', '--q', 'cli-page-', '--limit', '4', ...(cursor ? ['--cursor', cursor] : []));
      const rows = res.stdout.trimEnd().split('\n');
      assert.match(rows[0]!, /^ID\s+STATUS\s+KIND\s+BATCH\s+PROFILE\s+ONLINE\s+LAST SEEN\s+CERTIFICATE ENDS$/);
      seen.push(...rows.slice(1).map((r) => r.split(/\s+/)[0]!));
      cursor = /--cursor (\S+)/.exec(res.stderr)?.[1];
      if (!cursor) break;
    }
    assert.deepEqual(seen, ids);
  });

  test('filters by status, metadata and online, and --json gives the list and its cursor', async () => {
    await registerDevices(fleetOf().fleet.db.pool, {
      devices: [{ id: 'cli-f-1', metadata: { site: 'north' } }, { id: 'cli-f-2', metadata: { site: 'south' } }],
      batch: 'cli-batch',
      actor: 'test',
      tokenTtlMs: 86_400_000,
      now: new Date(),
    });
    const north = await json('device', 'list', '--q', 'site=north');
    assert.deepEqual(north.devices.map((d: any) => d.id), ['cli-f-1']);
    assert.equal(north.nextCursor, null);
    const batch = await json('device', 'list', '--batch', 'cli-batch', '--status', 'pending', '--limit', '1');
    assert.deepEqual(batch.devices.map((d: any) => d.id), ['cli-f-1']);
    assert.ok(batch.nextCursor, 'a cursor for the second device');

    // Presence as the broker records it (the API tests connect over MQTT for real).
    await recordPresence(fleetOf().fleet.db.pool, fleetOf().config.brokerNodeId, [{ deviceId: 'cli-f-2', connected: true, at: new Date(), peerAddress: '192.0.2.9', serial: null }]);
    assert.deepEqual((await json('device', 'list', '--q', 'cli-', '--online')).devices.map((d: any) => d.id), ['cli-f-2']);
  });

  test('a bad filter is refused with what to give instead', async () => {
    const status = await fleet('device', 'list', '--status', 'sleeping');
    assert.notEqual(status.code, 0);
    assert.match(status.stderr, /Allowed choices are pending, active, suspended, revoked/);
    const when = await fleet('device', 'list', '--expiring-before', 'next week', '--limit', '0');
    assert.notEqual(when.code, 0);
    assert.match(when.stderr, /ISO 8601/);
    const q = await fleet('device', 'list', '--q', 'has space');
    assert.equal(q.code, 1);
    assert.match(q.stderr, /q: is neither an id prefix/);
    const cursor = await fleet('device', 'list', '--cursor', 'nonsense');
    assert.equal(cursor.code, 1);
    assert.match(cursor.stderr, /cursor/);
  });
});

describe('fleet device show', () => {
  test('shows the device, its certificates, session and recent events, as text and JSON', async () => {
    const device = await fleetOf().enroll('cli-show');
    await recordDeviceEvents(fleetOf().fleet.db.pool, [
      { at: new Date(Date.now() - 60_000), kind: 'connected', deviceId: 'cli-show', address: '192.0.2.7' },
      { at: new Date(), kind: 'disconnected', deviceId: 'cli-show', reason: 'keepalive_timeout' },
    ]);
    const text = (await ok('device', 'show', 'cli-show')).stdout;
    assert.match(text, /^id\s+cli-show$/m);
    assert.match(text, /^status\s+active$/m);
    assert.match(text, /^session\s+not connected$/m);
    assert.ok(text.includes(device.serial), 'the certificate is listed');
    const events = text.slice(text.indexOf('Recent events')).split('\n').slice(2, 4).map((line) => line.split(/\s+/).slice(1, 3));
    assert.deepEqual(events, [['disconnected', 'keepalive_timeout'], ['connected', '-']], 'newest first, with the reason');

    const shown = await json('device', 'show', 'cli-show');
    assert.equal(shown.certificates[0].serial, device.serial);
    assert.deepEqual(shown.session, { connected: false, since: null, address: null, serial: null });
    assert.deepEqual(shown.events.map((e: any) => e.kind).slice(0, 2), ['disconnected', 'connected']);
    assert.doesNotMatch(JSON.stringify(shown), /PRIVATE KEY|fleet_enroll_|fleet_op_|token_?hash/i);

    const missing = await fleet('device', 'show', 'nobody-here');
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no device nobody-here is registered; list them with: fleet device list/);
  });
});
