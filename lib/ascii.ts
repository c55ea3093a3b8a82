/**
 * The byte values the byte-level parsers compare against (framing, the
 * commands' fast path, the journal reader, the client tools' line readers),
 * named once.
 * Must not: hold logic.
 */

export const TAB = 9;
export const LF = 10;
export const CR = 13;
export const SPACE = 32;
export const OPEN_BRACE = 123;
/** OR-ing it into an ASCII letter gives the lower-case letter. */
export const CASE_BIT = 0x20;
