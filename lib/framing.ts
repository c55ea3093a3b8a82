/**
 * Framing: a connection's bytes → request lines.
 *
 * Owns: splitting on LF (dropping a CR before it), skipping blank lines (of
 * any length), recognising a line that starts an HTTP request (checked first,
 * so a long or non-UTF-8 one is caught too), the request size limit in bytes
 * (a too-long request becomes one TOO_LARGE event and its bytes are discarded
 * up to the next LF), UTF-8 validation, and the partial (unterminated)
 * request that the server may run after a pause or half-close. Of an
 * incomplete request it holds at most about one limit; complete lines not yet
 * taken (the server stopped reading them: a slow reader, an asynchronous
 * reply) are copied out of the caller's chunk by `retain()`, up to one read.
 * Bytes it keeps go to a buffer of its own that grows by doubling, but not
 * past one limit and one read (GROWTH_SLACK_BYTES): a long request near the
 * limit keeps about one limit of room, not the two a plain doubling could
 * reach (while it grows, the old buffer and the new one are both alive for
 * the copy).
 *
 * Two ways to take a line: `next()` gives its text; `nextLine()` only finds
 * it, leaving its bytes at `bytes[lineStart, lineEnd)` so the server's fast
 * path can read plain GET/PUT requests without decoding them, and
 * `lineText()` decodes it when the general path is needed.
 * Must not: parse commands, know about sockets or timers.
 */
import { latin1Text, strictUtf8 } from "./text.ts";
import { TAB, LF, CR, SPACE, CASE_BIT, skipBlankBytes } from "./ascii.ts";

/** A request that exceeded the size limit (already discarded). */
export const TOO_LARGE = Symbol("TOO_LARGE");
/** A request that was not valid UTF-8. */
export const INVALID_UTF8 = Symbol("INVALID_UTF8");
/**
 * A line that starts an HTTP request (see startsHttpRequest), as a browser
 * tricked into posting to localhost sends: the server closes the connection
 * without running it or anything after it (Redis does the same).
 */
export const HTTP_REQUEST = Symbol("HTTP_REQUEST");
/** nextLine() found a complete line: its bytes are at bytes[lineStart, lineEnd). */
export const LINE = Symbol("LINE");

/** One framed request: its text, or why it could not be read. */
export type Frame = string | typeof TOO_LARGE | typeof INVALID_UTF8 | typeof HTTP_REQUEST;

const ASCII_LIMIT = 0x80;

const EMPTY = new Uint8Array(0);

/** An owned buffer grown past this for one long request is let go once it is consumed. */
const KEEP_OWNED_BYTES = 1024;
/**
 * Doubling stops at the request limit plus this, one read as Bun delivers
 * them at most (see the top): with less, a read landing on a line near the
 * limit would need one more copy of the whole line.
 */
const GROWTH_SLACK_BYTES = 512 * 1024;

export class LineFramer {
  /** Unconsumed input bytes; `pos` is where the next request starts. */
  private buf: Uint8Array = EMPTY;
  private pos = 0;
  /**
   * Memory of the framer's own, which `buf` is a view of (from its start) when
   * `bufOwned`; else `buf` is the caller's chunk, or EMPTY. It grows by
   * doubling, so a request arriving in many chunks is copied a bounded number
   * of times in all (copying it whole at each chunk took 22 s for a 64 MB
   * request).
   */
  private owned: Uint8Array = EMPTY;
  private bufOwned = false;
  /** Bytes before this index (and from pos) are known to hold no LF: a long line is not rescanned per chunk. */
  private scanned = 0;
  /** True while skipping the rest of a too-long request, up to its LF. */
  private discarding = false;
  /**
   * Leading spaces and tabs of the incomplete request, already dropped: they
   * count towards its size but are not held (a blank line of any length gets
   * no reply, and this keeps memory bounded while one arrives).
   */
  private droppedBlanks = 0;
  /** The line found by the last nextLine(), CR dropped. */
  lineStart = 0;
  lineEnd = 0;

  constructor(private readonly maxRequestBytes: number) {}

  /**
   * The buffer that lineStart and lineEnd index; valid until the next push()
   * or retain(), which may move or overwrite its bytes in place: copy what
   * must outlive them (the store, the journal and transactions all copy).
   */
  get bytes(): Uint8Array {
    return this.buf;
  }

  /** Adds a chunk. The framer may keep a reference: call `retain()` before the chunk's memory is reused. */
  push(chunk: Uint8Array): void {
    if (this.pos >= this.buf.length) {
      this.buf = chunk;
      this.bufOwned = false;
      this.scanned = 0;
      this.pos = 0;
      return;
    }
    const restLength = this.buf.length - this.pos;
    this.keepRest(restLength + chunk.length);
    this.owned.set(chunk, restLength);
    this.buf = this.owned.subarray(0, restLength + chunk.length);
  }

