import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import { FleetError, fileProblem } from '../core/errors.js';
import type { CertificateIdentity } from '../core/registry/index.js';

/**
 * Who may publish and subscribe where, as data: topic templates over the identity. `{deviceId}`,
 * `{batch}` and `{profile}` are replaced with the identity's values, which may never contain `/`,
 * `+`, `#` or `$`, so a template can only widen where its own text has a wildcard.
 */
export interface TopicRules {
  publish: string[];
  subscribe: string[];
}

export interface TopicPolicy {
  /** Every device. */
  devices: TopicRules;
  /** Added for devices of a hardware profile. */
  profiles: Record<string, TopicRules>;
  /** Backend service identities, by role. */
  services: Record<string, TopicRules>;
}

/** The reserved tree the broker publishes lifecycle events and presence under. */
export const FLEET_TOPIC_ROOT = '$fleet';

export const DEFAULT_POLICY: TopicPolicy = {
  devices: { publish: ['devices/{deviceId}/#'], subscribe: ['devices/{deviceId}/#'] },
  profiles: {},
  services: {
    // Reads every device's topics and the lifecycle tree.
    'fleet-reader': { publish: [], subscribe: ['devices/#', `${FLEET_TOPIC_ROOT}/#`] },
    // Also sends commands to devices.
    'fleet-commander': { publish: ['devices/+/commands/#'], subscribe: ['devices/#', `${FLEET_TOPIC_ROOT}/#`] },
  },
};

const Rules = z.object({ publish: z.array(z.string().min(1)).default([]), subscribe: z.array(z.string().min(1)).default([]) });
const PolicyFile = z.object({
  devices: Rules.optional(),
  profiles: z.record(z.string(), Rules).default({}),
  services: z.record(z.string(), Rules).default({}),
});

/** Reads a policy file (JSON); anything it leaves out keeps the default. */
export async function loadTopicPolicy(file: string | undefined): Promise<TopicPolicy> {
  if (!file) return DEFAULT_POLICY;
  const text = await readFile(file, 'utf8').catch((error: unknown) => {
    throw new FleetError('policy_unreadable', 1, `cannot read the broker policy ${file} (FLEET_BROKER_POLICY): ${fileProblem(error)}`);
  });
  let parsed;
  try {
    parsed = PolicyFile.parse(JSON.parse(text));
  } catch (error) {
    const why = error instanceof z.ZodError ? z.prettifyError(error).split('\n').map((line) => line.trim()).join(' ') : (error as Error).message;
    throw new FleetError('policy_invalid', 1, `the broker policy in ${file} is not valid (FLEET_BROKER_POLICY): ${why}`);
  }
  return {
    devices: parsed.devices ?? DEFAULT_POLICY.devices,
    profiles: parsed.profiles,
    services: { ...DEFAULT_POLICY.services, ...parsed.services },
  };
}

const SAFE_VALUE = /^[^/+#$]+$/;

/** The template with the identity's values in place, or undefined if it names a value the identity lacks. */
function expand(template: string, identity: CertificateIdentity): string | undefined {
  const values: Record<string, string | null> = { deviceId: identity.deviceId, batch: identity.batch, profile: identity.profile };
  let unresolved = false;
  const topic = template.replace(/\{(\w+)\}/g, (_, name: string) => {
    const value = values[name];
    if (value === undefined || value === null || !SAFE_VALUE.test(value)) {
      unresolved = true;
      return '';
    }
    return value;
  });
  return unresolved ? undefined : topic;
}

/** The rules that apply to an identity, templates expanded. */
export function rulesFor(policy: TopicPolicy, identity: CertificateIdentity): TopicRules {
  // Own keys only: a role or profile named `constructor` must find nothing, not Object's prototype.
  const named = (rules: Record<string, TopicRules>, name: string | null) => (name !== null && Object.hasOwn(rules, name) ? [rules[name]!] : []);
  const sets = identity.kind === 'service' ? named(policy.services, identity.role) : [policy.devices, ...named(policy.profiles, identity.profile)];
  const expandAll = (templates: string[]) => templates.flatMap((t) => expand(t, identity) ?? []);
  return { publish: sets.flatMap((s) => expandAll(s.publish)), subscribe: sets.flatMap((s) => expandAll(s.subscribe)) };
}

/**
 * MQTT matching of a concrete topic against a pattern that may hold + and #, with one deliberate
 * difference: a policy's # covers one or more levels, not the parent itself, so `devices/{deviceId}/#`
 * grants the tree under a device's topic and not `devices/<id>` alone. Stricter is the safe side.
 */
export function topicMatches(pattern: string, topic: string): boolean {
  const p = pattern.split('/');
  const t = topic.split('/');
  // [MQTT-4.7.2-1]: wildcards at the first level do not match $-topics.
  if (t[0]!.startsWith('$') && (p[0] === '+' || p[0] === '#')) return false;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '#') return i < t.length;
    if (i >= t.length) return false;
    if (p[i] !== '+' && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

/** Whether every topic a subscription filter can match is also matched by the pattern. */
export function filterWithin(pattern: string, filter: string): boolean {
  const p = pattern.split('/');
  const f = filter.split('/');
  if (f[0]!.startsWith('$') && (p[0] === '+' || p[0] === '#')) return false;
  for (let i = 0; i < f.length; i++) {
    if (p[i] === '#') return true;
    if (p[i] === undefined || f[i] === '#') return false;
    if (p[i] === '+') continue;
    if (f[i] === '+' || f[i] !== p[i]) return false;
  }
  return p.length === f.length;
}

/** Clients never publish into the broker's reserved trees ($SYS, $fleet). */
export function mayPublish(rules: TopicRules, topic: string): boolean {
  if (topic.startsWith('$') || topic.includes('+') || topic.includes('#')) return false;
  return rules.publish.some((pattern) => topicMatches(pattern, topic));
}

export function maySubscribe(rules: TopicRules, filter: string): boolean {
  return rules.subscribe.some((pattern) => filterWithin(pattern, filter));
}
