/**
 * valibot schemas for numeric command-line options, shared by the server's
 * configuration, the connection options of `txkv cli` and `txkv bench`, and
 * the scripts in bench/, so that every tool accepts and refuses the same
 * spellings (digits only: not `0x1F90`, not ` 1e3`).
 *
 * Owns: turning one option's text into a number, or a message saying what
 * was expected; parseArgs' errors as one line. Must not: read argv or the
 * environment, or exit.
 */
import * as v from "valibot";
import { errorMessage } from "./errors.ts";

/** A whole number written in decimal digits, from min to max. */
export function wholeNumber(min: number, max: number = Number.MAX_SAFE_INTEGER) {
  const unbounded = max === Number.MAX_SAFE_INTEGER;
  const expected = unbounded ? `expected a whole number of at least ${min}` : `expected a whole number from ${min} to ${max}`;
  // Past 2^53 digits no longer name one number: say so rather than repeat "at least".
  const tooLarge = unbounded ? `expected a whole number of at most ${max}` : expected;
  return v.pipe(v.string(), v.regex(/^\d+$/, expected), v.transform(Number), v.number(), v.minValue(min, expected), v.maxValue(max, tooLarge));
}

/** A positive decimal number (`3`, `0.5`), at most max. */
export function positiveNumber(max: number = Number.MAX_VALUE) {
  const expected = max === Number.MAX_VALUE ? "expected a positive number" : `expected a positive number of at most ${max}`;
  return v.pipe(
    v.string(),
    v.regex(/^(\d+\.?\d*|\.\d+)$/, expected),
    v.transform(Number),
    v.number(),
    v.gtValue(0, expected),
    v.maxValue(max, expected),
  );
}

/** The option's value through schema; throws an Error naming the option (`--secs abc: expected ...`). */
export function parseOption<T>(name: string, text: string, schema: v.GenericSchema<string, T>): T {
  const parsed = v.safeParse(schema, text);
  if (!parsed.success) throw new Error(`--${name} ${text}: ${parsed.issues[0].message}`);
  return parsed.output;
}

/**
 * A util.parseArgs error as one line. Its hint is on the following lines
 * ("To specify an option argument starting with a dash use '--n=-XYZ'"), so
 * keeping only the first line dropped the part that says what to do.
 */
export function optionErrorMessage(error: unknown): string {
  const message = errorMessage(error);
  return message.split("\n").map((line) => line.trim()).filter((line) => line !== "").join(" ");
}
