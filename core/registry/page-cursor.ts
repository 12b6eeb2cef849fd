import { FleetError } from '../errors.js';

/** The most rows one page of any list may hold. */
export const MAX_PAGE_SIZE = 500;

/**
 * A list's cursor is the key of the last row of the page before, wrapped so that clients treat it as
 * opaque: what it holds may change, and a cursor made for one list is refused by another.
 */
export function encodeCursor(list: string, key: string): string {
  return Buffer.from(`${list}:${key}`, 'utf8').toString('base64url');
}

/** The key inside a cursor of `list`, or a 400 naming the parameter. */
export function decodeCursor(list: string, cursor: string | undefined, keyPattern: RegExp): string | undefined {
  if (cursor === undefined) return undefined;
  const text = /^[A-Za-z0-9_-]{1,400}$/.test(cursor) ? Buffer.from(cursor, 'base64url').toString('utf8') : '';
  const key = text.startsWith(`${list}:`) ? text.slice(list.length + 1) : '';
  if (!keyPattern.test(key)) throw invalidParameter('cursor', 'is not a cursor of this list: pass the nextCursor of the previous page as it is');
  return key;
}

/** A filter or paging parameter the caller got wrong: 400, with the parameter named. */
export const invalidParameter = (parameter: string, problem: string) =>
  new FleetError('validation_failed', 400, `${parameter}: ${problem}`, { parameter });

export function pageSize(limit: number | undefined, fallback = 50, max = MAX_PAGE_SIZE): number {
  if (limit === undefined) return fallback;
  if (!Number.isInteger(limit) || limit < 1 || limit > max) throw invalidParameter('limit', `must be a whole number from 1 to ${max}`);
  return limit;
}

/** Rows are read one past the page: that one, when there, proves there is a next page. */
export function toPage<R, T>(rows: R[], limit: number, map: (row: R) => T, keyOf: (row: R) => string, list: string) {
  const more = rows.length > limit;
  const page = more ? rows.slice(0, limit) : rows;
  const last = page.at(-1);
  return { items: page.map(map), nextCursor: more && last !== undefined ? encodeCursor(list, keyOf(last)) : null };
}
