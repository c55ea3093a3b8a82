/**
 * JSON parsing that keeps every integer exactly as written.
 *
 * `JSON.parse` reads numbers as doubles, so an integer beyond 2^53 (a 64-bit
 * id, say) comes back changed: 12345678901234567890 becomes
 * 12345678901234567000. txkv stores values as JSON text and must hand back
 * what it was given, as the Python server it was specified from does, so
 * such integers are kept as their source text (`JSON.rawJSON`), which
 * `JSON.stringify` writes back verbatim. Numbers with a fraction or an
 * exponent are doubles by definition and are left to `JSON.parse`.
 *
 * The bundled client and `txkv cli` read such integers as `bigint` instead
 * (what a JavaScript caller can compute with) and write a `bigint` as its
 * digits.
 *
 * Owns: that one rule. Used wherever a value's JSON text is parsed and
 * written again (requests in the JSON form, journal records, a plain JSON
 * data file) and by the client. Must not: validate shapes (valibot does) or
 * touch I/O.
 */

interface JsonWithRawText extends JSON {
  rawJSON(text: string): object;
  isRawJSON(value: unknown): boolean;
}
const json = JSON as JsonWithRawText;

/** Digits in the longest integer that is always exact as a double (999,999,999,999,999 < 2^53). */
const ALWAYS_EXACT_DIGITS = 15;

/**
 * `JSON.parse`, except that an integer beyond 2^53 comes back as raw JSON
 * text, which `JSON.stringify` writes back verbatim (even 10^21, which a
 * double holds but would print as 1e+21).
 */
export function parseJsonExact(text: string): unknown {
  return parseKeepingIntegers(text, json.rawJSON);
}

/**
 * `JSON.parse` for JavaScript callers (the client): an integer beyond 2^53
 * comes back as a `bigint` unless a `number` holds it and prints it the same
 * (2^53 and 10^20 stay numbers; 12345678901234567890, which would round,
 * and 10^21, which would print as 1e+21, are bigints).
 */
export function parseJsonWithBigInts(text: string): unknown {
  return parseKeepingIntegers(text, (digits, double) => (String(double) === digits ? double : BigInt(digits)));
}

function parseKeepingIntegers(text: string, keep: (digits: string, double: number) => unknown): unknown {
  // The reviver costs a call per value: only text with a long run of digits can need it.
  if (!hasLongDigitRun(text)) return JSON.parse(text);
  return JSON.parse(text, (_key: string, value: unknown, context?: { source?: string }) => {
    if (typeof value !== "number" || Number.isSafeInteger(value)) return value;
    const source = context?.source;
    return source !== undefined && isIntegerLiteral(source) ? keep(source, value) : value;
  });
}

/** True for the stand-in `parseJsonExact` returns for an integer it kept as text. */
export function isRawJsonText(value: unknown): boolean {
  return json.isRawJSON(value);
}

/**
 * `JSON.stringify` for what a JavaScript caller stores: a `bigint` is written
 * as its digits (JSON.stringify would throw), and NaN or ±Infinity, which
 * JSON cannot carry and JSON.stringify would turn into null, throw.
 */
export function stringifyJson(value: unknown, indent?: number): string {
  return JSON.stringify(value, exactNumbers, indent);
}

function exactNumbers(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return json.rawJSON(value.toString());
  if (typeof value === "number" && !Number.isFinite(value)) throw new TypeError(`${value} cannot be stored: JSON has no such number`);
  return value;
}

/**
 * stringifyJson for a value to store: also throws (TypeError) where
 * `JSON.stringify` would change the value without a word. `undefined`, a
 * function or a symbol would vanish from an object, turn into null in an
 * array, or leave the request without its value. A Map or a Set would be
 * stored as `{}`. (A Date, like anything with `toJSON`, is stored as what
 * that gives: JSON's own rule.)
 */
export function stringifyStoredValue(value: unknown): string {
  return JSON.stringify(value, strictlyJson);
}

function strictlyJson(key: string, value: unknown): unknown {
  const what =
    value === undefined || typeof value === "function" || typeof value === "symbol"
      ? typeof value
      : value instanceof Map || value instanceof Set
        ? `a ${value.constructor.name}`
        : null;
  if (what !== null) throw new TypeError(`${what}${key === "" ? "" : ` (at "${key}")`} cannot be stored: JSON has no such value`);
  return exactNumbers(key, value);
}

/** True when a number outside any string has more digits than a double always holds exactly. */
function hasLongDigitRun(text: string): boolean {
  let run = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === BACKSLASH) i++;
      else if (c === QUOTE) inString = false;
    } else if (c >= 48 && c <= 57) {
      if (++run > ALWAYS_EXACT_DIGITS) return true;
    } else {
      run = 0;
      if (c === QUOTE) inString = true;
    }
  }
  return false;
}

const QUOTE = 34;
const BACKSLASH = 92;

/** A JSON number with neither fraction nor exponent: an optional minus, then digits. */
function isIntegerLiteral(source: string): boolean {
  for (let i = source.charCodeAt(0) === 45 ? 1 : 0; i < source.length; i++) {
    const c = source.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}
