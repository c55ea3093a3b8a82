/**
 * String helpers for the hot path.
 *
 * Owns: encoding a string as JSON without the native call when nothing needs
 * escaping, `detach`, which copies a string that will be kept, and
 * `latin1Text`, the cheapest exact decode of bytes known to be ASCII.
 * Must not: know about commands or replies.
 *
 * Why detach: request lines are slices of one string decoded from a whole
 * batch of input, and JavaScriptCore lets a slice share its parent's buffer.
 * A 12-byte key kept in the store as such a slice would pin the whole decoded
 * batch (up to hundreds of KB). Anything kept beyond the request (stored keys,
 * values, watched keys) is detached first.
 */

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