  /**
   * Moves the unconsumed bytes buf[pos, end) to the start of the owned buffer
   * (grown to hold at least `capacity` bytes) and makes `buf` a view of them.
   */
  private keepRest(capacity: number): void {
    const restLength = this.buf.length - this.pos;
    const oversized = this.ownedIsOversizedFor(capacity);
    if (capacity > this.owned.length || oversized) {
      const doubled = Math.min(this.owned.length * 2, this.maxRequestBytes + GROWTH_SLACK_BYTES);
      const fresh = new Uint8Array(oversized ? Math.max(capacity, 256) : Math.max(capacity, doubled, 256));
      fresh.set(this.buf.subarray(this.pos), 0);
      this.owned = fresh;
    } else if (!this.bufOwned) {
      this.owned.set(this.buf.subarray(this.pos), 0);
    } else if (this.pos > 0) {
      this.owned.copyWithin(0, this.pos, this.buf.length);
    }
    this.buf = this.owned.subarray(0, restLength);
    this.bufOwned = true;
    this.scanned = Math.max(0, this.scanned - this.pos);
    this.pos = 0;
  }

  /**
   * The next complete request as text, or null when none is complete yet.
   * May return TOO_LARGE for a request still being received (once; the rest
   * of it is then discarded as it arrives).
   */
  next(): Frame | null {
    const found = this.nextLine();
    return found === LINE ? this.lineText() : found;
  }

  /**
   * Finds the next complete non-blank request without decoding it: LINE
   * (then see lineStart/lineEnd and lineText()), TOO_LARGE as next() does,
   * HTTP_REQUEST, or null when none is complete yet.
   */
  nextLine(): typeof LINE | typeof TOO_LARGE | typeof HTTP_REQUEST | null {
    for (;;) {
      if (this.pos >= this.buf.length) return null;
      if (this.discarding && !this.skipDiscarded()) return null;
      const start = this.pos;
      const lf = this.buf.indexOf(LF, Math.max(start, this.scanned));
      if (lf === -1) {
        this.scanned = this.buf.length;
        return this.checkPartial();
      }
      this.pos = lf + 1;
      const end = lf > start && this.buf[lf - 1] === CR ? lf - 1 : lf;
      const frame = this.classify(start, end);
      if (frame !== null) return frame;
    }
  }

  /** The text of the line found by nextLine(), or INVALID_UTF8. */
  lineText(): string | typeof INVALID_UTF8 {
    return decodeLine(this.buf, this.lineStart, this.lineEnd);
  }

  /** True when bytes of an unterminated request are waiting (not counting a discarded one). */
  hasPartial(): boolean {
    return !this.discarding && (this.pos < this.buf.length || this.droppedBlanks > 0);
  }

  /**
   * True when the unterminated request's first word is cut off where it could
   * still become POST or Host: ("PO", "hos"): a pause must not run it alone,
   * or the guard would miss the HTTP request whose rest comes next. A bare
   * POST or a Host: already decided is not held (it runs, and is caught).
   */
  partialMayBecomeHttpRequest(): boolean {
    if (this.discarding) return false;
    const end = this.buf.length;
    const first = skipBlankBytes(this.buf, this.pos, end);
    if (first === end) return false;
    const trimmedEnd = this.buf[end - 1] === CR ? end - 1 : end; // as takePartial will see it
    return mayBecomeHttpRequest(this.buf, first, end) && !startsHttpRequest(this.buf, first, trimmedEnd);
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
    const trimmedEnd = end > start && this.buf[end - 1] === CR ? end - 1 : end;
    const frame = this.classify(start, trimmedEnd);
    return frame === LINE ? decodeLine(this.buf, start, trimmedEnd) : frame;
  }

  /** Copies unconsumed bytes out of the caller's chunk so it can be reused (the framer's own stay where they are). */
  retain(): void {
    if (this.pos >= this.buf.length) {
      this.buf = EMPTY;
      this.bufOwned = false;
      this.scanned = 0;
      this.pos = 0;
      // A long request is done: do not keep its room for the connection's lifetime.
      if (this.owned.length > KEEP_OWNED_BYTES) this.owned = EMPTY;
      return;
    }
    const restLength = this.buf.length - this.pos;
    if (!this.bufOwned || this.pos > 0 || this.ownedIsOversizedFor(restLength)) this.keepRest(restLength);
  }

  /**
   * True when the owned buffer is far larger than `capacity` bytes need: a
   * short leftover (the start of the next request, reads ending mid-line)
   * must not keep the room of a long request that is done, nor of a whole
   * read, so it moves to a small buffer.
   */
  private ownedIsOversizedFor(capacity: number): boolean {
    return this.owned.length > KEEP_OWNED_BYTES && capacity * 4 <= this.owned.length;
  }

