// Every value from the API is attacker-controlled (device ids, metadata, addresses, reasons): it
// reaches the page only as text nodes and attribute values, never as markup.

/** An element with attributes, listeners (on…) and children; strings become text nodes. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A link inside the console; the path's parts are encoded, so an id never changes the route. */
export const route = (...parts) => '#/' + parts.map((p) => encodeURIComponent(p)).join('/');
export const link = (text, ...parts) => h('a', { href: route(...parts) }, text);

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

/** A date as a <time> element: local time to read, ISO in the tooltip and the datetime attribute. */
export function when(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return h('time', { datetime: date.toISOString(), title: date.toISOString() }, dateFormat.format(date));
}

export const badge = (text, kind = text) => h('span', { class: `badge badge-${String(kind).replace(/[^a-z_]/g, '')}` }, text);

/**
 * A table that scrolls on its own on a narrow screen. `columns` are [heading, (row) => cell];
 * `caption` names it for screen readers.
 */
export function table(caption, columns, rows, empty = 'Nothing to show.') {
  if (rows.length === 0) return h('p', { class: 'empty' }, empty);
  return h(
    'div',
    { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption },
    h(
      'table',
      {},
      h('caption', { class: 'visually-hidden' }, caption),
      h('thead', {}, h('tr', {}, columns.map(([heading]) => h('th', { scope: 'col' }, heading)))),
      // data-label: on a phone each row becomes a card, its cells labelled with their column.
      h('tbody', {}, rows.map((row) => h('tr', {}, columns.map(([heading, cell]) => h('td', { 'data-label': heading }, cell(row)))))),
    ),
  );
}

/** A definition list of label → value pairs. */
export const facts = (pairs) => h('dl', { class: 'facts' }, pairs.map(([label, value]) => [h('dt', {}, label), h('dd', {}, value)]));

/** A problem (application/problem+json) or any other failure, readable. */
export function problemBox(error) {
  const title = error.status ? `${error.title ?? 'Error'} (${error.status})` : 'The request failed';
  return h('div', { class: 'problem', role: 'alert' }, h('strong', {}, title), h('p', {}, error.detail ?? error.message ?? String(error)), error.code ? h('p', { class: 'muted' }, `code: ${error.code}`) : null);
}

/** A labelled form field. */
export function field(label, control) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), control);
}

export function select(name, options, value) {
  return h(
    'select',
    { name },
    options.map(([optionValue, text]) => h('option', { value: optionValue, selected: optionValue === (value ?? '') }, text)),
  );
}
