import { get, post, query } from './api.js';
import { confirmAction } from './confirm.js';
import { badge, facts, field, fill, h, link, problemBox, route, select, table, when } from './dom.js';
import { debounce, onEvent } from './live.js';
import { filtersOf, pager } from './paging.js';
import { heading, loadInto, section } from './page.js';

// ---- Fleet summary ------------------------------------------------------------------------------

const stat = (label, value, href) => h('div', { class: 'stat' }, h('span', { class: 'stat-value' }, (value ?? 0).toLocaleString()), href ? h('a', { href }, label) : h('span', {}, label));

function renderSummary(s) {
  const refusals = Object.entries(s.refusalsLastHour ?? {}).sort((a, b) => b[1] - a[1]);
  const day = (days) => new Date(Date.now() + days * 86_400_000).toISOString();
  return [
    h('p', { class: 'muted' }, 'As of ', when(s.at)),
    h(
      'div',
      { class: 'cards' },
      section(
        'Devices',
        h('div', { class: 'stats' }, [
          stat('online now', s.devices.online, route('devices') + '?online=true'),
          ...['active', 'pending', 'suspended', 'revoked'].map((status) => stat(status, s.devices.byStatus?.[status], route('devices') + `?status=${status}`)),
        ]),
        h('p', { class: 'muted' }, `${(s.devices.byKind?.device ?? 0).toLocaleString()} devices, ${(s.devices.byKind?.service ?? 0).toLocaleString()} services`),
      ),
      section(
        'Certificates expiring',
        h('div', { class: 'stats' }, [
          stat('within 7 days', s.certificates.expiringWithin7Days, route('expiry') + `?before=${encodeURIComponent(day(7))}`),
          stat('within 30 days', s.certificates.expiringWithin30Days, route('expiry') + `?before=${encodeURIComponent(day(30))}`),
        ]),
      ),
      section(
        'Today (UTC)',
        h('div', { class: 'stats' }, [stat('enrollments', s.today.enrollments), stat('renewals', s.today.renewals), stat('revocations', s.today.revocations)]),
      ),
      section(
        'Refusals in the last hour',
        table('Refusals by reason', [['Reason', ([reason]) => reason], ['Count', ([, n]) => String(n)]], refusals, 'No refusals in the last hour.'),
      ),
    ),
  ];
}

export async function summaryPage(main, _, __, ctx) {
  const body = h('div', { 'aria-live': 'polite' });
  main.append(heading('Fleet summary'), body);
  const load = () => loadInto(body, ctx, async () => renderSummary(await get('/v1/fleet/summary')));
  await load();
  return onEvent(debounce(load, 1000));
}

// ---- Device table -------------------------------------------------------------------------------

const MORE_FILTERS = ['kind', 'online', 'batch', 'profile', 'expiringBefore'];
const FILTERS = ['q', 'status', ...MORE_FILTERS];

const online = (device) => (device.connected ? badge('online', 'online') : badge('offline', 'offline'));

const DEVICE_COLUMNS = [
  ['Device', (d) => link(d.id, 'devices', d.id)],
  ['Status', (d) => badge(d.status)],
  ['Kind', (d) => d.kind],
  ['Connection', online],
  ['Last seen', (d) => when(d.lastSeenAt)],
  ['Certificate expires', (d) => when(d.certificateNotAfter)],
  ['Batch', (d) => d.batch ?? ''],
];

