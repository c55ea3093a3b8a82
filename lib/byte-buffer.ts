/**
 * ByteBuffer: bytes built in place in one growable buffer.
 *
 * Owns: appending text (as UTF-8), decimal integers, constant byte strings and ranges copied
 * from other buffers (copyBytes, also used by the compact store; copyOf, a fresh copy of a range;
 * bytesEqual and textEqualsBytes, comparing a range with another or with a string), and reuse:
 * the same buffer serves batch after batch, so that building output allocates nothing.
 * Used for the replies of an event-loop turn (the server appends every
 * connection's batches, writes each connection's range at the turn's end,
 * and copies out only what the kernel did not take),
 * for a connection's held replies, for journal records not yet written
 * (persistence), and for a transaction's PUT kept as bytes (transaction.ts).
 * Must not: know about sockets, files, commands or reply shapes.
 */

/** Bun's Buffer#utf8Write: encodes in place without allocating (never splits a character). */
interface WritableBuffer extends Buffer {
  utf8Write(text: string, offset: number, maxLength: number): number;
}

const INITIAL_BYTES = 64 * 1024;
/** A buffer grown past this for one huge batch is dropped after it, so it does not stay allocated. */
const KEEP_BYTES = 1024 * 1024;

export class ByteBuffer {
  bytes: WritableBuffer;
  /** Bytes in use. Writers may set it back to undo an unfinished reply. */
  length = 0;

  /** initialBytes: small for buffers kept per connection, the default for per-server ones. */
  constructor(private readonly initialBytes = INITIAL_BYTES) {
    this.bytes = allocate(initialBytes);
  }

  /** Makes room for n more bytes. */
  reserve(n: number): void {
    const needed = this.length + n;
    if (needed <= this.bytes.length) return;
    const grown = allocate(Math.max(needed, this.bytes.length * 2));
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
  }

  /** Appends text as UTF-8. */
  text(text: string): void {
    this.reserve(text.length * 3);
    this.length += this.bytes.utf8Write(text, this.length, text.length * 3);
  }

  /** Appends all of a constant's bytes. */
  constant(bytes: Uint8Array): void {
    this.range(bytes, 0, bytes.length);
  }

  /**
   * Appends a non-negative integer's decimal digits without making a string
   * or a native call: the journal's seq, once per record (a template string
   * through utf8Write there cost far more in the server than its 40 ns in a
   * micro-benchmark, bench/BENCHMARKS.md item 20).
   */
  decimal(value: number): void {
    if (value >= 1_000_000_000) {
      // Nine digits at a time keep the arithmetic in int32, which the JIT divides far faster than doubles.
      const high = Math.floor(value / 1_000_000_000);
      this.decimal(high);
      this.digits(value - high * 1_000_000_000, 9);
      return;
    }
    let count = 1;
    for (let bound = 10; count < 9 && value >= bound; bound *= 10) count++;
    this.digits(value, count);
  }

  /** Appends value (below 10^9) as exactly `count` decimal digits, zero-padded. */
  private digits(value: number, count: number): void {
    this.reserve(count);
    const bytes = this.bytes;
    let at = this.length + count;
    this.length = at;
    let rest = value | 0;
    for (let i = 0; i < count; i++) {
      const quotient = (rest / 10) | 0;
      bytes[--at] = 48 + rest - quotient * 10;
      rest = quotient;
    }
  }

  /** Appends one byte. */
  byte(value: number): void {
    this.reserve(1);
    this.bytes[this.length++] = value;
  }

  /** Appends src[start, end). */
  range(src: Uint8Array, start: number, end: number): void {
    const n = end - start;
    this.reserve(n);
    copyBytes(src, start, end, this.bytes, this.length);
    this.length += n;
  }

  /** Removes the first n bytes (written out), moving the rest to the front. */
  dropFront(n: number): void {
    if (n === 0) return;
    if (n < this.length) this.bytes.copyWithin(0, n, this.length);
    this.length -= n;
    if (this.length === 0) this.clear();
  }

  /** Empties the buffer for the next batch (and lets go of one grown for a huge batch). */
  clear(): void {
    this.length = 0;
    if (this.bytes.length > KEEP_BYTES) this.bytes = allocate(this.initialBytes);
  }
}

/** Copies src[start, end) to dest at pos. */
export function copyBytes(src: Uint8Array, start: number, end: number, dest: Uint8Array, pos: number): void {
  // Short ranges (keys, small values, reply constants) copy faster in a loop than through subarray + set,
  // and four bytes per pass take about two thirds of the time of one (a 91-byte reply 59 → 39 ns).
  if (end - start > 128) {
    dest.set(src.subarray(start, end), pos);
    return;
  }
  let i = start;
  for (; i + 4 <= end; i += 4, pos += 4) {
    dest[pos] = src[i]!;
    dest[pos + 1] = src[i + 1]!;
    dest[pos + 2] = src[i + 2]!;
    dest[pos + 3] = src[i + 3]!;
  }
  for (; i < end; i++) dest[pos++] = src[i]!;
}

/** True when bytes from start hold text's code units, one byte each (text.length of them; text is Latin-1 or ASCII). */
export function textEqualsBytes(text: string, bytes: Uint8Array, start: number): boolean {
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) !== bytes[start + i]) return false;
  return true;
}

/** True when a[aStart, aStart + length) and b[bStart, bStart + length) hold the same bytes. */
export function bytesEqual(a: Uint8Array, aStart: number, b: Uint8Array, bStart: number, length: number): boolean {
  for (let i = 0; i < length; i++) if (a[aStart + i] !== b[bStart + i]) return false;
  return true;
}

/**
 * A copy of src[start, end) in memory of its own. Not Buffer#slice, which is
 * a view of memory that gets reused; not Uint8Array#slice, which copies too
 * but is slower for the short replies copied here (40 bytes: 43 against
 * 126 ns; equal at 64 KiB).
 */
export function copyOf(src: Uint8Array, start: number, end: number): Uint8Array {
  const copy = new Uint8Array(end - start);
  copyBytes(src, start, end, copy, 0);
  return copy;
}

function allocate(size: number): WritableBuffer {
  return Buffer.allocUnsafe(size) as WritableBuffer;
}
