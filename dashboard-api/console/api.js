// Talks to the API with the session cookie the browser holds; the operator token itself never
// reaches this page's scripts after login.

let csrfToken = null;

/** A refusal from the API: its problem document's fields, or the status alone. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail ?? `the server answered ${status}`);
    this.status = status;
    this.title = problem?.title ?? (status === 0 ? 'Network error' : `HTTP ${status}`);
    this.detail = problem?.detail ?? this.message;
    this.code = problem?.code;
  }
}

/** Called when a request finds the session gone, so the app can show the login again. */
let onSessionEnded = () => {};
export const whenSessionEnds = (handler) => (onSessionEnded = handler);

const UNSAFE = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export async function request(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (UNSAFE.has(method) && csrfToken) headers['x-csrf-token'] = csrfToken;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin', cache: 'no-store' });
  } catch (error) {
    throw new ApiError(0, { detail: `the server could not be reached (${error.message})` });
  }
  if (res.status === 204) return null;
  const type = res.headers.get('content-type') ?? '';
  const parsed = type.includes('json') ? await res.json().catch(() => null) : null;
  if (!res.ok) {
    const error = new ApiError(res.status, parsed);
    if (res.status === 401 && path !== '/console/login') onSessionEnded(error);
    throw error;
  }
  return parsed;
}

export const get = (path) => request('GET', path);
export const post = (path, body) => request('POST', path, body);

/** A query string from the non-empty values. */
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== undefined && value !== null && value !== '') search.set(key, String(value));
  const text = search.toString();
  return text ? `?${text}` : '';
}

/** The logged-in operator, or null when there is no session. */
export async function currentSession() {
  try {
    const session = await get('/v1/session');
    csrfToken = session.csrfToken;
    return session;
  } catch (error) {
    if (error.status === 401) return null;
    throw error;
  }
}

export async function login(token) {
  await post('/console/login', { token });
  return currentSession();
}

export async function logout() {
  await post('/console/logout');
  csrfToken = null;
}