function filterForm(params) {
  const value = (name) => params.get(name) ?? '';
  const search = h('input', { type: 'search', name: 'q', value: value('q'), placeholder: 'id prefix or key=value', autocomplete: 'off' });
  const form = h(
    'form',
    {
      class: 'filters',
      role: 'search',
      onsubmit: (event) => {
        event.preventDefault();
        const data = new FormData(form);
        const chosen = Object.fromEntries(FILTERS.map((name) => [name, String(data.get(name) ?? '').trim()]));
        if (chosen.expiringBefore) chosen.expiringBefore = new Date(chosen.expiringBefore).toISOString();
        location.hash = route('devices') + query(chosen);
      },
    },
    field('Search', search),
    field('Status', select('status', [['', 'any'], ['active', 'active'], ['pending', 'pending'], ['suspended', 'suspended'], ['revoked', 'revoked']], value('status'))),
    h('button', { type: 'submit' }, 'Search'),
    // The rarer filters fold away, so a phone shows results without scrolling past a long form.
    h(
      'details',
      { class: 'more', open: MORE_FILTERS.some((name) => value(name) !== '') },
      h('summary', {}, 'More filters'),
      h(
        'div',
        { class: 'more-fields' },
        field('Kind', select('kind', [['', 'any'], ['device', 'device'], ['service', 'service']], value('kind'))),
        field('Connection', select('online', [['', 'any'], ['true', 'online'], ['false', 'offline']], value('online'))),
        field('Batch', h('input', { name: 'batch', value: value('batch'), autocomplete: 'off' })),
        field('Profile', h('input', { name: 'profile', value: value('profile'), autocomplete: 'off' })),
        field('Certificate expires before', h('input', { type: 'date', name: 'expiringBefore', value: value('expiringBefore').slice(0, 10) })),
      ),
    ),
  );
  return form;
}

export async function devicesPage(main, _, params, ctx) {
  const filters = filtersOf(params, FILTERS);
  const cursor = params.get('cursor') ?? '';
  const body = h('div', { 'aria-live': 'polite' });
  main.append(heading('Devices'), filterForm(params), body);

  const shown = new Set();
  const load = () => loadInto(body, ctx, async () => {
    const page = await get('/v1/devices' + query({ ...filters, limit: 25, cursor }));
    for (const d of page.devices) shown.add(d.id);
    return [table('Devices', DEVICE_COLUMNS, page.devices, 'No device matches these filters.'), pager(['devices'], filters, cursor, page.nextCursor)];
  });
  await load();
  // The rows on screen follow their devices' connects, disconnects and revocations.
  const refresh = debounce(load, 1000);
  return onEvent((event) => {
    if (shown.has(event.deviceId)) refresh();
  });
}

// ---- One device ---------------------------------------------------------------------------------

const REASONS = [
  ['keyCompromise', 'Key compromised'],
  ['cessationOfOperation', 'Decommissioned'],
  ['affiliationChanged', 'Changed owner'],
  ['superseded', 'Replaced by another device'],
  ['privilegeWithdrawn', 'Privilege withdrawn'],
  ['unspecified', 'Unspecified'],
];

/** The live session, from the contract's `session` or the device's presence fields. */
const sessionOf = (d) => d.session ?? { connected: d.connected, since: d.connectedSince, address: d.peerAddress, serial: null };

const CERTIFICATE_COLUMNS = [
  ['Serial', (c) => h('code', {}, c.serial)],
  ['Status', (c) => badge(c.status)],
  ['Valid from', (c) => when(c.notBefore)],
  ['Expires', (c) => when(c.notAfter)],
  ['Revoked', (c) => when(c.revokedAt)],
];

const EVENT_COLUMNS = [
  ['When', (e) => when(e.at)],
  ['Event', (e) => badge(e.kind)],
  ['Reason', (e) => e.reason ?? ''],
  ['Address', (e) => e.address ?? ''],
  ['Certificate', (e) => (e.serial ? h('code', {}, e.serial) : '')],
];

function actionsFor(device, ctx, act) {
  if (!ctx.can('devices')) return h('p', { class: 'muted' }, `Your role (${ctx.session.operator.role}) may read devices but not change them.`);
  if (device.kind === 'service' && !ctx.can('services')) return h('p', { class: 'muted' }, 'Service identities are revoked, suspended and resumed by admins only.');
  if (device.status === 'revoked') return h('p', { class: 'muted' }, 'This device is revoked: nothing more can be done with it.');
  return h(
    'div',
    { class: 'actions' },
    h('button', { type: 'button', class: 'danger', onclick: () => act.revoke() }, 'Revoke…'),
    device.status === 'suspended'
      ? h('button', { type: 'button', onclick: () => act.resume() }, 'Resume')
      : h('button', { type: 'button', class: 'secondary', onclick: () => act.suspend() }, 'Suspend…'),
  );
}

