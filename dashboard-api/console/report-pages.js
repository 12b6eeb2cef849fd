import { get, query } from './api.js';
import { badge, field, h, link, route, table, when } from './dom.js';
import { debounce, onEvent } from './live.js';
import { heading, loadInto } from './page.js';
import { filtersOf, pager } from './paging.js';

const LIMIT = 50;

/** A filter form whose submit puts its values in the page's address, so a filtered view can be bookmarked and shared. */
function filterForm(parts, controls, toQuery) {
  const form = h(
    'form',
    {
      class: 'filters',
      onsubmit: (event) => {
        event.preventDefault();
        location.hash = route(...parts) + query(toQuery(new FormData(form)));
      },
    },
    controls,
    h('button', { type: 'submit' }, 'Show'),
  );
  return form;
}

/** A date-time input's local value as ISO, or '' when empty. */
const isoOf = (value) => (value ? new Date(String(value)).toISOString() : '');
/** An ISO date as a datetime-local input value, in local time. */
function localInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
}

// ---- Expiry report ------------------------------------------------------------------------------

export async function expiryPage(main, _, params, ctx) {
  const before = params.get('before') || new Date(Date.now() + 30 * 86_400_000).toISOString();
  const cursor = params.get('cursor') ?? '';
  const body = h('div');
  main.append(
    heading('Certificates expiring'),
    filterForm(['expiry'], field('Expiring before', h('input', { type: 'datetime-local', name: 'before', value: localInput(before), required: true })), (data) => ({
      before: isoOf(data.get('before')),
    })),
    body,
  );
  await loadInto(body, ctx, async () => {
    const page = await get('/v1/certificates' + query({ expiringBefore: before, status: 'active', limit: LIMIT, cursor }));
    return [
      table(
        'Certificates expiring',
        [
          ['Expires', (c) => when(c.notAfter)],
          ['Device', (c) => link(c.deviceId, 'devices', c.deviceId)],
          ['Serial', (c) => h('code', {}, c.serial)],
          ['Issuer', (c) => c.issuer],
        ],
        page.certificates,
        'No active certificate expires before then.',
      ),
      pager(['expiry'], { before }, cursor, page.nextCursor),
    ];
  });
}

// ---- Audits -------------------------------------------------------------------------------------

export async function auditsPage(main, _, __, ctx) {
  const body = h('div');
  main.append(heading('Audits'), h('p', { class: 'muted' }, 'Each check looks at the whole fleet now; a check with findings links to them.'), body);
  await loadInto(body, ctx, async () => {
    const result = await get('/v1/audits');
    return [
      h('p', { class: 'muted' }, 'As of ', when(result.at)),
      table(
        'Audit checks',
        [
          ['Check', (a) => link(a.title, 'audits', a.check)],
          ['Severity', (a) => badge(a.severity)],
          ['Result', (a) => (a.ok ? badge('ok', 'ok') : badge(`${a.findings} finding${a.findings === 1 ? '' : 's'}`, 'failing'))],
          ['What it checks', (a) => a.description],
        ],
        result.audits,
      ),
    ];
  });
}

/** A finding's fields beyond the ones every finding has, shown as key: value. */
const extraOf = (finding) =>
  Object.entries(finding)
    .filter(([key]) => !['deviceId', 'serial', 'detail'].includes(key))
    .map(([key, value]) => `${key}: ${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(', ');

export async function auditPage(main, check, params, ctx) {
  const cursor = params.get('cursor') ?? '';
  const days = params.get('days') ?? '';
  const title = heading(check);
  const body = h('div');
  main.append(h('p', { class: 'crumbs' }, link('Audits', 'audits')), title, body);
  await loadInto(body, ctx, async () => {
    const result = await get(`/v1/audits/${encodeURIComponent(check)}` + query({ days, limit: LIMIT, cursor }));
    title.textContent = result.title;
    return [
      h('p', {}, badge(result.severity), ' ', result.description),
      table(
        'Findings',
        [
          ['Device', (f) => (f.deviceId ? link(f.deviceId, 'devices', f.deviceId) : '—')],
          ['Certificate', (f) => (f.serial ? h('code', {}, f.serial) : '—')],
          ['Finding', (f) => f.detail],
          ['More', extraOf],
        ],
        result.findings,
        'No findings: this check passes.',
      ),
      pager(['audits', check], { days }, cursor, result.nextCursor),
    ];
  });
}

// ---- Audit log ----------------------------------------------------------------------------------

const LOG_FILTERS = ['actor', 'action', 'device', 'since', 'until'];

export async function auditLogPage(main, _, params, ctx) {
  const filters = filtersOf(params, LOG_FILTERS);
  const cursor = params.get('cursor') ?? '';
  const body = h('div', { 'aria-live': 'polite' });
  const text = (name, placeholder) => h('input', { name, value: filters[name], placeholder, autocomplete: 'off' });
  main.append(
    heading('Audit log'),
    filterForm(
      ['audit-log'],
      [
        field('Actor', text('actor', 'operator:… or cli:…')),
        field('Action', text('action', 'device.revoked')),
        field('Device', text('device', 'device id')),
        field('Since', h('input', { type: 'datetime-local', name: 'since', value: localInput(filters.since) })),
        field('Until', h('input', { type: 'datetime-local', name: 'until', value: localInput(filters.until) })),
      ],
      (data) => ({
        actor: String(data.get('actor') ?? '').trim(),
        action: String(data.get('action') ?? '').trim(),
        device: String(data.get('device') ?? '').trim(),
        since: isoOf(data.get('since')),
        until: isoOf(data.get('until')),
      }),
    ),
    body,
  );
  const load = () =>
    loadInto(body, ctx, async () => {
      const page = await get('/v1/audit-log' + query({ ...filters, limit: LIMIT, cursor }));
      return [
        table(
          'Audit log',
          [
            ['When', (e) => when(e.at)],
            ['Actor', (e) => e.actor],
            ['Action', (e) => h('code', {}, e.action)],
            ['Device', (e) => (e.deviceId ? link(e.deviceId, 'devices', e.deviceId) : '')],
            ['Details', (e) => (Object.keys(e.details ?? {}).length ? h('code', { class: 'details' }, JSON.stringify(e.details)) : '')],
          ],
          page.entries,
          'No entries match these filters.',
        ),
        pager(['audit-log'], filters, cursor, page.nextCursor),
      ];
    });
  await load();
  // New entries appear on the first page; a later page stays as it is while it is read.
  if (cursor) return undefined;
  const refresh = debounce(load, 1000);
  return onEvent(refresh);
}
