import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createBrokerMetrics, type MetricsServer, startMetricsServer, type BrokerMetrics } from '../broker/metrics.js';
import { loadConfig } from '../core/config.js';
import { silentLogger } from '../core/log.js';
import { parseExposition, sampleValue } from './support/prometheus.js';

let metrics: BrokerMetrics;
let server: MetricsServer;
before(async () => {
  metrics = createBrokerMetrics();
  server = await startMetricsServer(metrics.registry, { host: '127.0.0.1', port: 0, log: silentLogger() });
});
after(() => server?.close());

const scrape = async (pathname = '/metrics') => {
  const res = await fetch(`http://127.0.0.1:${server.port}${pathname}`);
  return { status: res.status, contentType: res.headers.get('content-type'), text: await res.text() };
};

describe('broker metrics over HTTP', () => {
  test('a scrape shows what the broker counted, as Prometheus exposition text', async () => {
    metrics.refused('revoked');
    metrics.refused('revoked');
    metrics.refused('unknown_certificate');
    metrics.denied('publish');
    metrics.connected();
    metrics.connected();
    metrics.connected();
    metrics.disconnected();
    metrics.observeConnect(0.003);
    metrics.observeConnect(0.2);
    metrics.revocationClosed(4);
    metrics.revocationClosed(0);

    const res = await scrape();
    assert.equal(res.status, 200);
    assert.match(String(res.contentType), /^text\/plain; version=0\.0\.4/);
    assert.match(res.text, /^fleet_broker_refusals_total\{reason="revoked"\} 2$/m);
    const page = parseExposition(res.text);
    assert.equal(sampleValue(page, 'fleet_broker_refusals_total', { reason: 'revoked' }), 2);
    assert.equal(sampleValue(page, 'fleet_broker_refusals_total', { reason: 'unknown_certificate' }), 1);
    assert.equal(sampleValue(page, 'fleet_broker_denials_total', { action: 'publish' }), 1);
    assert.equal(sampleValue(page, 'fleet_broker_denials_total', { action: 'subscribe' }), 0, 'present before the first denial');
    assert.equal(sampleValue(page, 'fleet_broker_sessions'), 2);
    assert.equal(sampleValue(page, 'fleet_broker_sessions_admitted_total'), 3);
    assert.equal(sampleValue(page, 'fleet_broker_connect_seconds_count'), 2);
    assert.equal(sampleValue(page, 'fleet_broker_connect_seconds_bucket', { le: '0.005' }), 1);
    assert.equal(sampleValue(page, 'fleet_broker_connect_seconds_bucket', { le: '+Inf' }), 2);
    assert.ok(Math.abs(sampleValue(page, 'fleet_broker_connect_seconds_sum')! - 0.203) < 1e-9);
    assert.equal(sampleValue(page, 'fleet_broker_revocation_closed_sessions_total'), 4);
  });

  test('every fleet_broker_ metric has help text and a type', async () => {
    const page = parseExposition((await scrape()).text);
    const expected = {
      fleet_broker_refusals_total: 'counter',
      fleet_broker_denials_total: 'counter',
      fleet_broker_sessions: 'gauge',
      fleet_broker_sessions_admitted_total: 'counter',
      fleet_broker_connect_seconds: 'histogram',
      fleet_broker_revocation_closed_sessions_total: 'counter',
    };
    for (const [name, type] of Object.entries(expected)) {
      assert.equal(page.type.get(name), type, name);
      assert.ok((page.help.get(name) ?? '').length > 20, `${name} explains itself`);
    }
  });

  test('process CPU, resident memory and event loop lag are on the same registry', async () => {
    const page = parseExposition((await scrape()).text);
    for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds']) {
      const value = sampleValue(page, name);
      assert.ok(value !== undefined && Number.isFinite(value), `${name} is exposed`);
    }
    assert.ok(sampleValue(page, 'process_resident_memory_bytes')! > 1024 * 1024);
  });

  test('answers 404 for anything but GET /metrics', async () => {
    for (const pathname of ['/', '/metrics/', '/metricsx', '/debug']) assert.equal((await scrape(pathname)).status, 404, pathname);
    const post = await fetch(`http://127.0.0.1:${server.port}/metrics`, { method: 'POST', body: 'x' });
    assert.equal(post.status, 404);
    await post.text();
    assert.equal((await scrape('/metrics?name=x')).status, 200, 'a query string does not change the page');
  });
});

describe('several fleets in one process', () => {
  test('each has its own registry and counts of its own', async () => {
    const first = createBrokerMetrics();
    const second = createBrokerMetrics();
    first.refused('rate_limited');
    const firstPage = parseExposition(await first.registry.metrics());
    const secondPage = parseExposition(await second.registry.metrics());
    assert.equal(sampleValue(firstPage, 'fleet_broker_refusals_total', { reason: 'rate_limited' }), 1);
    assert.equal(sampleValue(secondPage, 'fleet_broker_refusals_total', { reason: 'rate_limited' }), undefined);
  });

  test('two metrics servers run side by side and stop cleanly', async () => {
    const other = createBrokerMetrics();
    other.refused('expired');
    const otherServer = await startMetricsServer(other.registry, { host: '127.0.0.1', port: 0, log: silentLogger() });
    try {
      assert.notEqual(otherServer.port, server.port);
      const text = await (await fetch(`http://127.0.0.1:${otherServer.port}/metrics`)).text();
      assert.equal(sampleValue(parseExposition(text), 'fleet_broker_refusals_total', { reason: 'expired' }), 1);
    } finally {
      await otherServer.close();
    }
    await assert.rejects(fetch(`http://127.0.0.1:${otherServer.port}/metrics`), 'closed means closed');
  });
});

describe('metrics configuration', () => {
  test('binds to loopback on 9464 unless told otherwise', () => {
    const defaults = loadConfig({});
    assert.equal(defaults.metricsHost, '127.0.0.1');
    assert.equal(defaults.metricsPort, 9464);
    const set = loadConfig({ FLEET_METRICS_HOST: '0.0.0.0', FLEET_METRICS_PORT: '0' });
    assert.equal(set.metricsHost, '0.0.0.0');
    assert.equal(set.metricsPort, 0);
    assert.throws(() => loadConfig({ FLEET_METRICS_PORT: '70000' }), /FLEET_METRICS_PORT/);
  });
});
