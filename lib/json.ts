/**
 * JSON text helpers for the hot path.
 *
 * Owns: encoding a string as JSON text without the native call when nothing
 * needs escaping (most keys and plain values).
 * Must not: know about commands or replies.
 */

/** JSON.stringify for a string, skipping the native call for the common case of nothing to escape. */
export function jsonString(text: string): string {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    // Quote, backslash, control characters and surrogates (which may be lone) need JSON.stringify.
    if (c < 0x20 || c === 0x22 || c === 0x5c || (c >= 0xd800 && c <= 0xdfff)) return JSON.stringify(text);
  }
  return '"' + text + '"';
}
