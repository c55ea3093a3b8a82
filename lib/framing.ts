/**
 * Framing: a connection's bytes → request lines.
 *
 * Owns: splitting on LF (dropping a CR before it), skipping blank lines, the
 * request size limit (a too-long request becomes one TOO_LARGE event and its
 * bytes are discarded up to the next LF), UTF-8 validation, and the partial
 * (unterminated) request that the server may run after a pause or half-close.
 * Holds at most about one limit of an incomplete request in memory; complete
 * lines not yet taken stay only in the chunk they arrived in.
 * Must not: parse commands, know about sockets or timers.
 */

/** A request that exceeded the size limit (already discarded). */
export const TOO_LARGE = Symbol("TOO_LARGE");
/** A request that was not valid UTF-8. */
export const INVALID_UTF8 = Symbol("INVALID_UTF8");

/** One framed request: its text, or why it could not be read. */
export type Frame = string | typeof TOO_LARGE | typeof INVALID_UTF8;

const LF = 10;
const CR = 13;
const SPACE = 32;
const TAB = 9;

const EMPTY = new Uint8Array(0);
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

export class LineFramer {
  /** Unconsumed input bytes; `pos` is where the next undecoded request starts. */
  private buf: Uint8Array = EMPTY;
  private pos = 0;
  /** Complete lines already decoded in one go, served from `textPos`. */
  private text = "";
  private textPos = 0;
  /** True when `text` is all ASCII, so a line's length is its byte length. */
  private textIsAscii = true;
  /** True while skipping the rest of a too-long request, up to its LF. */
  private discarding = false;

  constructor(private readonly maxRequestBytes: number) {}

  /** Adds a chunk. The framer may keep a reference: call `retain()` before the chunk's memory is reused. */
  push(chunk: Uint8Array): void {
    if (this.pos >= this.buf.length) {
      this.buf = chunk;
    } else {
      const rest = this.buf.subarray(this.pos);
      const joined = new Uint8Array(rest.length + chunk.length);
      joined.set(rest, 0);
      joined.set(chunk, rest.length);
      this.buf = joined;
    }
    this.pos = 0;
  }

  /**
   * The next complete request, or null when none is complete yet. May return
   * TOO_LARGE for a request still being received (once; the rest of it is then
   * discarded as it arrives).
   */
  next(): Frame | null {
    for (;;) {
      if (this.textPos < this.text.length) {
        const frame = this.nextDecodedLine();
        if (frame !== null) return frame;
        continue;
      }
      if (this.pos >= this.buf.length) return null;
      if (this.discarding && !this.skipDiscarded()) return null;
      const lastLf = this.buf.lastIndexOf(LF);
      if (lastLf < this.pos) return this.checkPartialSize();
      if (!this.decodeCompleteLines(lastLf)) {
        const frame = this.nextLineSlowly();
        if (frame !== null) return frame;
      }
    }
  }

  /** True when bytes of an unterminated request are waiting (not counting a discarded one). */
  hasPartial(): boolean {
    return !this.discarding && this.textPos >= this.text.length && this.pos < this.buf.length;
  }

  /**
   * Ends the unterminated request (pause or half-close): returns it as a frame,
   * or null when it is blank or was already answered as TOO_LARGE.
   * Only call when `next()` returned null.
   */
  takePartial(): Frame | null {
    const start = this.pos;
    const end = this.buf.length;
    this.pos = end;
    if (this.discarding) {
      this.discarding = false;
      return null;
    }
    if (start >= end) return null;
    const trimmedEnd = this.buf[end - 1] === CR ? end - 1 : end;
    return this.frameOfBytes(start, trimmedEnd);
  }

  /** Copies unconsumed bytes out of the caller's chunk so it can be reused. */
  retain(): void {
    this.buf = this.pos >= this.buf.length ? EMPTY : this.buf.slice(this.pos);
    this.pos = 0;
  }

  /** Bytes held: undecoded input plus decoded lines not yet taken. */
  get bufferedBytes(): number {
    return this.buf.length - this.pos + (this.text.length - this.textPos);
  }

  /**
   * The fast path: decodes every complete line up to lastLf with one native
   * call. Returns false, consuming nothing, when those bytes are not valid
   * UTF-8 (then lines are decoded one by one so only the bad one fails).
   */
  private decodeCompleteLines(lastLf: number): boolean {
    const region = this.buf.subarray(this.pos, lastLf + 1);
    let text: string;
    try {
      text = utf8.decode(region);
    } catch {
      return false;
    }
    this.text = text;
    this.textPos = 0;
    this.textIsAscii = text.length === region.length;
    this.pos = lastLf + 1;
    return true;
  }

  /** The next line of `text`, or null when it was blank (the caller loops). */
  private nextDecodedLine(): Frame | null {
    const text = this.text;
    const start = this.textPos;
    const lf = text.indexOf("\n", start);
    this.textPos = lf + 1;
    if (this.textPos >= text.length) {
      this.text = "";
      this.textPos = 0;
    }
    const end = lf > start && text.charCodeAt(lf - 1) === CR ? lf - 1 : lf;
    const length = end - start;
    // A string's length never exceeds its UTF-8 byte length, so only long non-ASCII lines need counting.
    if (length > this.maxRequestBytes) return TOO_LARGE;
    // Blankness is checked on the decoded text itself: touching the slice would copy it.
    const first = text.charCodeAt(start);
    if (length === 0 || ((first === SPACE || first === TAB) && isBlank(text, start, end))) return null;
    const line = text.slice(start, end);
    if (!this.textIsAscii && length * 3 > this.maxRequestBytes && Buffer.byteLength(line) > this.maxRequestBytes) {
      return TOO_LARGE;
    }
    return line;
  }

  /** Slow path for a region with invalid UTF-8: one line, decoded alone. */
  private nextLineSlowly(): Frame | null {
    const start = this.pos;
    const lf = this.buf.indexOf(LF, start);
    this.pos = lf + 1;
    const end = lf > start && this.buf[lf - 1] === CR ? lf - 1 : lf;
    return this.frameOfBytes(start, end);
  }

  /** Drops the rest of a too-long request up to its LF. Returns false when no LF has arrived yet. */
  private skipDiscarded(): boolean {
    const lf = this.buf.indexOf(LF, this.pos);
    if (lf === -1) {
      this.pos = this.buf.length;
      return false;
    }
    this.pos = lf + 1;
    this.discarding = false;
    return true;
  }

  /** An unterminated request longer than the limit is answered now and then skipped. */
  private checkPartialSize(): Frame | null {
    const pending = this.buf.length - this.pos;
    // One extra byte may be the CR of a CRLF that has not fully arrived.
    const over =
      pending > this.maxRequestBytes + 1 ||
      (pending === this.maxRequestBytes + 1 && this.buf[this.buf.length - 1] !== CR);
    if (!over) return null;
    this.pos = this.buf.length;
    this.discarding = true;
    return TOO_LARGE;
  }

  /** The request in buf[start, end), or null if it is blank. */
  private frameOfBytes(start: number, end: number): Frame | null {
    if (end - start > this.maxRequestBytes) return TOO_LARGE;
    let line: string;
    try {
      line = utf8.decode(this.buf.subarray(start, end));
    } catch {
      return INVALID_UTF8;
    }
    return isBlank(line, 0, line.length) ? null : line;
  }
}

/** text[start, end) is empty, or only spaces and tabs. */
function isBlank(text: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c !== SPACE && c !== TAB) return false;
  }
  return true;
}
