import { createHash } from 'node:crypto';
import {
  BasicOCSPResponse,
  CertID,
  CertStatus,
  id_pkix_ocsp_basic,
  id_pkix_ocsp_nonce,
  KeyHash,
  OCSPRequest,
  OCSPResponse,
  OCSPResponseStatus,
  ResponderID,
  ResponseBytes,
  ResponseData,
  RevokedInfo,
  SingleResponse,
} from '@peculiar/asn1-ocsp';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import { Certificate, CRLReason, type Extension } from '@peculiar/asn1-x509';
import type pg from 'pg';
import type { Logger } from '../core/log.js';
import type { CertificateAuthority, IssuingCa } from '../core/pki/authority.js';
import { type CertificateStatusAt, certificateStatusAt, REVOCATION_REASONS } from '../core/registry/index.js';

/** What the answer depends on. */
export type StatusRecord = Pick<CertificateStatusAt, 'issuer' | 'status' | 'revokedAt' | 'revocationReason'>;

/** One request checks a handful of certificates; a cap keeps one request from costing a query per thousand. */
export const MAX_CERT_IDS_PER_REQUEST = 100;
/** How long a relying party may rely on an answer before asking again. */
const RESPONSE_VALIDITY_MS = 3_600_000;
/** RFC 8954 2.1: a responder may leave out nonces outside 1..32 octets instead of echoing anything it is sent. */
const MAX_NONCE_OCTETS = 32;

/** The CertID hash algorithms we answer for: SHA-1 (openssl's default) and SHA-256. */
const CERT_ID_HASHES: Record<string, 'sha1' | 'sha256'> = {
  '1.3.14.3.2.26': 'sha1',
  '2.16.840.1.101.3.4.2.1': 'sha256',
};

export interface OcspResponderDeps {
  pool: pg.Pool;
  ca: CertificateAuthority;
  clock: () => Date;
  log: Logger;
}

/** The issuing CA as CertIDs name it: hashes of its subject DN and of its public key bits, per algorithm. */
interface IssuerHashes {
  name: Record<string, Buffer>;
  key: Record<string, Buffer>;
}

export type OcspAnswer = { good: true } | { revokedAt: Date; reason: number } | { unknown: true };

const hash = (algorithm: string, data: ArrayBuffer): Buffer => createHash(algorithm).update(new Uint8Array(data)).digest();

/** RFC 6960 4.1.1: issuerKeyHash covers the subjectPublicKey BIT STRING's value, not the whole SubjectPublicKeyInfo. */
function publicKeyBits(certificate: Certificate): ArrayBuffer {
  return certificate.tbsCertificate.subjectPublicKeyInfo.subjectPublicKey;
}

function issuerHashes(issuing: Certificate): IssuerHashes {
  const subject = AsnConvert.serialize(issuing.tbsCertificate.subject);
  const result: IssuerHashes = { name: {}, key: {} };
  for (const algorithm of Object.values(CERT_ID_HASHES)) {
    result.name[algorithm] = hash(algorithm, subject);
    result.key[algorithm] = hash(algorithm, publicKeyBits(issuing));
  }
  return result;
}

function isOurIssuer(certId: CertID, issuer: IssuerHashes): boolean {
  const algorithm = CERT_ID_HASHES[certId.hashAlgorithm.algorithm];
  if (!algorithm) return false;
  return (
    issuer.name[algorithm]!.equals(new Uint8Array(certId.issuerNameHash.buffer)) &&
    issuer.key[algorithm]!.equals(new Uint8Array(certId.issuerKeyHash.buffer))
  );
}

/** The serial as the registry keeps it: lower-case hex of the INTEGER, without the sign byte DER adds. */
export function registrySerial(integer: ArrayBuffer): string {
  const bytes = new Uint8Array(integer);
  const unsigned = bytes.length > 1 && bytes[0] === 0 && bytes[1]! > 0x7f ? bytes.subarray(1) : bytes;
  return Buffer.from(unsigned).toString('hex');
}

/**
 * Anything but revoked and suspended is good: OCSP's good only means "not revoked" (RFC 6960 2.2).
 * A suspended certificate is on hold, which OCSP says as revoked with reason certificateHold. The
 * record is the registry's reading at this moment (certificateStatusAt), the same the CRL is built
 * from: a superseded certificate past its overlap comes as revoked, reason superseded.
 */
export function ocspAnswer(record: StatusRecord | undefined, issuerName: string, now: Date): OcspAnswer {
  if (!record || record.issuer !== issuerName) return { unknown: true };
  const state = record.status;
  if (state === 'revoked') return { revokedAt: record.revokedAt ?? now, reason: record.revocationReason ?? REVOCATION_REASONS.unspecified };
  if (state === 'suspended') return { revokedAt: record.revokedAt ?? now, reason: REVOCATION_REASONS.certificateHold };
  return { good: true };
}

function certStatus(answer: OcspAnswer): CertStatus {
  if ('good' in answer) return new CertStatus({ good: null });
  if ('unknown' in answer) return new CertStatus({ unknown: null });
  // Like the CRL: RFC 5280 5.3.1 says to leave out the reason rather than state "unspecified".
  const revocationReason = answer.reason === REVOCATION_REASONS.unspecified ? undefined : new CRLReason(answer.reason);
  return new CertStatus({ revoked: new RevokedInfo({ revocationTime: wholeSeconds(answer.revokedAt), revocationReason }) });
}

/** GeneralizedTime in OCSP follows RFC 5280: no fractional seconds. */
const wholeSeconds = (date: Date): Date => new Date(Math.floor(date.getTime() / 1000) * 1000);

