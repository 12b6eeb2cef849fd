import type { x509 } from '../../core/pki/x509.js';
import { DAY_MS, daysBetween, daysThreshold, type Finding, isoDate, listedCheck, plural } from './check.js';

/** Checks of the CA itself: its certificates' validity and how its keys are kept. */

const caFinding = (name: string, certificate: x509.X509Certificate, now: Date, extra: Record<string, unknown>): Finding => ({
  deviceId: null,
  serial: certificate.serialNumber.toLowerCase(),
  detail:
    certificate.notAfter.getTime() <= now.getTime()
      ? `${name} (${certificate.subject}) expired at ${isoDate(certificate.notAfter)}`
      : `${name} (${certificate.subject}) expires at ${isoDate(certificate.notAfter)}, in ${plural(daysBetween(now, certificate.notAfter), 'day')}`,
  subject: certificate.subject,
  notAfter: isoDate(certificate.notAfter),
  ...extra,
});

export const caCertificateExpiring = listedCheck(
  {
    id: 'ca_certificate_expiring',
    title: 'CA certificates expiring soon',
    severity: 'high',
    description:
      'The root and the trusted issuing CAs whose certificate expires within the threshold (?days=, default 90). Every device ' +
      'certificate under them stops working then: rotate the issuing CA (fleet ca rotate) and let devices renew, well before.',
    thresholds: [daysThreshold('expiring within this many days', () => 90)],
  },
  ({ deps, now, threshold }) => {
    const horizon = now.getTime() + threshold('days') * DAY_MS;
    const expiring = (c: x509.X509Certificate) => c.notAfter.getTime() <= horizon;
    return [
      ...(expiring(deps.ca.root) ? [caFinding('the root CA', deps.ca.root, now, { role: 'root' })] : []),
      ...deps.ca.issuers
        .filter((i) => expiring(i.certificate))
        .map((i) => caFinding(`issuing CA ${i.generation}`, i.certificate, now, { role: 'issuing', generation: i.generation })),
    ];
  },
);

export const rootKeyOnline = listedCheck(
  {
    id: 'root_key_online',
    title: 'Root CA key online',
    severity: 'high',
    description:
      'The root CA\'s private key is on the server beside the issuing CA keys. Whoever takes the server can then mint issuing CAs; ' +
      'kept offline, a compromise is fixed by rotating the issuing CA. Move root.key to an offline machine and rotate with ' +
      'fleet ca rotate --csr, fleet ca sign-issuing and fleet ca import.',
  },
  ({ deps }) =>
    deps.audits.rootKeyOnline()
      ? [{ deviceId: null, serial: null, detail: `the root CA key is online at ${deps.audits.rootKeyLocation}; take it offline`, location: deps.audits.rootKeyLocation }]
      : [],
);

export const caPassphraseUnset = listedCheck(
  {
    id: 'ca_passphrase_unset',
    title: 'CA keys not encrypted at rest',
    severity: 'high',
    description:
      'The CA\'s private key files are stored unencrypted, so a copy of the data directory (a backup, a disk) is a copy of the CA. ' +
      'Set FLEET_CA_PASSPHRASE (12 characters or more) and restart: the keys are encrypted on the next start.',
  },
  ({ deps }) =>
    deps.audits.caKeysEncrypted
      ? []
      : [{ deviceId: null, serial: null, detail: `the CA private keys in ${deps.audits.caKeyDir} are not encrypted; set FLEET_CA_PASSPHRASE and restart`, location: deps.audits.caKeyDir }],
);
