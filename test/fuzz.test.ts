import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { FleetError } from '../core/errors.js';
import { subtle, x509 } from '../core/pki/x509.js';
import { createOperatorToken, registerDevice } from '../core/registry/index.js';
import { parseCsr, verifyCsrSignature } from '../provisioning/csr.js';
import { checkKey, checkSubject, defaultPolicy } from '../provisioning/policy.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';
import type { HttpResult } from './support/http.js';

/**
 * Property tests: random and mutated input against the parsers, through a real running fleet. Runs
 * are seeded so a failure replays: fast-check's failure message carries the seed and the shrunk
 * input, and FUZZ_SEED=<seed> reruns it. FUZZ_SEED and FUZZ_RUNS also serve a longer hunt.
 */
const SEED = Number(process.env.FUZZ_SEED ?? 7_203_117);
const HTTP_RUNS = Number(process.env.FUZZ_RUNS ?? 300);
const UNIT_RUNS = HTTP_RUNS * 5;
const settings = (numRuns: number) => ({ seed: SEED, numRuns });

/** Every code a refusal may carry, with its status; internal_error is deliberately not one of them. */
const KNOWN_CODES: Record<string, number> = {
  csr_invalid: 400,
  csr_signature_invalid: 400,
  key_not_allowed: 400,
  subject_mismatch: 400,
  token_unknown: 401,
  token_used: 409,
  token_expired: 401,
  device_revoked: 403,
  device_exists: 409,
  device_id_invalid: 400,
  validation_failed: 400,
  request_malformed: 400,
  body_too_large: 413,
  unsupported_media_type: 415,
  unauthorized: 401,
  forbidden: 403,
};

const TABLES = ['certificates', 'audit_log', 'devices', 'enrollment_tokens'] as const;
type RowCounts = Record<(typeof TABLES)[number], number>;

let t: TestFleet;
/** CSRs for fuzz-a: one with an allowed key (P-256), one without (P-521). */
let csrDer: Buffer;
let p521CsrDer: Buffer;
/**
 * Enrollment tokens whose refusals happen inside the registry transaction, once the CSR passed its
 * own checks: the one for fuzz-a (which a good CSR redeems once, then token_used), and ones for
 * another device (subject_mismatch), an expired one and a revoked device's.
 */
const tokens = { a: '', otherDevice: '', expired: '', revoked: '' };
let viewerToken: string;
/** What the properties saw, by route: shows the generators reach past the first checks. */
const outcomes = new Map<string, Map<string, number>>();

before(async () => {
  t = await startTestFleet();
  tokens.a = await t.register('fuzz-a');
  tokens.otherDevice = await t.register('fuzz-b');
  const longAgo = new Date(Date.now() - 30 * 86_400_000);
  tokens.expired = (await registerDevice(t.fleet.db.pool, { deviceId: 'fuzz-expired', actor: 'test', tokenTtlMs: 86_400_000, now: longAgo })).enrollmentToken;
  tokens.revoked = await t.register('fuzz-revoked');
  assert.equal((await t.api('POST', '/v1/devices/fuzz-revoked/revoke', { token: t.adminToken })).status, 200);
  csrDer = Buffer.from((await createDeviceIdentity('fuzz-a')).csrBase64, 'base64');
  p521CsrDer = await p521Csr('fuzz-a');
  viewerToken = (await createOperatorToken(t.fleet.db.pool, { name: 'fuzz', role: 'viewer', actor: 'test', now: new Date() })).token;
});
after(() => t?.close());

