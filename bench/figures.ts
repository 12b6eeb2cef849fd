import { InvalidArgumentError } from 'commander';

/** A command-line count: a whole number of 1 or more. */
export const positiveInteger = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('a whole number of 1 or more');
  return n;
};

/** Nearest-rank percentile of sorted values. */
export const percentile = (sorted: number[], p: number): number => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
