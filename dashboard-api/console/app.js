import { currentSession, login, logout, whenSessionEnds } from './api.js';
import { field, fill, h, problemBox } from './dom.js';
import { startLive, stopLive } from './live.js';
import { devicePage, devicesPage, summaryPage } from './fleet-pages.js';
import { auditLogPage, auditPage, auditsPage, expiryPage } from './report-pages.js';

const main = document.querySelector('main');
const header = document.querySelector('header.top');

/** What each role may do, as the API decides it (core/http/operator-auth.ts); the page only hides what would be refused. */
const GRANTS = { viewer: ['read'], operator: ['read', 'devices'], admin: ['read', 'devices', 'services', 'tokens'] };

let session = null;
let leavePage = null;
let pageNumber = 0;

function parseHash() {
  const url = new URL(location.hash.slice(1) || '/', 'https://console.invalid');
  const parts = url.pathname.split('/').filter(Boolean).map((p) => decodeURIComponent(p));
  return { parts, params: url.searchParams };
}

const PAGES = [
  [(p) => p.length === 0, summaryPage],
  [(p) => p.length === 1 && p[0] === 'devices', devicesPage],
  [(p) => p.length === 2 && p[0] === 'devices', devicePage],
  [(p) => p.length === 1 && p[0] === 'expiry', expiryPage],
  [(p) => p.length === 1 && p[0] === 'audits', auditsPage],
  [(p) => p.length === 2 && p[0] === 'audits', auditPage],
  [(p) => p.length === 1 && p[0] === 'audit-log', auditLogPage],
];

async function showPage(moveFocus) {
  leavePage?.();
  leavePage = null;
  if (!session) return;
  const number = ++pageNumber;
  const { parts, params } = parseHash();
  const page = PAGES.find(([matches]) => matches(parts))?.[1];
  markCurrentLink(parts[0] ?? '');
  const ctx = {
    session,
    can: (permission) => GRANTS[session.operator.role]?.includes(permission) ?? false,
    /** False once the operator went to another page: late answers are dropped. */
    current: () => number === pageNumber,
  };
  fill(main);
  if (!page) {
    fill(main, h('h1', { tabindex: '-1' }, 'No such page'), h('p', {}, h('a', { href: '#/' }, 'Back to the summary')));
  } else {
    try {
      leavePage = (await page(main, parts[1], params, ctx)) ?? null;
    } catch (error) {
      if (number === pageNumber) main.append(problemBox(error));
    }
  }
  if (moveFocus && number === pageNumber) (main.querySelector('h1') ?? main).focus();
}

function markCurrentLink(section) {
  for (const a of header.querySelectorAll('nav a')) {
    const target = a.getAttribute('href').slice(2);
    if (target === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

const LIVE_TEXT = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', off: 'Live updates unavailable' };

function showApp() {
  header.hidden = false;
  fill(header.querySelector('.operator'), `${session.operator.name} (${session.operator.role})`);
  const live = header.querySelector('.live');
  startLive((state) => {
    live.textContent = LIVE_TEXT[state];
    live.title = LIVE_TEXT[state];
    live.dataset.state = state;
  });
  showPage(false);
}

function showLogin(message) {
  session = null;
  stopLive();
  leavePage?.();
  leavePage = null;
  header.hidden = true;
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'token-help' });
  const status = h('div', { 'aria-live': 'polite' }, message ? problemBox(message) : null);
  const form = h(
    'form',
    {
      class: 'login',
      onsubmit: async (event) => {
        event.preventDefault();
        const token = input.value.trim();
        input.value = '';
        fill(status);
        try {
          session = await login(token);
          showApp();
        } catch (error) {
          fill(status, problemBox(error));
          input.focus();
        }
      },
    },
    h('h1', { tabindex: '-1' }, 'fleet-auth console'),
    field('Operator token', input),
    h('p', { id: 'token-help', class: 'muted' }, 'Paste a token from ', h('code', {}, 'fleet token create'), '. It is exchanged for a session cookie and not kept by this page.'),
    h('button', { type: 'submit' }, 'Log in'),
    status,
  );
  fill(main, form);
  input.focus();
}

whenSessionEnds((error) => showLogin(error));
window.addEventListener('hashchange', () => showPage(true));
header.querySelector('.logout').addEventListener('click', async () => {
  try {
    await logout();
  } finally {
    showLogin();
  }
});

async function boot() {
  try {
    session = await currentSession();
  } catch (error) {
    fill(main, problemBox(error));
    return;
  }
  if (session) showApp();
  else showLogin();
}

boot();
