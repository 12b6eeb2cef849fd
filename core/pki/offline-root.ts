import { existsSync } from 'node:fs';
import { FleetError } from '../errors.js';
import {
  addIssuingCa,
  type AuthorityOptions,
  certifyIssuing,
  issuerFileName,
  ISSUING_CURVE,
  issuingKey,
  issuingSubject,
  openPkiDir,
  readCertificate,
  type RegistryCaOptions,
  rootCertFile,
  rootKey,
} from './authority.js';
import { nextGenerationOf, requireRegistrySet } from './ca-certificates.js';
import { signerMatches, x509Signing } from './signer.js';
import { fingerprintOf, x509 } from './x509.js';

/**
 * Rotation with the root kept offline, in three steps on two machines: the fleet makes the next
 * issuing CA's key and a CSR for it (requestIssuingCa), the machine that holds the root key signs it
 * (signIssuingRequest), and the fleet installs the certificate (importIssuingCa).
 */

/** Where the root key is: its own data directory, no registry. */
type Options = Omit<AuthorityOptions, 'hostnames' | 'pool'>;

/** The shape of every issuing CA's subject; the root signs nothing else. */
const ISSUING_SUBJECT = /^CN=fleet-auth Issuing CA \d+, O=fleet-auth$/;

export interface IssuingRequest {
  generation: number;
  csrPem: string;
  /** Where the new key is (a token key, or a file). */
  location: string;
}

/**
 * The next issuing CA's key, made where the key store keeps issuing keys (or the one an earlier
 * request made, so asking again rewrites the same CSR), and its PKCS#10 request signed by that key.
 */
export async function requestIssuingCa(options: RegistryCaOptions): Promise<IssuingRequest> {
  const { keys } = await openPkiDir(options);
  const generation = nextGenerationOf(await requireRegistrySet(options.pool));
  const signer = await issuingKey(keys, generation);
  const { crypto, signingKey, signingAlgorithm } = x509Signing(signer);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    { name: issuingSubject(generation), keys: { privateKey: signingKey, publicKey: await signer.publicKey.export() }, signingAlgorithm },
    crypto,
  );
  return { generation, csrPem: csr.toString('pem') + '\n', location: signer.location };
}

/**
 * Run where the root key is: an issuing CA certificate for the CSR, whose signature must verify, whose
 * key must be ECDSA P-256 and whose subject must be an issuing CA's. Nothing else in the CSR is used.
 */
export async function signIssuingRequest(options: Options, csrPem: string): Promise<x509.X509Certificate> {
  const { dir, keys, now } = await openPkiDir(options);
  const rootFile = rootCertFile(dir);
  if (!existsSync(rootFile)) {
    throw new FleetError('root_not_found', 404, `there is no root CA (root.crt and root.key) in ${dir}; set FLEET_DATA_DIR to the directory that holds them`);
  }
  const root = await readCertificate(rootFile);
  const rootSigner = await rootKey(keys, root);
  if (!rootSigner) throw new FleetError('root_offline', 409, `${dir} has the root CA certificate but not its key (root.key); run this where the root key is`);
  if (!signerMatches(rootSigner, root)) throw new FleetError('root_key_mismatch', 409, `root.key in ${dir} is not the key of root.crt`);
  const csr = parseRequest(csrPem);
  if (!(await csr.verify())) throw new FleetError('csr_invalid', 400, 'the CSR\'s signature does not verify: it was altered, or not made with its key');
  const key = csr.publicKey.algorithm as EcKeyAlgorithm;
  if (key.name !== 'ECDSA' || key.namedCurve !== ISSUING_CURVE) {
    throw new FleetError('csr_invalid', 400, `an issuing CA key must be ECDSA ${ISSUING_CURVE}, and this CSR's is ${key.name} ${key.namedCurve ?? ''}`.trim());
  }
  if (!ISSUING_SUBJECT.test(csr.subject)) {
    throw new FleetError('csr_invalid', 400, `"${csr.subject}" is not an issuing CA's subject; make the CSR with fleet ca rotate --csr`);
  }
  return certifyIssuing(root, rootSigner, { subject: csr.subject, publicKey: csr.publicKey }, now());
}

function parseRequest(pem: string): x509.Pkcs10CertificateRequest {
  try {
    return new x509.Pkcs10CertificateRequest(pem);
  } catch {
    throw new FleetError('csr_invalid', 400, 'that is not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----)');
  }
}

export interface ImportedIssuer {
  generation: number;
  certificate: x509.X509Certificate;
  keyId: string;
}

/**
 * Installs the certificate signIssuingRequest made: it must be an issuing CA certificate from our
 * root, for the key requestIssuingCa made, under the subject it asked for, and valid now.
 */
export async function importIssuingCa(options: RegistryCaOptions, certificatePem: string): Promise<ImportedIssuer> {
  const { dir, keys, now } = await openPkiDir(options);
  const certificate = parseCertificate(certificatePem);
  const refuse = (reason: string) => {
    throw new FleetError('issuer_certificate_refused', 400, `${reason}; nothing was installed`);
  };
  // Checked under the registry's lock, against its root and next generation, and stored with the announcement.
  const installed = await addIssuingCa(options.pool, dir, 'imported', now, async ({ root }, generation) => {
    const signer = await keys.signer(issuerFileName(generation), ISSUING_CURVE);
    if (!signer) {
      throw new FleetError('no_pending_issuer', 409, `no issuing CA is waiting for its certificate (there is no key for issuing CA ${generation}); run fleet ca rotate --csr <file> first`);
    }
    const fromRoot = certificate.issuer === root.subject && (await certificate.verify({ publicKey: root.publicKey, signatureOnly: true }));
    if (!fromRoot) refuse(`the certificate is not signed by this fleet's root CA (${root.subject}, SHA-256 ${fingerprintOf(root)})`);
    if (!signerMatches(signer, certificate)) refuse(`the certificate is for another key than issuing CA ${generation}'s (${signer.location})`);
    if (certificate.subject !== issuingSubject(generation)) refuse(`the certificate names "${certificate.subject}", not "${issuingSubject(generation)}"`);
    if (!certificate.getExtension(x509.BasicConstraintsExtension)?.ca) refuse('the certificate is not a CA certificate');
    const at = now();
    if (at < certificate.notBefore || at > certificate.notAfter) refuse(`the certificate is valid from ${certificate.notBefore.toISOString()} to ${certificate.notAfter.toISOString()}, not now`);
    options.log.info({ subject: certificate.subject, keyLocation: signer.location }, 'installed issuing CA');
    return { certificate, signer };
  });
  return { generation: installed.generation, certificate, keyId: installed.keyId };
}

function parseCertificate(pem: string): x509.X509Certificate {
  try {
    return new x509.X509Certificate(pem);
  } catch {
    throw new FleetError('issuer_certificate_refused', 400, 'that is not a PEM certificate (-----BEGIN CERTIFICATE-----)');
  }
}
