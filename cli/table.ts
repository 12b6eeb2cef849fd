/** How a command prints what it read: aligned columns for people, or JSON for scripts (`--json`). */

/** Dates as people read them in a table: to the second, in UTC; absent values as "-". */
export const cellOf = (value: unknown): string => {
  if (value === null || value === undefined) return '-';
  if (value instanceof Date) return value.toISOString().replace(/\.\d{3}Z$/, 'Z');
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
};

/** One line per row, columns padded to the widest cell; the last column is not padded. */
export function table(header: string[], rows: unknown[][]): string {
  const cells = [header, ...rows.map((r) => r.map(cellOf))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

/** Writes `value` as JSON when the command was given --json, and the table otherwise. */
export function printResult(options: { json?: boolean }, value: unknown, asTable: () => string): void {
  process.stdout.write(options.json ? JSON.stringify(value, null, 2) + '\n' : asTable());
}
