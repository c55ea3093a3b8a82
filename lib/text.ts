/**
 * String helpers for the hot path.
 *
 * Owns: encoding a string as JSON without the native call when nothing needs
 * escaping, `detach`, which copies a string that will be kept, and
 * `latin1Text`, the cheapest exact decode of bytes known to be ASCII, and
 * `strictUtf8`, the decoder that refuses bytes that are not UTF-8, and
 * `sortByCodePoint`, the order of KEYS.
 * Must not: know about commands or replies.
 *
 * Why detach: JavaScriptCore lets a slice share its parent's buffer. Request
 * lines are decoded one by one (framing.ts), so a key sliced from a line pins
 * at most that line: harmless for GET, DEL and KEYS, whose lines are little
 * more than their key, but a PUT line also holds its value, which may be
 * megabytes. A PUT's key is therefore detached before a transaction keeps it.
 * (The store itself keeps bytes, never the caller's strings.)
 */

/**
 * Decodes UTF-8 exactly: bytes that are not UTF-8 throw instead of becoming
 * U+FFFD, and a BOM is kept as data. For request lines (the server's framer,
 * txkv cli's scripts) and journal records.
 */
export const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** JSON.stringify for a string, skipping the native call for the common case of nothing to escape. */
export function jsonString(text: string): string {
  return needsEscape(text) ? JSON.stringify(text) : '"' + text + '"';
}

/** A copy of text that shares no buffer with the string it was sliced from. */
export function detach(text: string): string {
  // JSON.stringify always builds a new string; without escapes its inside is exactly text.
  if (!needsEscape(text)) return JSON.stringify(text).slice(1, -1);
  return Buffer.from(text, "utf16le").toString("utf16le");
}

/** Quote, backslash, control characters and surrogates (which may be lone) need JSON escaping. */
function needsEscape(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return true;
  }
  return false;
}

/** Bun's Buffer#latin1Slice, which works on any Uint8Array. */
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice(this: Uint8Array, start: number, end: number): string })
  .latin1Slice;

/**
 * bytes[start, end) as a string of one code unit per byte: exact for ASCII
 * (the caller checks), and a fresh string that pins no buffer.
 */
export function latin1Text(bytes: Uint8Array, start: number, end: number): string {
  return latin1Slice.call(bytes, start, end);
}

const SURROGATE = /[\uD800-\uDFFF]/;

/**
 * Sorts in place by Unicode code point: the order of the strings' UTF-8
 * bytes, as Python's `sorted`, Go, Rust and PostgreSQL's "C" collation
 * order them. JavaScript's own sort compares UTF-16 code units, which puts
 * a character beyond U+FFFF (a surrogate pair) before U+E000-U+FFFF. The
 * two orders agree when no string holds a surrogate, the common case; only
 * otherwise does the slower comparison run. A lone surrogate (the JSON form
 * accepts one) sorts as its own code point, as Python orders it.
 */
export function sortByCodePoint(strings: string[]): string[] {
  strings.sort();
  if (strings.some((text) => SURROGATE.test(text))) strings.sort(compareCodePoints);
  return strings;
}

function compareCodePoints(a: string, b: string): number {
  // Equal code points so far means equal code units so far: both strings are at the same index.
  for (let i = 0; i < a.length && i < b.length; ) {
    const x = a.codePointAt(i)!;
    const y = b.codePointAt(i)!;
    if (x !== y) return x - y;
    i += x > 0xffff ? 2 : 1;
  }
  return a.length - b.length;
}
