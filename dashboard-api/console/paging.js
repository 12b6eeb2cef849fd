import { query } from './api.js';
import { h, route } from './dom.js';

/**
 * Cursor paging: Next follows the API's nextCursor; Previous goes back along the cursors that led
 * here, remembered per page and filter set (a cursor is opaque, so there is no way to compute it).
 */
const trails = new Map();

function trailOf(parts, filters) {
  const place = route(...parts);
  const key = query(filters);
  let trail = trails.get(place);
  if (!trail || trail.key !== key) trails.set(place, (trail = { key, cursors: [] }));
  return trail;
}

/** Previous and Next buttons for a page of results fetched at `cursor`. */
export function pager(parts, filters, cursor, nextCursor) {
  const trail = trailOf(parts, filters);
  const go = (to) => (location.hash = route(...parts) + query({ ...filters, cursor: to }));
  return h(
    'nav',
    { class: 'pager', 'aria-label': 'Pages' },
    h(
      'button',
      {
        type: 'button',
        disabled: trail.cursors.length === 0,
        onclick: () => go(trail.cursors.pop()),
      },
      '← Previous',
    ),
    h(
      'button',
      {
        type: 'button',
        disabled: !nextCursor,
        onclick: () => {
          trail.cursors.push(cursor ?? '');
          go(nextCursor);
        },
      },
      'Next →',
    ),
  );
}

/** The filters a page was opened with, by name; absent ones are ''. */
export const filtersOf = (params, names) => Object.fromEntries(names.map((name) => [name, params.get(name) ?? '']));
