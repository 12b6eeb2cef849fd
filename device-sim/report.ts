import type { Counters } from './counters.js';
import type { SimOptions } from './run.js';

type Percentiles = { p50: number | null; p95: number | null; p99: number | null; count: number };

export interface TimelinePoint {
  t: number;
  connected: number;
  connectsPerSecond: number;
  handshakeP95: number | null;
  connackP95: number | null;
  renewals: number;
}

export interface SimReport extends Counters {
  devices: number;
  /** Devices with a live session at the end of the run. */
  connected: number;
  /** Enrolled by this run; a rerun on the same state directory enrolls 0. */
  enrolled: number;
  reused: number;
  revoked: number;
  revokedDevices: string[];
  expired: number;
  expiredDevices: string[];
  durationSeconds: number;
  workers: number;
  profile: string;
  /** TCP connect and TLS handshake, from the socket opening to secureConnect. */
  handshakeMs: Percentiles;
  /** From the TLS session being up to CONNACK: the broker's admission (registry, policy). */
  connackMs: Percentiles;
  connectRate: number | null;
  timeline: TimelinePoint[];
}

const ms = (p: Percentiles) => (p.count === 0 ? 'none' : `${p.p50} / ${p.p95} / ${p.p99} ms (${p.count})`);

/** The end-of-run table, for a person at a terminal. */
export function summaryTable(r: SimReport): string {
  const rows: [string, string][] = [
    ['devices', String(r.devices)],
    ['connected at end', String(r.connected)],
    ['enrolled now / reused', `${r.enrolled} / ${r.reused}`],
    ['revoked', r.revoked ? `${r.revoked} (${r.revokedDevices.slice(0, 5).join(', ')}${r.revoked > 5 ? ', …' : ''})` : '0'],
    ['expired', String(r.expired)],
    ['duration', `${r.durationSeconds} s on ${r.workers} worker(s), profile ${r.profile}`],
    ['handshake p50/p95/p99', ms(r.handshakeMs)],
    ['CONNACK p50/p95/p99', ms(r.connackMs)],
    ['connect rate', r.connectRate === null ? 'n/a' : `${r.connectRate} /s`],
    ['connects / attempts', `${r.connects} / ${r.connectAttempts}`],
    ['resumed TLS sessions', String(r.resumed)],
    ['publishes (lost on link)', `${r.publishes} (${r.lostOnLink})`],
    ['link drops', String(r.linkDrops)],
    ['renewals (failed)', `${r.renewals} (${r.renewalFailures})`],
    ['commands answered', String(r.commandsAnswered)],
    ...Object.entries(r.failures).map(([reason, n]): [string, string] => [`failure: ${reason}`, String(n)]),
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(width)}  ${v}`).join('\n') + '\n';
}

const escape = (text: string) => text.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]!);

/** A line chart as inline SVG: no script, no CDN, opens anywhere. */
function lineChart(title: string, points: TimelinePoint[], series: { name: string; color: string; value: (p: TimelinePoint) => number | null }[]): string {
  const w = 760, h = 240, left = 50, bottom = 30, top = 24, right = 10;
  const tMax = Math.max(1, ...points.map((p) => p.t));
  const yMax = Math.max(1, ...points.flatMap((p) => series.map((s) => s.value(p) ?? 0)));
  const x = (t: number) => left + (t / tMax) * (w - left - right);
  const y = (v: number) => h - bottom - (v / yMax) * (h - bottom - top);
  const lines = series.map((s) => {
    const path = points
      .filter((p) => s.value(p) !== null)
      .map((p, i) => `${i === 0 ? 'M' : 'L'}${x(p.t).toFixed(1)},${y(s.value(p)!).toFixed(1)}`)
      .join(' ');
    return `<path d="${path}" fill="none" stroke="${s.color}" stroke-width="1.5"/>`;
  });
  const legend = series.map((s, i) => `<text x="${left + 10 + i * 200}" y="14" fill="${s.color}" font-size="12">${escape(s.name)}</text>`);
  return `<h2>${escape(title)}</h2>
<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" font-family="sans-serif">
<line x1="${left}" y1="${h - bottom}" x2="${w - right}" y2="${h - bottom}" stroke="#888"/><line x1="${left}" y1="${top}" x2="${left}" y2="${h - bottom}" stroke="#888"/>
<text x="${left - 4}" y="${top + 4}" font-size="11" text-anchor="end">${Math.round(yMax * 10) / 10}</text>
<text x="${left - 4}" y="${h - bottom}" font-size="11" text-anchor="end">0</text>
<text x="${w - right}" y="${h - 8}" font-size="11" text-anchor="end">${tMax} s</text>
${legend.join('\n')}
${lines.join('\n')}
</svg>`;
}

export function htmlReport(r: SimReport, options: SimOptions): string {
  const { timeline, ...figures } = r;
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>fleet-auth device simulator: ${r.devices} devices</title>
<style>body{font-family:sans-serif;margin:2em;max-width:800px} pre{background:#f4f4f4;padding:1em}</style></head>
<body><h1>Device simulator: ${r.devices} devices, ${r.durationSeconds} s</h1>
<p>profile ${escape(options.profile)}, ramp ${options.ramp}/s, ${options.rate} msg/s of ${options.size} bytes per device${options.lifetime ? `, certificate lifetime ${escape(options.lifetime)}` : ''}.</p>
<pre>${escape(summaryTable(r))}</pre>
${lineChart('Connections over time', timeline, [
  { name: 'connected devices', color: '#1f77b4', value: (p) => p.connected },
  { name: 'connects per second', color: '#ff7f0e', value: (p) => p.connectsPerSecond },
])}
${lineChart('Latency over time (p95 per second, ms)', timeline, [
  { name: 'TLS handshake p95', color: '#2ca02c', value: (p) => p.handshakeP95 },
  { name: 'CONNACK p95', color: '#d62728', value: (p) => p.connackP95 },
])}
${lineChart('Renewals (cumulative)', timeline, [{ name: 'renewals', color: '#9467bd', value: (p) => p.renewals }])}
<h2>JSON</h2><pre>${escape(JSON.stringify(figures, null, 2))}</pre>
</body></html>
`;
}