async function p521Csr(deviceId: string): Promise<Buffer> {
  const algorithm = { name: 'ECDSA', namedCurve: 'P-521' };
  const keys = (await subtle.generateKey(algorithm, true, ['sign', 'verify'])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: `CN=${deviceId}`, keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-512' } });
  return Buffer.from(csr.rawData);
}

function count(route: string, res: HttpResult): void {
  const outcome = `${res.status} ${succeeded(res) ? 'ok' : res.json?.code}`;
  const seen = outcomes.get(route) ?? new Map<string, number>();
  seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
  outcomes.set(route, seen);
}

function assertReached(route: string, codes: string[]): void {
  const seen = [...(outcomes.get(route)?.keys() ?? [])].map((outcome) => outcome.split(' ')[1]);
  for (const code of codes) {
    assert.ok(seen.includes(code), `${route}: the generators never reached ${code} (seed ${SEED}, ${HTTP_RUNS} runs); saw ${seen.join(', ')}`);
  }
}

async function rowCounts(): Promise<RowCounts> {
  const columns = TABLES.map((table) => `(SELECT count(*)::int FROM ${table}) AS ${table}`).join(', ');
  const { rows } = await t.fleet.db.pool.query(`SELECT ${columns}`);
  return rows[0];
}

const succeeded = (res: HttpResult) => res.status >= 200 && res.status < 300;

/** No 5xx, and every refusal is a problem document with a known code that goes with its status. */
function assertWellRefused(res: HttpResult): void {
  assert.ok(res.status >= 200 && res.status < 500, `status ${res.status}: ${res.text.slice(0, 300)}`);
  if (succeeded(res)) return;
  assert.equal(res.headers['content-type'], 'application/problem+json', `status ${res.status}: ${res.text.slice(0, 300)}`);
  const code = res.json?.code;
  assert.ok(Object.hasOwn(KNOWN_CODES, code), `unknown problem code in ${res.text.slice(0, 300)}`);
  assert.equal(res.status, KNOWN_CODES[code], `${code} came with status ${res.status}: ${res.text.slice(0, 300)}`);
  assert.equal(res.json.status, res.status);
  assert.equal(res.json.type, `urn:fleet-auth:problem:${code}`);
}

/**
 * Sends one request and checks what it did to the registry: a refusal writes nothing; a success
 * writes exactly the rows `added` says, or nothing at all when it answered a retry (the same token
 * and CSR again) with the certificate issued before. Never part of them.
 */
async function sendChecked(route: string, send: () => Promise<HttpResult>, added: Partial<RowCounts>): Promise<HttpResult> {
  const before = await rowCounts();
  const res = await send();
  count(route, res);
  assertWellRefused(res);
  const after = await rowCounts();
  const unchanged = before;
  const written = Object.fromEntries(TABLES.map((table) => [table, before[table] + (added[table] ?? 0)])) as RowCounts;
  if (!succeeded(res)) assert.deepEqual(after, unchanged, `a refusal wrote rows: ${res.status} ${res.text.slice(0, 200)}`);
  // 201 Created is always a new certificate or device: it must have its rows.
  else if (res.status === 201) assert.deepEqual(after, written, `created without its rows: ${res.text.slice(0, 200)}`);
  else assert.ok(isDeepStrictEqual(after, written) || isDeepStrictEqual(after, unchanged), `a partial write after ${res.status}: ${JSON.stringify({ before, after })}`);
  return res;
}

// ---- arbitraries -------------------------------------------------------------------------------

/** Characters Node's HTTP client accepts in a header value. */
const headerText = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), maxLength: 80 });
const anyText = fc.oneof(fc.string(), fc.string({ unit: 'binary', maxLength: 300 }), fc.string({ unit: 'grapheme-ascii', maxLength: 300 }));

/**
 * Byte flips, truncations and insertions anywhere, and, since parsers break on structure far more
 * than on content, new tag or length bytes for one of the DER elements.
 */
type Mutation =
  | { kind: 'flip'; at: number; mask: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; at: number; bytes: Uint8Array }
  | { kind: 'retag' | 'relength'; element: number; value: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constantFrom('retag' as const, 'relength' as const), element: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
);

/** Where each DER element's tag byte is, walking into constructed ones; stops where the structure breaks. */
function elementOffsets(der: Uint8Array): number[] {
  const offsets: number[] = [];
  const walk = (start: number, end: number): void => {
    for (let at = start; at + 1 < end; ) {
      offsets.push(at);
      let length = der[at + 1]!;
      let content = at + 2;
      if (length & 0x80) {
        const octets = length & 0x7f;
        length = 0;
        for (let i = 0; i < octets; i++) length = length * 256 + (der[content + i] ?? 0);
        content += octets;
      }
      if (content + length > end) return;
      if (der[at]! & 0x20) walk(content, content + length);
      at = content + length;
    }
  };
  walk(0, der.length);
  return offsets;
}

