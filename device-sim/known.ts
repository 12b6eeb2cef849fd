import { X509Certificate } from 'node:crypto';
import { FleetError } from '../core/errors.js';
import type { FleetApi } from './api.js';
import type { StoredIdentity } from './state.js';

/** Devices whose registry entry is looked up before the run: enough to tell a reset registry, cheap at 10,000. */
const REGISTRY_SAMPLE = 3;

/**
 * Refuses at once a state directory whose devices this backend does not know, instead of letting
 * every device retry a refused connection for the whole run: certificates from another CA are found
 * by their signatures (each distinct chain once), a registry that lost them by asking it for a few.
 */
export async function checkStateKnownToBackend(api: FleetApi, stateDir: string, reused: StoredIdentity[]): Promise<void> {
  if (reused.length === 0) return;
  checkIssuedUnderRoot(api.rootPem, stateDir, reused);
  await checkRegistered(api, stateDir, reused);
}

function checkIssuedUnderRoot(rootPem: string, stateDir: string, reused: StoredIdentity[]): void {
  const root = new X509Certificate(rootPem);
  const verdicts = new Map<string, boolean>();
  const foreign = reused.filter((identity) => {
    const key = identity.chainPem;
    if (!verdicts.has(key)) verdicts.set(key, chainsTo(root, identity));
    return !verdicts.get(key);
  });
  if (foreign.length === 0) return;
  const example = foreign[0]!;
  throw new FleetError(
    'sim_state_foreign',
    1,
    `the state directory ${stateDir} holds ${foreign.length} of ${reused.length} devices enrolled by another CA ` +
      `(${example.id} was issued by "${issuerOf(example)}", which "${root.subject.replaceAll('\n', ', ')}" did not sign); ` +
      'this backend would refuse them all: run with a new --state, or delete that directory to enroll the fleet again',
  );
}

/** The device certificate is signed by the issuing CA of its chain, and that CA by this root. */
function chainsTo(root: X509Certificate, identity: StoredIdentity): boolean {
  try {
    const leaf = new X509Certificate(identity.certificatePem);
    const issuing = new X509Certificate(identity.chainPem.slice(identity.chainPem.indexOf('-----BEGIN', 1)));
    return leaf.verify(issuing.publicKey) && issuing.verify(root.publicKey);
  } catch {
    return false;
  }
}

function issuerOf(identity: StoredIdentity): string {
  try {
    return new X509Certificate(identity.certificatePem).issuer.replaceAll('\n', ', ');
  } catch {
    return 'an unreadable certificate';
  }
}

async function checkRegistered(api: FleetApi, stateDir: string, reused: StoredIdentity[]): Promise<void> {
  const picks = [...new Set([0, Math.floor(reused.length / 2), reused.length - 1])].slice(0, REGISTRY_SAMPLE);
  for (const identity of picks.map((i) => reused[i]!)) {
    const res = await api.operator('GET', `/v1/devices/${encodeURIComponent(identity.id)}`);
    if (res.status === 404) {
      throw new FleetError(
        'sim_state_unknown',
        1,
        `the backend's registry does not know ${identity.id}, a device of the state directory ${stateDir} (its registry was reset, or it is another backend); ` +
          'run with a new --state, or delete that directory to enroll the fleet again',
      );
    }
    if (res.status !== 200) continue; // Not ours to judge here (a role without read, a busy API): the run reports what follows.
    const serials = ((res.json?.certificates ?? []) as { serial: string }[]).map((c) => c.serial.toLowerCase());
    if (!serials.includes(identity.serial.toLowerCase())) {
      throw new FleetError(
        'sim_state_unknown',
        1,
        `the backend's registry knows ${identity.id} but not its certificate ${identity.serial} from the state directory ${stateDir}; ` +
          `re-enroll it (fleet device reenroll ${identity.id}, then delete its files from that directory), or run with a new --state`,
      );
    }
  }
}
