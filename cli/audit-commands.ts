import type { Command } from 'commander';
import type { FleetConfig } from '../core/config.js';
import type { Database } from '../core/db/database.js';
import { FleetError } from '../core/errors.js';
import { readTrustedCaCertificates } from '../core/pki/authority.js';
import { AUDIT_CHECK_IDS, auditFindings, type AuditDeps, auditSummaries, FAILING_SEVERITIES } from '../dashboard-api/audits/index.js';
import { auditEnvironment } from './start.js';
import { printResult, table } from './table.js';

type WithRegistry = <T>(run: (db: Database, config: FleetConfig) => Promise<T>) => Promise<T>;

/** Checked here, not by commander, so a bad number exits 2 like every other usage error. */
const wholeNumber = (option: string) => (text: string): number => {
  if (!/^\d{1,9}$/.test(text)) throw new FleetError('usage', 2, `${option} takes a whole number, not "${text}"`);
  return Number(text);
};

interface AuditOptions {
  days?: number;
  hours?: number;
  count?: number;
  limit: number;
  cursor?: string;
  json?: boolean;
}

/** The options as typed on the command line. */
interface GivenOptions {
  days?: string;
  hours?: string;
  count?: string;
  limit: string;
  cursor?: string;
  json?: boolean;
}

/** A bad check or threshold is the caller's mistake: exit 2, as for any usage error, never 1 (which means findings). */
async function asUsage<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof FleetError && (error.status === 400 || error.status === 404)) throw new FleetError('usage', 2, error.message);
    throw error;
  }
}

/** `fleet audit [check]`: the security audits, as GET /v1/audits serves them, read straight from the registry. */
export function registerAuditCommands(program: Command, withRegistry: WithRegistry): void {
  program
    .command('audit')
    .description(
      'security audits of the fleet: every check with its number of findings, or one check\'s findings; ' +
        'exits 1 when a check of severity high or critical has findings (for cron), 2 on a usage error',
    )
    .argument('[check]', `one check: ${AUDIT_CHECK_IDS.join(', ')}`)
    .option('--days <n>', 'the threshold in days, for checks measured in days')
    .option('--hours <n>', 'certificate_shared: the window in hours')
    .option('--count <n>', 'conflicting_client_ids: takeovers in 24 hours')
    .option('--limit <n>', 'findings to show (1 to 500)', '100')
    .option('--cursor <cursor>', 'continue after the findings shown before (printed when there are more)')
    .option('--json', 'print JSON, as the API answers, instead of a table')
    .action(async (check: string | undefined, given: GivenOptions) => {
      const number = (name: 'days' | 'hours' | 'count' | 'limit') => (given[name] === undefined ? undefined : wholeNumber(`--${name}`)(given[name]));
      const options: AuditOptions = { days: number('days'), hours: number('hours'), count: number('count'), limit: number('limit')!, cursor: given.cursor, json: given.json };
      const failing = await withRegistry(async (db, config) => {
        const deps: AuditDeps = { pool: db.pool, clock: () => new Date(), ca: await readTrustedCaCertificates(db.pool), audits: auditEnvironment(config) };
        return check === undefined ? printSummaries(deps, options) : printFindings(deps, check, options);
      });
      if (failing) process.exitCode = 1;
    });
}

async function printSummaries(deps: AuditDeps, options: AuditOptions): Promise<boolean> {
  if ([options.days, options.hours, options.count, options.cursor].some((o) => o !== undefined)) {
    throw new FleetError('usage', 2, 'thresholds and --cursor apply to one check: fleet audit <check> --days <n>');
  }
  const { at, audits } = await auditSummaries(deps);
  printResult(options, { at: at.toISOString(), audits }, () =>
    table(
      ['CHECK', 'SEVERITY', 'FINDINGS', 'TITLE'],
      audits.map((a) => [a.check, a.severity, a.findings, a.title]),
    ),
  );
  return audits.some((a) => !a.ok && FAILING_SEVERITIES.has(a.severity));
}

async function printFindings(deps: AuditDeps, check: string, options: AuditOptions): Promise<boolean> {
  const result = await asUsage(() =>
    auditFindings(deps, check, {
      thresholds: { days: options.days, hours: options.hours, count: options.count },
      limit: options.limit,
      cursor: options.cursor,
    }),
  );
  printResult(options, result, () => {
    const head = `${result.check} (${result.severity}): ${result.title}\n`;
    if (result.findings.length === 0) return `${head}no findings\n`;
    return head + table(['DEVICE', 'SERIAL', 'DETAIL'], result.findings.map((f) => [f.deviceId, f.serial, f.detail]));
  });
  if (result.nextCursor && !options.json) {
    process.stderr.write(`More findings: fleet audit ${check} --cursor ${result.nextCursor}${thresholdArgs(options)}\n`);
  }
  return result.findings.length > 0 && FAILING_SEVERITIES.has(result.severity);
}

const thresholdArgs = (o: AuditOptions) =>
  (['days', 'hours', 'count'] as const).map((name) => (o[name] === undefined ? '' : ` --${name} ${o[name]}`)).join('');
