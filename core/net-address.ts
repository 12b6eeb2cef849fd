import { isIPv4 } from 'node:net';

/**
 * Who a rate applies to. An IPv4-mapped IPv6 address is its IPv4 address; an IPv6 address counts
 * by its /64, since one host is routinely given a whole /64 and could otherwise pick a fresh
 * address for every connection.
 */
/** An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d: its IPv4 address; anything else as it is. */
export function unmapIPv4(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped && isIPv4(mapped[1]!) ? mapped[1]! : address;
}

export function rateKeyOf(address: string): string {
  const bare = unmapIPv4(address.replace(/%.*$/, ''));
  if (!bare.includes(':')) return bare;
  const groups = ipv6Groups(bare);
  return groups ? `${groups.slice(0, 4).join(':')}::/64` : bare;
}

/** The eight 16-bit groups of an IPv6 address, written out; undefined when it is not one. */
function ipv6Groups(address: string): string[] | undefined {
  const halves = address.toLowerCase().split('::');
  if (halves.length > 2) return undefined;
  const split = (part: string | undefined) => (part ? part.split(':') : []);
  const head = split(halves[0]);
  const tail = split(halves[1]);
  // A trailing dotted quad (::ffff:1.2.3.4, 64:ff9b::1.2.3.4) fills the last two groups.
  const width = (groups: string[]) => groups.length + (groups.at(-1)?.includes('.') ? 1 : 0);
  const missing = 8 - width(head) - width(tail);
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const groups = [...head, ...Array<string>(halves.length === 1 ? 0 : missing).fill('0'), ...tail];
  return groups.map((group) => (/^[0-9a-f]{1,4}$/.test(group) ? parseInt(group, 16).toString(16) : group));
}
