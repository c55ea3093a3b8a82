import { describe, expect, test } from "bun:test";
import { median, medianInterval } from "../bench/median-interval.ts";

describe("median of benchmark rounds", () => {
  test("is the middle value, the upper middle one for an even count, whatever the order", () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(3);
    expect(median([5])).toBe(5);
  });

  test("does not reorder the caller's rounds", () => {
    const rounds = [3, 1, 2];
    median(rounds);
    medianInterval(rounds);
    expect(rounds).toEqual([3, 1, 2]);
  });

  test("refuses no values", () => {
    expect(() => median([])).toThrow();
    expect(() => medianInterval([])).toThrow();
  });
});

describe("confidence interval of the median (order statistics)", () => {
  test("7 rounds: the whole range, which holds the median with probability 1 - 2/128", () => {
    const interval = medianInterval([1.05, 0.93, 0.98, 1.1, 0.9, 1.0, 1.02]);
    expect(interval).toEqual({ lo: 0.9, hi: 1.1, coverage: 1 - 2 / 128 });
  });

  test("9 rounds: second smallest to second largest, coverage 1 - 2·10/512", () => {
    const interval = medianInterval([9, 1, 8, 2, 7, 3, 6, 4, 5]);
    expect(interval).toEqual({ lo: 2, hi: 8, coverage: 1 - (2 * 10) / 512 });
  });

  test("11 rounds: third from each end (93 %), not fourth (77 %, under 90 %)", () => {
    const interval = medianInterval([11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
    expect(interval.lo).toBe(3);
    expect(interval.hi).toBe(9);
    expect(interval.coverage).toBeCloseTo(1 - (2 * 67) / 2048, 12);
  });

  test("too few rounds for the confidence asked: the whole range, with its lower coverage", () => {
    expect(medianInterval([2, 1, 3])).toEqual({ lo: 1, hi: 3, coverage: 0.75 });
    expect(medianInterval([4])).toEqual({ lo: 4, hi: 4, coverage: 0 });
  });

  test("a lower confidence narrows the interval", () => {
    const rounds = [1, 2, 3, 4, 5, 6, 7];
    expect(medianInterval(rounds, 0.5)).toEqual({ lo: 3, hi: 5, coverage: 1 - (2 * 29) / 128 });
  });
});