function mutate(der: Buffer, mutations: Mutation[]): Buffer {
  let bytes = Buffer.from(der);
  const position = (at: number, past = 0) => (bytes.length === 0 ? 0 : at % (bytes.length + past));
  for (const m of mutations) {
    switch (m.kind) {
      case 'flip':
        if (bytes.length > 0) bytes[position(m.at)]! ^= m.mask;
        break;
      case 'truncate':
        bytes = bytes.subarray(0, position(m.at, 1));
        break;
      case 'insert': {
        const at = position(m.at, 1);
        bytes = Buffer.concat([bytes.subarray(0, at), m.bytes, bytes.subarray(at)]);
        break;
      }
      case 'retag':
      case 'relength': {
        const offsets = elementOffsets(bytes);
        if (offsets.length === 0) break;
        const at = offsets[m.element % offsets.length]! + (m.kind === 'relength' ? 1 : 0);
        if (at < bytes.length) bytes[at] = m.value;
      }
    }
  }
  return bytes;
}

const baseCsr = fc.oneof({ weight: 3, arbitrary: fc.constant('P-256') }, fc.constant('P-521')).map((curve) =>
  curve === 'P-256' ? csrDer : p521CsrDer,
);

/** A valid CSR after one to four mutations (a few leave it intact). */
const mutatedCsr = fc.tuple(baseCsr, fc.array(mutation, { minLength: 1, maxLength: 4 })).map(([der, mutations]) => mutate(der, mutations));

/** Intact CSRs half the time, so enough requests get past the CSR checks to the token and the transaction. */
const csrBytes = fc.oneof(mutatedCsr, baseCsr);

type CsrEncoding = 'pem' | 'base64' | 'raw';
const encoding = fc.oneof({ weight: 2, arbitrary: fc.constantFrom<CsrEncoding>('pem', 'base64') }, fc.constant<CsrEncoding>('raw'));
const encodeCsr = (der: Buffer, how: CsrEncoding): string =>
  how === 'pem'
    ? x509.PemConverter.encode(new Uint8Array(der).buffer, 'CERTIFICATE REQUEST')
    : how === 'base64'
      ? der.toString('base64')
      : der.toString('latin1');

const csrText = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(csrBytes, encoding).map(([der, how]) => encodeCsr(der, how)) },
  { weight: 1, arbitrary: anyText },
);

type TokenName = keyof typeof tokens;
const TOKEN_DEVICES: Record<TokenName, string> = { a: 'fuzz-a', otherDevice: 'fuzz-b', expired: 'fuzz-expired', revoked: 'fuzz-revoked' };
const tokenName = fc.constantFrom(...(Object.keys(tokens) as TokenName[]));
const realToken = tokenName.map((name) => tokens[name]);
const token = fc.oneof({ weight: 4, arbitrary: realToken }, anyText, anyText.map((s) => `fleet_enroll_${s}`));

// ---- HTTP properties ---------------------------------------------------------------------------

