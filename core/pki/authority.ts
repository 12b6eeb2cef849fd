import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { AsnConvert } from '@peculiar/asn1-schema';
import { type AlgorithmIdentifier, CRLNumber, id_ce_cRLNumber } from '@peculiar/asn1-x509';
import type { Logger } from '../log.js';
import { fileKeyStore, type KeyStore } from './key-store.js';
import {
  type EcCurve,
  ecdsaSignatureToDer,
  ecSigningAlgorithm,
  exportPrivateKeyPem,
  generateEcKeys,
  importEcPrivateKeyPem,
  pemChain,
  randomSerial,
  signatureAlgorithmIdentifier,
  subtle,
  x509,
} from './x509.js';

const ROOT_CURVE: EcCurve = 'P-384';
const ISSUING_CURVE: EcCurve = 'P-256';
const DAY = 86_400_000;
/** A server certificate this close to expiry (or naming other hosts) is replaced at start. */
const SERVER_RENEW_BEFORE = 30 * DAY;
/** Certificates start a little in the past so devices with slow clocks accept them. */
export const CLOCK_SKEW_MS = 5 * 60_000;

export interface CertificateRequestToSign {
  subject: string;
  publicKey: x509.PublicKey;
  notBefore: Date;
  notAfter: Date;
  extensions: x509.Extension[];
}

/** A DER signature over data the caller built, and the algorithm that made it. */
export interface DetachedSignature {
  algorithm: AlgorithmIdentifier;
  signature: ArrayBuffer;
}

export interface RevokedEntry {
  serial: string;
  revokedAt: Date;
  reason: number;
}

/**
 * The private CA: a root that signs only the issuing CA, and an issuing CA that signs device and
 * server certificates and the CRL. What goes into a device certificate is decided by the issuance
 * policy (provisioning/policy.ts); this only signs.
 */
export interface CertificateAuthority {
  root: x509.X509Certificate;
  issuing: x509.X509Certificate;
  /** Issuing CA then root, PEM: what a relying party needs beside the leaf. */
  chainPem: string;
  rootPem: string;
  /** The broker's and API's TLS identity: leaf then issuing CA, and its key. */
  server: { certificatePem: string; keyPem: string };
  sign(request: CertificateRequestToSign): Promise<x509.X509Certificate>;
  signCrl(entries: RevokedEntry[], crlNumber: number, thisUpdate: Date, nextUpdate: Date): Promise<x509.X509Crl>;
  /** Signs with the issuing CA key, for structures it vouches for directly (OCSP responses, RFC 6960 4.2.2.2). */
  signData(data: ArrayBuffer): Promise<DetachedSignature>;
}

export interface AuthorityOptions {
  dataDir: string;
  hostnames: string[];
  log: Logger;
  now?: () => Date;
  /** Where the private keys are kept; unencrypted files in `<dataDir>/pki` when not given. */
  keyStore?: KeyStore;
}

interface KeyedCertificate {
  certificate: x509.X509Certificate;
  key: CryptoKey;
  keyPem: string;
}

/** Loads the CA from `<dataDir>/pki`, creating the root, issuing CA and server certificate on first start. */
export async function loadAuthority(options: AuthorityOptions): Promise<CertificateAuthority> {
  const now = options.now ?? (() => new Date());
  const dir = path.join(options.dataDir, 'pki');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const files = pkiFiles(dir, options.keyStore ?? fileKeyStore(dir, { log: options.log }));

  const root =
    (await readKeyed(files.root, ROOT_CURVE)) ??
    (await createAndStore(files.root, options.log, 'root CA', () => createRoot(now())));
  const issuing =
    (await readKeyed(files.issuing, ISSUING_CURVE)) ??
    (await createAndStore(files.issuing, options.log, 'issuing CA', () => createIssuing(root, now())));

  const sanNames = serverNames(options.hostnames);
  let server = await readKeyed(files.server, ISSUING_CURVE);
  if (!server || needsNewServerCertificate(server.certificate, sanNames, now())) {
    server = await createAndStore(files.server, options.log, 'server certificate', () =>
      createServer(issuing, sanNames, now()),
    );
  }

  const signingAlgorithm = ecSigningAlgorithm(ISSUING_CURVE);
  return {
    root: root.certificate,
    issuing: issuing.certificate,
    chainPem: pemChain(issuing.certificate, root.certificate),
    rootPem: pemChain(root.certificate),
    server: { certificatePem: pemChain(server.certificate, issuing.certificate), keyPem: server.keyPem },
    sign: (request) =>
      x509.X509CertificateGenerator.create({
        serialNumber: randomSerial(),
        subject: request.subject,
        issuer: issuing.certificate.subject,
        notBefore: request.notBefore,
        notAfter: request.notAfter,
        publicKey: request.publicKey,
        signingKey: issuing.key,
        signingAlgorithm,
        extensions: request.extensions,
      }),
    signCrl: async (entries, crlNumber, thisUpdate, nextUpdate) =>
      x509.X509CrlGenerator.create({
        issuer: issuing.certificate.subject,
        thisUpdate,
        nextUpdate,
        signingAlgorithm,
        signingKey: issuing.key,
        extensions: [
          await x509.AuthorityKeyIdentifierExtension.create(issuing.certificate.publicKey),
          new x509.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(crlNumber))),
        ],
        entries: entries.map((e) => ({ serialNumber: e.serial, revocationDate: e.revokedAt, reason: e.reason })),
      }),
    signData: async (data) => ({
      algorithm: signatureAlgorithmIdentifier(signingAlgorithm),
      signature: ecdsaSignatureToDer(ISSUING_CURVE, await subtle.sign(signingAlgorithm, issuing.key, data)),
    }),
  };
}