/** The request's nonce extension, to be echoed so the client knows the answer is fresh and not replayed. */
function nonceOf(request: OCSPRequest): Extension | undefined {
  const nonce = request.tbsRequest.requestExtensions?.find((e) => e.extnID === id_pkix_ocsp_nonce);
  if (!nonce) return undefined;
  try {
    const value = AsnConvert.parse(nonce.extnValue.buffer, OctetString);
    return value.byteLength >= 1 && value.byteLength <= MAX_NONCE_OCTETS ? nonce : undefined;
  } catch {
    return undefined;
  }
}

/** undefined when the bytes are not an OCSPRequest we are willing to answer. */
function parseRequest(der: Uint8Array): OCSPRequest | undefined {
  try {
    const request = AsnConvert.parse(der, OCSPRequest);
    const count = request.tbsRequest.requestList.length;
    return count >= 1 && count <= MAX_CERT_IDS_PER_REQUEST ? request : undefined;
  } catch {
    return undefined;
  }
}

/** An unsuccessful OCSPResponse carries only its status, unsigned (RFC 6960 4.2.1). */
const unsuccessful = (status: OCSPResponseStatus): ArrayBuffer =>
  AsnConvert.serialize(new OCSPResponse({ responseStatus: status }));

/** An issuing CA as the responder sees it: parsed once, with its CertID hashes. */
interface Responder {
  issuer: IssuingCa;
  asn: Certificate;
  hashes: IssuerHashes;
  id: ResponderID;
}

function responderFor(issuer: IssuingCa): Responder {
  const asn = AsnConvert.parse(issuer.certificate.rawData, Certificate);
  return { issuer, asn, hashes: issuerHashes(asn), id: new ResponderID({ byKey: new KeyHash(hash('sha1', publicKeyBits(asn))) }) };
}

/**
 * An OCSP responder for our issuing CAs, each signing the answers about its own certificates
 * (RFC 6960 4.2.2.2), so relying parties need no delegated responder certificate. A request is
 * answered by the issuer its first CertID names; CertIDs of our other issuing CAs are answered
 * unknown, and a request naming any CA we do not run gets unauthorized. Every outcome is a DER
 * OCSPResponse: a request it cannot read gets malformedRequest, a failure of ours internalError;
 * nothing throws.
 */
export function ocspResponder(deps: OcspResponderDeps) {
  const responders = new Map<string, Responder>();
  // Issuers come and go with rotation, so they are looked up per request and parsed once each.
  const currentResponders = () =>
    deps.ca.issuers.map((issuer) => {
      let responder = responders.get(issuer.keyId);
      if (!responder) responders.set(issuer.keyId, (responder = responderFor(issuer)));
      return responder;
    });

  async function singleResponse(responder: Responder, certId: CertID, thisUpdate: Date, nextUpdate: Date): Promise<SingleResponse> {
    const serial = registrySerial(certId.serialNumber);
    const record = isOurIssuer(certId, responder.hashes) ? await certificateStatusAt(deps.pool, serial, thisUpdate) : undefined;
    const answer = ocspAnswer(record, responder.issuer.certificate.subject, thisUpdate);
    // "good" for a superseded certificate lasts only until its overlap ends; no cache may keep it longer.
    const until = 'good' in answer && record?.acceptUntil ? Math.min(nextUpdate.getTime(), wholeSeconds(record.acceptUntil).getTime()) : nextUpdate.getTime();
    return new SingleResponse({ certID: certId, certStatus: certStatus(answer), thisUpdate, nextUpdate: new Date(until) });
  }

  async function signedResponse(request: OCSPRequest): Promise<ArrayBuffer> {
    const now = wholeSeconds(deps.clock());
    const nextUpdate = new Date(now.getTime() + RESPONSE_VALIDITY_MS);
    const all = currentResponders();
    const ours = (certId: CertID) => all.find((r) => isOurIssuer(certId, r.hashes));
    // RFC 6960 2.3: about a CA we do not run we can say nothing authoritative, and must not sign "unknown" for it.
    if (!request.tbsRequest.requestList.every(({ reqCert }) => ours(reqCert))) return unsuccessful(OCSPResponseStatus.unauthorized);
    const responder = ours(request.tbsRequest.requestList[0]!.reqCert)!;
    const responses: SingleResponse[] = [];
    for (const { reqCert } of request.tbsRequest.requestList) responses.push(await singleResponse(responder, reqCert, now, nextUpdate));
    const nonce = nonceOf(request);
    const tbsResponseData = new ResponseData({
      responderID: responder.id,
      producedAt: now,
      responses,
      ...(nonce ? { responseExtensions: [nonce] } : {}),
    });
    const { algorithm, signature } = await responder.issuer.signData(AsnConvert.serialize(tbsResponseData));
    const basic = new BasicOCSPResponse({ tbsResponseData, signatureAlgorithm: algorithm, signature, certs: [responder.asn] });
    const response = new OCSPResponse({
      responseStatus: OCSPResponseStatus.successful,
      responseBytes: new ResponseBytes({ responseType: id_pkix_ocsp_basic, response: new OctetString(AsnConvert.serialize(basic)) }),
    });
    return AsnConvert.serialize(response);
  }

  return async function respond(requestDer: Uint8Array): Promise<ArrayBuffer> {
    const request = parseRequest(requestDer);
    if (!request) return unsuccessful(OCSPResponseStatus.malformedRequest);
    try {
      return await signedResponse(request);
    } catch (error) {
      deps.log.error({ err: error }, 'OCSP request failed');
      return unsuccessful(OCSPResponseStatus.internalError);
    }
  };
}