describe('the provisioning API under random and mutated input', () => {
  test('POST /v1/enrollments: JSON values, strings and mutated CSRs never cause a 5xx or a partial write', async () => {
    const body = fc.oneof(
      { weight: 8, arbitrary: fc.record({ token, csr: csrText }).map((b) => JSON.stringify(b)) },
      { weight: 1, arbitrary: fc.record({ token: fc.jsonValue(), csr: fc.jsonValue() }, { requiredKeys: [] }).map((b) => JSON.stringify(b)) },
      { weight: 1, arbitrary: fc.jsonValue().map((v) => JSON.stringify(v) ?? '') },
      { weight: 1, arbitrary: anyText },
    );
    const contentType = fc.oneof({ weight: 9, arbitrary: fc.constant('application/json') }, { weight: 1, arbitrary: headerText });
    await fc.assert(
      fc.asyncProperty(body, contentType, async (body, type) => {
        await sendChecked('enrollments', () => t.api('POST', '/v1/enrollments', { body, headers: { 'content-type': type } }), {
          certificates: 1,
          audit_log: 1,
        });
      }),
      settings(HTTP_RUNS),
    );
    assertReached('enrollments', ['csr_invalid', 'csr_signature_invalid', 'key_not_allowed', 'token_unknown', 'subject_mismatch', 'token_expired', 'device_revoked', 'validation_failed', 'request_malformed']);
  });

  test('POST /.well-known/est/simpleenroll: random bodies, content types and Basic headers never cause a 5xx or a partial write', async () => {
    const basic = (user: string, secret: string) => `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}`;
    const matchingCredentials = tokenName.map((name) => basic(TOKEN_DEVICES[name], tokens[name]));
    const mixedCredentials = fc
      .tuple(fc.oneof(fc.constantFrom(...Object.values(TOKEN_DEVICES)), headerText), fc.oneof(realToken, headerText))
      .map(([user, secret]) => basic(user, secret));
    const authorization = fc.option(
      fc.oneof(
        { weight: 6, arbitrary: matchingCredentials },
        { weight: 2, arbitrary: mixedCredentials },
        headerText.map((s) => `Basic ${s}`),
        headerText,
      ),
      { nil: undefined, freq: 10 },
    );
    const contentType = fc.option(
      fc.oneof({ weight: 4, arbitrary: fc.constantFrom('application/pkcs10', 'Application/PKCS10; charset=utf-8') }, headerText),
      { nil: undefined, freq: 8 },
    );
    const body = fc.oneof(
      { weight: 6, arbitrary: fc.tuple(csrBytes, encoding).map(([der, how]) => (how === 'raw' ? der : encodeCsr(der, how))) },
      { weight: 1, arbitrary: anyText },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 600 }).map((b) => Buffer.from(b)) },
    );
    await fc.assert(
      fc.asyncProperty(body, contentType, authorization, async (body, type, auth) => {
        const headers: Record<string, string> = {};
        if (type !== undefined) headers['content-type'] = type;
        if (auth !== undefined) headers.authorization = auth;
        await sendChecked('est', () => t.api('POST', '/.well-known/est/simpleenroll', { body, headers }), { certificates: 1, audit_log: 1 });
      }),
      settings(HTTP_RUNS),
    );
    assertReached('est', ['unauthorized', 'unsupported_media_type', 'csr_invalid', 'csr_signature_invalid', 'key_not_allowed', 'token_unknown', 'subject_mismatch', 'token_expired', 'device_revoked']);
  });

  test('POST /v1/devices: random JSON never causes a 5xx, and only a registration writes', async () => {
    const id = fc.oneof(fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,30}$/), anyText, fc.jsonValue());
    const body = fc.oneof(
      { weight: 3, arbitrary: fc.record({ id }).map((b) => JSON.stringify(b)) },
      { weight: 1, arbitrary: fc.jsonValue().map((v) => JSON.stringify(v) ?? '') },
      { weight: 1, arbitrary: anyText },
    );
    const bearer = fc.oneof(
      { weight: 4, arbitrary: fc.constant(null).map(() => t.adminToken) },
      { weight: 1, arbitrary: fc.constant(null).map(() => viewerToken) },
      { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz_-0123456789'), maxLength: 60 }) },
    );
    await fc.assert(
      fc.asyncProperty(body, bearer, async (body, bearer) => {
        const send = () => t.api('POST', '/v1/devices', { body, token: bearer || undefined, headers: { 'content-type': 'application/json' } });
        await sendChecked('devices', send, { devices: 1, enrollment_tokens: 1, audit_log: 1 });
      }),
      settings(HTTP_RUNS),
    );
    assertReached('devices', ['ok', 'validation_failed', 'request_malformed', 'unauthorized', 'forbidden']);
  });

  test('found by these properties: a JSON route sent another media type answers unsupported_media_type, as EST does', async () => {
    const res = await t.api('POST', '/v1/enrollments', { body: '{}', headers: { 'content-type': 'text/plain' } });
    assert.equal(res.status, 415);
    assert.equal(res.headers['content-type'], 'application/problem+json');
    assert.equal(res.json.code, 'unsupported_media_type');
    assert.match(res.json.detail, /application\/json/);
  });

  test('the server is still up and answering after all of it', async (context) => {
    const health = await t.api('GET', '/healthz');
    assert.equal(health.status, 200);
    assert.equal(health.json.status, 'ready');
    for (const [route, seen] of outcomes) {
      context.diagnostic(`${route}: ${[...seen].map(([outcome, n]) => `${outcome} ×${n}`).join(', ')}`);
    }
  });
});