function pkiFiles(dir: string, keys: KeyStore) {
  const pair = (name: string) => ({ cert: path.join(dir, `${name}.crt`), key: name, keys });
  return { root: pair('root'), issuing: pair('issuing'), server: pair('server') };
}

/** A certificate file and the name its private key has in the key store. */
type FilePair = { cert: string; key: string; keys: KeyStore };

async function readKeyed(files: FilePair, curve: EcCurve): Promise<KeyedCertificate | undefined> {
  if (!existsSync(files.cert)) return undefined;
  const keyPem = await files.keys.read(files.key);
  if (keyPem === undefined) return undefined;
  return {
    certificate: new x509.X509Certificate(await readFile(files.cert, 'utf8')),
    key: await importEcPrivateKeyPem(keyPem, curve),
    keyPem,
  };
}

async function createAndStore(
  files: FilePair,
  log: Logger,
  what: string,
  create: () => Promise<KeyedCertificate>,
): Promise<KeyedCertificate> {
  const made = await create();
  // Key first, so a crash never leaves a certificate without its key.
  await files.keys.write(files.key, made.keyPem);
  await writeFile(files.cert, made.certificate.toString('pem') + '\n', { mode: 0o644 });
  log.info({ subject: made.certificate.subject, notAfter: made.certificate.notAfter, file: files.cert }, `created ${what}`);
  return made;
}

async function keyed(certificate: x509.X509Certificate, keys: CryptoKeyPair): Promise<KeyedCertificate> {
  return { certificate, key: keys.privateKey, keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

async function createRoot(now: Date): Promise<KeyedCertificate> {
  const keys = await generateEcKeys(ROOT_CURVE);
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: 'CN=fleet-auth Root CA, O=fleet-auth',
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + 20 * 365 * DAY),
    keys,
    signingAlgorithm: ecSigningAlgorithm(ROOT_CURVE),
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return keyed(certificate, keys);
}

async function createIssuing(root: KeyedCertificate, now: Date): Promise<KeyedCertificate> {
  const keys = await generateEcKeys(ISSUING_CURVE);
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: 'CN=fleet-auth Issuing CA 1, O=fleet-auth',
    issuer: root.certificate.subject,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + 10 * 365 * DAY),
    publicKey: keys.publicKey,
    signingKey: root.key,
    signingAlgorithm: ecSigningAlgorithm(ROOT_CURVE),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(root.certificate.publicKey),
    ],
  });
  return keyed(certificate, keys);
}

function serverNames(hostnames: string[]): string[] {
  return [...new Set(['localhost', '127.0.0.1', '::1', ...hostnames])].sort();
}

function namesIn(certificate: x509.X509Certificate): string[] {
  const san = certificate.getExtension(x509.SubjectAlternativeNameExtension);
  return (san?.names.items ?? []).map((n) => n.value).sort();
}

function needsNewServerCertificate(certificate: x509.X509Certificate, names: string[], now: Date): boolean {
  if (certificate.notAfter.getTime() - now.getTime() < SERVER_RENEW_BEFORE) return true;
  return namesIn(certificate).join(',') !== names.join(',');
}

async function createServer(issuing: KeyedCertificate, names: string[], now: Date): Promise<KeyedCertificate> {
  const keys = await generateEcKeys(ISSUING_CURVE);
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: 'CN=fleet-auth server, O=fleet-auth',
    issuer: issuing.certificate.subject,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + 365 * DAY),
    publicKey: keys.publicKey,
    signingKey: issuing.key,
    signingAlgorithm: ecSigningAlgorithm(ISSUING_CURVE),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(
        names.map((value) => ({ type: isIP(value) ? ('ip' as const) : ('dns' as const), value })),
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuing.certificate.publicKey),
    ],
  });
  return keyed(certificate, keys);
}
