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
  /** Unconsumed input; `pos` is where the next request starts. */
  private buf: Uint8Array = EMPTY;
  private pos = 0;
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
    const buf = this.buf;
    while (this.pos < buf.length) {
      const start = this.pos;
      const lf = buf.indexOf(LF, start);
      if (lf === -1) return this.checkPartialSize();
      this.pos = lf + 1;
      if (this.discarding) {
        this.discarding = false;
        continue;
      }
      const end = lf > start && buf[lf - 1] === CR ? lf - 1 : lf;
      const frame = this.frameOf(start, end);
      if (frame !== null) return frame;
    }
    return null;
  }

  /** True when bytes of an unterminated request are waiting (not counting a discarded one). */
  hasPartial(): boolean {
    return !this.discarding && this.pos < this.buf.length;
  }

  /** True when complete or partial input is still buffered. */
  hasInput(): boolean {
    return this.pos < this.buf.length;
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
    return this.frameOf(start, trimmedEnd);
  }

  /** Copies unconsumed bytes out of the caller's chunk so it can be reused. */
  retain(): void {
    this.buf = this.pos >= this.buf.length ? EMPTY : this.buf.slice(this.pos);
    this.pos = 0;
  }

  /** Bytes held: the unconsumed input. */
  get bufferedBytes(): number {
    return this.buf.length - this.pos;
  }

  /** An unterminated request longer than the limit is answered now and then skipped. */
  private checkPartialSize(): Frame | null {
    if (this.discarding) {
      this.pos = this.buf.length;
      return null;
    }
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
  private frameOf(start: number, end: number): Frame | null {
    if (end - start > this.maxRequestBytes) return TOO_LARGE;
    const buf = this.buf;
    let i = start;
    while (i < end && (buf[i] === SPACE || buf[i] === TAB)) i++;
    if (i === end) return null;
    try {
      return utf8.decode(buf.subarray(start, end));
    } catch {
      return INVALID_UTF8;
    }
  }
}