// ---- parseCsr ----------------------------------------------------------------------------------

/**
 * parseCsr either returns a request whose key and subject can be read, or refuses with csr_invalid:
 * no other error escapes it, and none waits in the request for the code that uses it.
 */
function parsesOrRefuses(input: string | Uint8Array): void {
  let request: x509.Pkcs10CertificateRequest;
  try {
    request = parseCsr(input);
  } catch (error) {
    assert.ok(error instanceof FleetError, `${(error as Error)?.name}: ${(error as Error)?.message}`);
    assert.equal(error.code, 'csr_invalid');
    assert.equal(error.status, 400);
    return;
  }
  assert.ok(request instanceof x509.Pkcs10CertificateRequest);
  assert.doesNotThrow(() => request.publicKey.algorithm);
  assert.doesNotThrow(() => request.subject);
}

/** A P-256 CSR whose curve parameter is tagged ObjectDescriptor (7) instead of OBJECT IDENTIFIER (6). */
function csrWithUndecodableKey(der: Buffer): Buffer {
  const prime256v1 = Buffer.from('06082a8648ce3d030107', 'hex');
  const at = der.indexOf(prime256v1);
  assert.ok(at > 0, 'the CSR names its curve');
  const broken = Buffer.from(der);
  broken[at] = 0x07;
  return broken;
}

describe('parseCsr', () => {
  test('any bytes: a request or csr_invalid', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 1024 }), mutatedCsr.map((b) => new Uint8Array(b))), (bytes) => parsesOrRefuses(bytes)),
      settings(UNIT_RUNS),
    );
  });

  test('any string, including mutated CSRs as PEM, base64 and raw: a request or csr_invalid', () => {
    const pemLike = anyText.map((s) => `-----BEGIN CERTIFICATE REQUEST-----\n${s}\n-----END CERTIFICATE REQUEST-----`);
    fc.assert(
      fc.property(fc.oneof(anyText, pemLike, fc.tuple(mutatedCsr, encoding).map(([der, how]) => encodeCsr(der, how))), (text) =>
        parsesOrRefuses(text),
      ),
      settings(UNIT_RUNS),
    );
  });

  test('a mutated CSR that parses is then accepted or refused by the enrollment checks with a FleetError, never a crash', async () => {
    const policy = defaultPolicy();
    await fc.assert(
      fc.asyncProperty(mutatedCsr, async (der) => {
        let csr: x509.Pkcs10CertificateRequest;
        try {
          csr = parseCsr(new Uint8Array(der));
        } catch {
          return;
        }
        try {
          checkKey(policy, csr.publicKey);
          await verifyCsrSignature(csr);
          checkSubject(csr, 'fuzz-a');
        } catch (error) {
          assert.ok(error instanceof FleetError, `${(error as Error)?.name}: ${(error as Error)?.message}`);
          assert.equal(error.status, 400);
        }
      }),
      settings(UNIT_RUNS),
    );
  });

  test('found by these properties: a CSR whose key cannot be decoded is csr_invalid, not a 500', async () => {
    const broken = csrWithUndecodableKey(csrDer);
    assert.throws(() => parseCsr(new Uint8Array(broken)), (error: unknown) => error instanceof FleetError && error.code === 'csr_invalid');
    const res = await t.api('POST', '/v1/enrollments', { json: { token: tokens.otherDevice, csr: broken.toString('base64') } });
    assert.equal(res.status, 400, res.text);
    assert.equal(res.json.code, 'csr_invalid');
    assert.match(res.json.detail, /public key cannot be decoded/);
  });

  test('the unmutated CSR parses in every encoding', () => {
    for (const how of ['pem', 'base64'] as const) assert.equal(parseCsr(encodeCsr(csrDer, how)).subject, 'CN=fuzz-a');
    assert.equal(parseCsr(new Uint8Array(csrDer)).subject, 'CN=fuzz-a');
  });
});
