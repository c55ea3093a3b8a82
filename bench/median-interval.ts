/**
 * The median of a benchmark's rounds, and how far it can be trusted.
 *
 * Owns: the median, and a distribution-free confidence interval for it
 * (order statistics: each round lands above the true median with probability
 * 1/2, so the number above is binomial). No assumption about the shape of
 * the machine's noise, which on a shared VM is anything but normal.
 * Must not: run servers or print anything.
 */

/** The middle value (the upper middle one for an even count). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error("median of no values");
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}

export interface MedianInterval {
  readonly lo: number;
  readonly hi: number;
  /** The probability that the interval holds the true median (at least `confidence` when the rounds allow it). */
  readonly coverage: number;
}

/**
 * The narrowest interval between order statistics, [k-th smallest, k-th
 * largest], that holds the true median with probability ≥ confidence. With
 * too few rounds for that, the whole range and its (lower) coverage: 7
 * rounds give the range at 98 %, 9 rounds the second smallest to the second
 * largest at 96 %.
 */
export function medianInterval(xs: readonly number[], confidence = 0.9): MedianInterval {
  if (xs.length === 0) throw new Error("interval of no values");
  const sorted = [...xs].sort((a, b) => a - b);
  const n = sorted.length;
  let k = 0;
  // Coverage of [sorted[k], sorted[n-1-k]] is 1 - 2·P(Binomial(n, 1/2) ≤ k).
  while (2 * (k + 1) <= n - 1 && 1 - 2 * binomialHalfCdf(n, k + 1) >= confidence) k++;
  return { lo: sorted[k]!, hi: sorted[n - 1 - k]!, coverage: 1 - 2 * binomialHalfCdf(n, k) };
}

/** P(X ≤ k) for X ~ Binomial(n, 1/2). */
function binomialHalfCdf(n: number, k: number): number {
  let term = 2 ** -n; // P(X = 0)
  let sum = term;
  for (let i = 1; i <= k; i++) {
    term = (term * (n - i + 1)) / i;
    sum += term;
  }
  return sum;
}
