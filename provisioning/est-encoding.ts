import {
  CertificateChoices,
  CertificateSet,
  ContentInfo,
  EncapsulatedContentInfo,
  id_data,
  id_signedData,
  SignedData,
  SignerInfos,
} from '@peculiar/asn1-cms';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate } from '@peculiar/asn1-x509';
import * as asn1js from 'asn1js';
import type { KeyKind } from '../core/pki/key-kinds.js';
import { MIN_RSA_BITS } from '../core/pki/key-kinds.js';
import type { x509 } from '../core/pki/x509.js';

/** RFC 7030 4.1.3 and 4.2.3, with RFC 8951's clarification: base64 bodies, no transfer-encoding header. */
export const CERTS_ONLY = 'application/pkcs7-mime; smime-type=certs-only';
/** RFC 7030 4.5.2. */
export const CSR_ATTRS = 'application/csrattrs';

const base64Body = (der: ArrayBuffer): string => Buffer.from(der).toString('base64').replace(/(.{64})/g, '$1\n') + '\n';

/**
 * A degenerate SignedData carrying certificates only (RFC 5652 5.2, RFC 7030 4.1.3): no signers, no
 * digest algorithms, and no eContent at all, which the RFC says MUST be omitted when there is nothing
 * signed. (@peculiar/x509's X509Certificates.export writes an empty one, which strict clients refuse.)
 */
export function certsOnly(certificates: x509.X509Certificate[]): string {
  const signedData = new SignedData({
    version: 1,
    encapContentInfo: new EncapsulatedContentInfo({ eContentType: id_data }),
    certificates: new CertificateSet(certificates.map((c) => new CertificateChoices({ certificate: AsnConvert.parse(c.rawData, Certificate) }))),
    signerInfos: new SignerInfos(),
  });
  return base64Body(AsnConvert.serialize(new ContentInfo({ contentType: id_signedData, content: AsnConvert.serialize(signedData) })));
}

const OID = {
  commonName: '2.5.4.3',
  ecPublicKey: '1.2.840.10045.2.1',
  prime256v1: '1.2.840.10045.3.1.7',
  secp384r1: '1.3.132.0.34',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ed25519: '1.3.101.112',
  rsaEncryption: '1.2.840.113549.1.1.1',
} as const;

const oid = (value: string) => new asn1js.ObjectIdentifier({ value });
/** An Attribute; DER wants the values of its SET in the order of their encodings. */
const attribute = (type: string, values: asn1js.AsnType[]) => {
  const sorted = values.map((v) => ({ v, der: Buffer.from(v.toBER()) })).sort((a, b) => Buffer.compare(a.der, b.der));
  return new asn1js.Sequence({ value: [oid(type), new asn1js.Set({ value: sorted.map((s) => s.v) })] });
};

/**
 * What a CSR must look like here, as RFC 7030 4.5 CSR attributes: the subject's commonName (it must be
 * CN=<device id>), the key types the policy allows (EC as id-ecPublicKey with its curves, RSA as
 * rsaEncryption with the least modulus size, Ed25519 by its OID) and, for EC, ecdsa-with-SHA256.
 */
export function csrAttributes(allowedKeys: readonly KeyKind[]): string {
  const curves = [
    ...(allowedKeys.includes('ec-p256') ? [OID.prime256v1] : []),
    ...(allowedKeys.includes('ec-p384') ? [OID.secp384r1] : []),
  ];
  const items: asn1js.AsnType[] = [oid(OID.commonName)];
  if (curves.length > 0) items.push(attribute(OID.ecPublicKey, curves.map(oid)), oid(OID.ecdsaWithSha256));
  if (allowedKeys.includes('rsa')) items.push(attribute(OID.rsaEncryption, [new asn1js.Integer({ value: MIN_RSA_BITS })]));
  if (allowedKeys.includes('ed25519')) items.push(oid(OID.ed25519));
  return base64Body(new asn1js.Sequence({ value: items }).toBER());
}
