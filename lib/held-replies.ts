/**
 * HeldReplies: one connection's replies that may not leave yet, in order.
 *
 * Under --fsync always a batch whose writes are not on disk yet waits for
 * the seq of its last commit; a batch after it waits at least as long (the
 * order of replies is kept), so the seqs along the held bytes never go down
 * and each run of bytes with one seq is one segment. Once the log reports a
 * seq durable, every segment up to it is ready and leaves in one write.
 * The bytes live in one reused buffer per connection, so holding a batch
 * copies it once and allocates nothing (the list of separate arrays it
 * replaced cost about 0.6 µs more CPU per acknowledged write, bench/BENCHMARKS.md
 * item 18).
 *
 * Owns: the held bytes and the seq each part waits for. Must not: touch
 * sockets (the server writes what `readyLength` says is ready, then calls
 * `release`), know what the replies mean, or decide when a seq is durable.
 */
import { ByteBuffer } from "./byte-buffer.ts";

/** First size of a connection's held buffer: a few acknowledged writes. */
const INITIAL_BYTES = 1024;
/**
 * A held buffer grown past this (a pipelined batch) is let go once emptied,
 * so idle connections do not keep it: at 64 KiB, 10,000 connections that
 * once pipelined could keep 600 MB. A batch without pipelining is a few
 * hundred bytes, and one of 16 pipelined GETs about 1.5 KB.
 */
const KEEP_BYTES = 4 * 1024;

export class HeldReplies {
  /** Null until something is held (most connections under other modes never hold anything). */
  private buffer: ByteBuffer | null = null;
  /** Segment i is the bytes from ends[i - 1] (or 0) to ends[i], waiting for seqs[i]. */
  private readonly ends: number[] = [];
  private readonly seqs: number[] = [];
  private segments = 0;

  /** Bytes of buffer this connection keeps, held or not (for tests of what idle connections keep). */
  get keptBytes(): number {
    return this.buffer === null ? 0 : this.buffer.bytes.length;
  }

  /** Bytes held. */
  get length(): number {
    return this.buffer === null ? 0 : this.buffer.length;
  }

  get isEmpty(): boolean {
    return this.segments === 0;
  }

  /** The held bytes; the first `readyLength()` of them may be sent. */
  get bytes(): Uint8Array {
    return this.buffer!.bytes;
  }

  /**
   * Holds src[start, end) after what is held already, until seq is durable
   * (0: as soon as everything before it may leave).
   */
  hold(src: Uint8Array, start: number, end: number, seq: number): void {
    if (end === start) return;
    this.buffer ??= new ByteBuffer(INITIAL_BYTES);
    this.buffer.range(src, start, end);
    const last = this.segments - 1;
    const lastSeq = last >= 0 ? this.seqs[last]! : 0;
    if (last >= 0 && seq <= lastSeq) {
      this.ends[last] = this.buffer.length;
      return;
    }
    this.ends[this.segments] = this.buffer.length;
    this.seqs[this.segments] = seq;
    this.segments++;
  }

  /** How many of the held bytes may leave now that everything through durableSeq is on disk. */
  readyLength(durableSeq: number): number {
    let ready = 0;
    for (let i = 0; i < this.segments && this.seqs[i]! <= durableSeq; i++) ready = this.ends[i]!;
    return ready;
  }

  /** True while some held bytes wait for a seq above durableSeq. */
  waitsBeyond(durableSeq: number): boolean {
    return this.segments !== 0 && this.seqs[this.segments - 1]! > durableSeq;
  }

  /** The first n bytes (a readyLength) were sent or queued: forget them. */
  release(n: number): void {
    const buffer = this.buffer;
    if (buffer === null || n === 0) return;
    let gone = 0;
    while (gone < this.segments && this.ends[gone]! <= n) gone++;
    for (let i = gone; i < this.segments; i++) {
      this.ends[i - gone] = this.ends[i]! - n;
      this.seqs[i - gone] = this.seqs[i]!;
    }
    this.segments -= gone;
    buffer.dropFront(n);
    if (this.segments === 0 && buffer.bytes.length > KEEP_BYTES) this.buffer = null;
  }
}
