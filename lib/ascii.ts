/**
 * The byte values the byte-level parsers compare against (framing, the
 * commands' fast path, the journal reader, the client tools' line readers),
 * named once, and the one scan framing and commands share: skipping blanks.
 * Must not: hold any other logic.
 */

export const TAB = 9;
export const LF = 10;
export const CR = 13;
export const SPACE = 32;
export const OPEN_BRACE = 123;
/** OR-ing it into an ASCII letter gives the lower-case letter. */
export const CASE_BIT = 0x20;

/** The index of the first byte in bytes[i, end) that is no space or tab (end when there is none). */
export function skipBlankBytes(bytes: Uint8Array, i: number, end: number): number {
  while (i < end && (bytes[i] === SPACE || bytes[i] === TAB)) i++;
  return i;
}
