import { type EcCurve, ecSigningAlgorithm, exportPrivateKeyPem, generateEcKeys, x509 } from '../core/pki/x509.js';

/** A device's own key pair and CSR, made the way constrained hardware does: the key never leaves it. */
export interface DeviceIdentity {
  deviceId: string;
  keyPem: string;
  csr: x509.Pkcs10CertificateRequest;
  csrPem: string;
  /** Base64 DER, the body EST's simpleenroll expects. */
  csrBase64: string;
}

export async function createDeviceIdentity(deviceId: string, curve: EcCurve = 'P-256'): Promise<DeviceIdentity> {
  const keys = await generateEcKeys(curve);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: new x509.Name([{ CN: [deviceId] }]).toString(),
    keys,
    signingAlgorithm: ecSigningAlgorithm(curve),
  });
  return {
    deviceId,
    keyPem: await exportPrivateKeyPem(keys.privateKey),
    csr,
    csrPem: csr.toString('pem'),
    csrBase64: csr.toString('base64'),
  };
}