function renderDevice(device, ctx, act) {
  const live = sessionOf(device);
  const metadata = Object.entries(device.metadata ?? {});
  return [
    h('p', { class: 'device-state' }, badge(device.status), ' ', live.connected ? badge('online', 'online') : badge('offline', 'offline')),
    actionsFor(device, ctx, act),
    h(
      'div',
      { class: 'cards' },
      section(
        'Identity',
        facts([
          ['Kind', device.kind + (device.role ? ` (${device.role})` : '')],
          ['Batch', device.batch ?? '—'],
          ['Profile', device.profile ?? '—'],
          ['Registered', when(device.createdAt)],
          ['Changed', when(device.updatedAt)],
          ['Last seen', when(device.lastSeenAt)],
        ]),
      ),
      section(
        'Live session',
        facts([
          ['Connected', live.connected ? 'yes' : 'no'],
          ['Since', when(live.since)],
          [live.connected ? 'Address' : 'Last address', live.address ?? '—'],
          ['Certificate', live.serial ? h('code', {}, live.serial) : '—'],
        ]),
      ),
      section('Metadata', table('Metadata', [['Key', ([k]) => k], ['Value', ([, v]) => (typeof v === 'string' ? v : JSON.stringify(v))]], metadata, 'No metadata.')),
    ),
    section('Certificates', table('Certificates', CERTIFICATE_COLUMNS, device.certificates ?? [], 'No certificate issued yet.')),
  ];
}

export async function devicePage(main, id, _, ctx) {
  const status = h('div', { class: 'status', role: 'status' });
  const body = h('div');
  const events = h('div', { 'aria-live': 'polite' });
  main.append(h('p', { class: 'crumbs' }, link('Devices', 'devices')), heading(id), status, body, h('section', { 'aria-label': 'Recent events' }, h('h2', {}, 'Recent events'), events));

  const act = {
    async revoke() {
      const reason = select('reason', [['', 'Choose a reason…'], ...REASONS]);
      reason.required = true;
      const confirmed = await confirmAction({
        title: `Revoke ${id}?`,
        text: 'Every certificate of this device is revoked and its live sessions are closed at once. This cannot be undone: the device must be registered and enrolled again.',
        fields: [field('Reason', reason)],
        action: 'Revoke device',
      });
      if (!confirmed) return;
      await run(async () => {
        const result = await post(`/v1/devices/${encodeURIComponent(id)}/revoke`, { reason: reason.value });
        return `Revoked. ${result.revokedSerials.length} certificate(s) revoked; live sessions closed.`;
      });
    },
    async suspend() {
      const confirmed = await confirmAction({
        title: `Suspend ${id}?`,
        text: 'Its live sessions are closed and its certificates are put on hold until it is resumed.',
        action: 'Suspend device',
      });
      if (confirmed) await run(async () => (await post(`/v1/devices/${encodeURIComponent(id)}/suspend`), 'Suspended.'));
    },
    resume: () => run(async () => (await post(`/v1/devices/${encodeURIComponent(id)}/resume`), 'Resumed.')),
  };

  async function run(action) {
    fill(status);
    try {
      const message = await action();
      await loadDevice();
      fill(status, h('p', { class: 'done' }, message));
    } catch (error) {
      fill(status, problemBox(error));
    }
    main.querySelector('.actions button, h1')?.focus();
  }

  const loadDevice = () => loadInto(body, ctx, async () => renderDevice(await get(`/v1/devices/${encodeURIComponent(id)}`), ctx, act));
  const loadEvents = () =>
    loadInto(events, ctx, async () => {
      try {
        return table('Recent events', EVENT_COLUMNS, (await get(`/v1/devices/${encodeURIComponent(id)}/events?limit=20`)).events, 'No events recorded.');
      } catch (error) {
        // An unknown device or a malformed id: the device section says so, once.
        if (error.status === 404 || error.status === 400) return [];
        throw error;
      }
    });
  await Promise.all([loadDevice(), loadEvents()]);
  const refresh = debounce(() => Promise.all([loadDevice(), loadEvents()]), 300);
  return onEvent((event) => {
    if (event.deviceId === id) refresh();
  });
}