  /** Bytes held: input not yet taken as requests. */
  get bufferedBytes(): number {
    return this.buf.length - this.pos;
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

  /**
   * The complete request bytes[start, end) (CR dropped), with any blanks
   * dropped before it: HTTP_REQUEST, TOO_LARGE, LINE (then lineStart/lineEnd
   * are set), or null for a blank line. The HTTP check comes first, so no
   * size or encoding error lets the lines after an HTTP request run.
   */
  private classify(start: number, end: number): typeof LINE | typeof TOO_LARGE | typeof HTTP_REQUEST | null {
    const dropped = this.droppedBlanks;
    this.droppedBlanks = 0;
    if (startsHttpRequest(this.buf, start, end)) return HTTP_REQUEST;
    if (isBlank(this.buf, start, end)) return null;
    if (dropped + end - start > this.maxRequestBytes) return TOO_LARGE;
    this.lineStart = start;
    this.lineEnd = end;
    return LINE;
  }

  /**
   * An unterminated request longer than the limit: its leading blanks are
   * dropped and counted, and it waits while it is all blanks (it may be a
   * blank line) or its first word could still become POST or Host: (a few
   * bytes decide); else it is answered now, as HTTP_REQUEST or TOO_LARGE,
   * and the rest of it is skipped. So the answer does not depend on where
   * the chunks were cut.
   */
  private checkPartial(): typeof TOO_LARGE | typeof HTTP_REQUEST | null {
    const end = this.buf.length;
    // One extra byte may be the CR of a CRLF that has not fully arrived.
    const heldCr = this.buf[end - 1] === CR ? 1 : 0;
    if (this.droppedBlanks + end - heldCr - this.pos <= this.maxRequestBytes) return null;
    const first = skipBlankBytes(this.buf, this.pos, end - heldCr);
    if (first === end - heldCr || mayBecomeHttpRequest(this.buf, first, end)) {
      this.droppedBlanks += first - this.pos;
      this.pos = first;
      return null;
    }
    const http = startsHttpRequest(this.buf, this.pos, end);
    this.pos = end;
    this.droppedBlanks = 0;
    this.discarding = true;
    return http ? HTTP_REQUEST : TOO_LARGE;
  }
}

/**
 * bytes[start, end) begins an HTTP request: its first word (after any blanks)
 * is `POST`, or begins with `Host:`, in any case. The contract's `POST ` and
 * `Host:` prefixes, and the variants Redis also catches by its first word.
 * Cheap for every line: most fail at the first or second byte.
 */
export function startsHttpRequest(bytes: Uint8Array, start: number, end: number): boolean {
  const first = bytes[start]! | CASE_BIT;
  // Most lines are decided here: their first byte is no p, h, space or tab (TAB | CASE_BIT is ")").
  if (first !== 0x70 && first !== 0x68 && first !== SPACE && first !== (TAB | CASE_BIT)) return false;
  const i = skipBlankBytes(bytes, start, end);
  if (end - i < 4) return false;
  const c0 = bytes[i]! | CASE_BIT;
  if (c0 === 0x70 /* p */) {
    return (
      (bytes[i + 1]! | CASE_BIT) === 0x6f /* o */ &&
      (bytes[i + 2]! | CASE_BIT) === 0x73 /* s */ &&
      (bytes[i + 3]! | CASE_BIT) === 0x74 /* t */ &&
      (i + 4 === end || bytes[i + 4] === SPACE || bytes[i + 4] === TAB)
    );
  }
  if (c0 === 0x68 /* h */) {
    return (
      end - i >= 5 &&
      (bytes[i + 1]! | CASE_BIT) === 0x6f /* o */ &&
      (bytes[i + 2]! | CASE_BIT) === 0x73 /* s */ &&
      (bytes[i + 3]! | CASE_BIT) === 0x74 /* t */ &&
      bytes[i + 4] === 0x3a /* : */
    );
  }
  return false;
}

/**
 * bytes[i, end), a first word cut off by the end of the data, could still
 * become POST or Host: once more bytes come: a prefix of either, or POST
 * followed by the CR of a CRLF (then it is a bare POST line).
 */
function mayBecomeHttpRequest(bytes: Uint8Array, i: number, end: number): boolean {
  const n = end - i;
  const startsLike = (word: string) => {
    for (let k = 0; k < Math.min(n, word.length); k++) if ((bytes[i + k]! | CASE_BIT) !== word.charCodeAt(k)) return false;
    return true;
  };
  if (n < 5 && startsLike("host:")) return true;
  return startsLike("post") && (n <= 4 || (n === 5 && bytes[i + 4] === CR));
}

/** bytes[start, end) as text: ASCII is copied as is, anything else is strictly UTF-8 decoded. */
function decodeLine(bytes: Uint8Array, start: number, end: number): string | typeof INVALID_UTF8 {
  let all = 0;
  for (let i = start; i < end; i++) all |= bytes[i]!;
  if (all < ASCII_LIMIT) return latin1Text(bytes, start, end);
  try {
    return strictUtf8.decode(bytes.subarray(start, end));
  } catch {
    return INVALID_UTF8;
  }
}

/** bytes[start, end) is empty, or only spaces and tabs. */
function isBlank(bytes: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = bytes[i];
    if (c !== SPACE && c !== TAB) return false;
  }
  return true;
}
