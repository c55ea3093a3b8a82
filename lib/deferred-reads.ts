/**
 * DeferredReads: the fast path's reads inside open transactions, noted as
 * key bytes instead of watches (a string in the store's Map), which a read
 * would otherwise cost at every commit that follows it (issue 6).
 *
 * Owns: a small table of (reader, key bytes) with one fixed-size slot per
 * read, finding the readers of a key a commit changes (by the store's key
 * hash, then the bytes), and dropping a reader's entries when its transaction ends
 * (the last entry moves into each hole, so the table holds only live reads
 * and a commit scans only those).
 * Must not: know about the data, the store's watch Map or commits: the
 * store decides when a read is noted here and when the table, once full,
 * becomes watches.
 */
import { bytesEqual, textEqualsBytes } from "./byte-buffer.ts";
import { hashBytes, hashString } from "./compact-map.ts";
import type { Watcher } from "./store.ts";
import { latin1Text } from "./text.ts";

/** Reads the table holds; the store makes them watches when it is full, so a commit's scan stays short. */
export const DEFERRED_READS_MAX = 256;
/** Longest key noted here; a read of a longer one is watched at once. */
export const DEFERRED_KEY_MAX_BYTES = 64;

export class DeferredReads {
  /** Entries [0, size) are in use. */
  private count = 0;
  /**
   * Entries [0, hashedCount) have their hash in hashes. A read is hashed only
   * when a commit first searches the table after it: the common transaction
   * (its reads, its writes and its COMMIT in one batch) never pays for it.
   */
  private hashedCount = 0;
  private readonly readers: (Watcher | null)[] = new Array<Watcher | null>(DEFERRED_READS_MAX).fill(null);
  private readonly hashes = new Int32Array(DEFERRED_READS_MAX);
  private readonly lengths = new Int32Array(DEFERRED_READS_MAX);
  /** Entry i's key is keys[i * DEFERRED_KEY_MAX_BYTES, + lengths[i]). */
  private readonly keys = new Uint8Array(DEFERRED_READS_MAX * DEFERRED_KEY_MAX_BYTES);

  get size(): number {
    return this.count;
  }

  get isFull(): boolean {
    return this.count === DEFERRED_READS_MAX;
  }

  /** Notes that w read the ASCII key src[start, end), at most DEFERRED_KEY_MAX_BYTES long; the table must not be full. */
  add(w: Watcher, src: Uint8Array, start: number, end: number): void {
    const i = this.count++;
    this.readers[i] = w;
    this.lengths[i] = end - start;
    const keys = this.keys;
    for (let from = start, to = i * DEFERRED_KEY_MAX_BYTES; from < end; from++, to++) keys[to] = src[from]!;
  }

  /** Marks conflicted every reader of the key whose code units are src[start, end). */
  markReadersOfBytes(src: Uint8Array, start: number, end: number): void {
    const hash = hashBytes(src, start, end);
    const length = end - start;
    this.hashAll();
    for (let i = 0; i < this.count; i++) {
      if (this.hashes[i] === hash && this.lengths[i] === length && this.keyEqualsBytes(i, src, start)) {
        this.readers[i]!.conflicted = true;
      }
    }
  }

  /** markReadersOfBytes() for a key given as a string. */
  markReadersOf(key: string): void {
    const hash = hashString(key);
    this.hashAll();
    for (let i = 0; i < this.count; i++) {
      if (this.hashes[i] === hash && this.lengths[i] === key.length && this.keyEqualsString(i, key)) {
        this.readers[i]!.conflicted = true;
      }
    }
  }

  /** Forgets w's reads (its transaction ended). */
  drop(w: Watcher): void {
    // Downwards, so that the entry moved into a hole has been looked at already.
    for (let i = this.count - 1; i >= 0; i--) if (this.readers[i] === w) this.removeAt(i);
  }

  /** Hands every read to watch (as reader and key string) and empties the table. */
  drain(watch: (reader: Watcher, key: string) => void): void {
    for (let i = 0; i < this.count; i++) watch(this.readers[i]!, this.keyText(i));
    // Dropped so that ended transactions are not kept reachable from here.
    this.readers.fill(null, 0, this.count);
    this.count = 0;
    this.hashedCount = 0;
  }

  private hashAll(): void {
    for (let i = this.hashedCount; i < this.count; i++) this.hashes[i] = this.hashOf(i);
    this.hashedCount = this.count;
  }

  private hashOf(i: number): number {
    const at = i * DEFERRED_KEY_MAX_BYTES;
    return hashBytes(this.keys, at, at + this.lengths[i]!);
  }

  /** Moves the last entry into entry i's place. */
  private removeAt(i: number): void {
    const last = --this.count;
    if (i !== last) {
      this.readers[i] = this.readers[last]!;
      this.lengths[i] = this.lengths[last]!;
      const from = last * DEFERRED_KEY_MAX_BYTES;
      this.keys.copyWithin(i * DEFERRED_KEY_MAX_BYTES, from, from + this.lengths[last]!);
      // Entries below hashedCount must have their hash: one not hashed yet gets it as it moves there.
      if (i < this.hashedCount) this.hashes[i] = last < this.hashedCount ? this.hashes[last]! : this.hashOf(i);
    }
    this.readers[last] = null;
    if (this.hashedCount > last) this.hashedCount = last;
  }

  private keyEqualsBytes(i: number, src: Uint8Array, start: number): boolean {
    return bytesEqual(this.keys, i * DEFERRED_KEY_MAX_BYTES, src, start, this.lengths[i]!);
  }

  private keyEqualsString(i: number, key: string): boolean {
    return textEqualsBytes(key, this.keys, i * DEFERRED_KEY_MAX_BYTES);
  }

  private keyText(i: number): string {
    const at = i * DEFERRED_KEY_MAX_BYTES;
    return latin1Text(this.keys, at, at + this.lengths[i]!);
  }
}
