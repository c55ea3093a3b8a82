/**
 * One connection's open transaction: a stack of levels (savepoints).
 *
 * Owns: each level's buffered writes, its share of the byte budget and its
 * failed mark; read-your-writes lookups (innermost level first); merging a
 * nested level into its parent on COMMIT; the final list of changes. The
 * `conflicted` flag is set by the store's watches. A session keeps its
 * Transaction and `reset()`s it for the next START, so the object, its
 * watch list and its levels are reused rather than allocated per transaction,
 * and a level's first write is kept in two fields: a Map is made only for a
 * level that writes a second key (most transactions write one).
 * The plain PUTs of the server's fast path are held as bytes instead (up to
 * MAX_HELD_WRITES of them, of distinct keys, all in the innermost level that
 * has writes): reads compare their keys as bytes and answer from them, and a
 * transaction whose changes they all are commits straight from them
 * (asciiChangeCount), making no string at all. Anything else that needs the
 * writes as strings (a DEL, a PUT in JSON form or at another level, a second
 * PUT of a held key, a nested COMMIT, KEYS) first turns them into strings (settle).
 * Must not: touch the store (the executor decides what is read from it and
 * when to watch), build replies, or know about sockets.
 */
import { ByteBuffer, bytesEqual, textEqualsBytes } from "./byte-buffer.ts";
import type { CommitOp, EncodedValue } from "./commit-log.ts";
import { emptyAsciiEntry, type AsciiEntry } from "./compact-map.ts";
import type { Watcher } from "./store.ts";
import { latin1Text } from "./text.ts";

/** A buffered delete. */
export const DELETED = Symbol("DELETED");
export type Write = EncodedValue | typeof DELETED;

interface Level {
  /** The level's only write so far (null: none, or `writes` holds them all). */
  firstKey: string | null;
  firstValue: Write;
  /** Every write of the level, once it wrote a second key; else null. */
  writes: Map<string, Write> | null;
  /** UTF-8 bytes of this level's PUT/DEL request lines. */
  bytes: number;
  failed: boolean;
}

/** Room for a few typical keys and values; the buffer grows for longer ones. */
const HELD_WRITES_INITIAL_BYTES = 256;
/** A held writes' buffer grown past this is let go when its transaction ends (as HeldReplies lets go of its own). */
const HELD_WRITES_KEEP_BYTES = 4 * 1024;
const NO_BYTES = new Uint8Array(0);
/**
 * Writes held as bytes at most; a transaction writing more keys holds them as
 * strings (a read compares its key with every held one, so the list stays short).
 */
export const MAX_HELD_WRITES = 32;
/** Levels a connection keeps for reuse after its transaction ends; deeper ones are made again when needed. */
const KEPT_LEVELS = 8;

function newLevel(): Level {
  return { firstKey: null, firstValue: DELETED, writes: null, bytes: 0, failed: false };
}

export class Transaction implements Watcher {
  conflicted = false;
  /** Keys this transaction watches (kept by the store, see Watcher). */
  watchedKeys: string[] = [];
  /** Set and cleared by the store (see Watcher). */
  watchesEverything = false;
  /** levels[0, depth) are in use; the ones above are kept for reuse. */
  private readonly levels: Level[] = [newLevel()];
  private levelCount = 1;
  private totalBytes = 0;
  /** The level whose writes are held as bytes (see writeAscii), or -1 when none are. */
  private heldLevel = -1;
  /** How many writes are held as bytes: heldWrites[0, heldCount), each pointing into heldBytes. */
  private heldCount = 0;
  /** Reused from transaction to transaction; grows to MAX_HELD_WRITES at most. */
  private readonly heldWrites: AsciiEntry[] = [];
  /** The held keys and values, one after the other. Made at the first such write, then reused. */
  private heldBytes: ByteBuffer | null = null;

  /** Makes this a fresh transaction of one level (the previous one must have ended: unwatch left watchedKeys empty). */
  reset(): void {
    this.conflicted = false;
    this.totalBytes = 0;
    this.levelCount = 0;
    this.heldLevel = -1;
    this.heldCount = 0;
    this.begin();
  }

  /**
   * The transaction ended: keep a few levels for reuse, not every level the
   * deepest transaction opened (up to 1,000, about 70 bytes each), and the
   * held writes' buffer only while it is small (it grows to the largest
   * PUTs a transaction held, up to --max-transaction-bytes), which an idle
   * connection would otherwise hold until its next START.
   */
  release(): void {
    if (this.levels.length > KEPT_LEVELS) this.levels.length = KEPT_LEVELS;
    if (this.heldBytes !== null && this.heldBytes.bytes.length > HELD_WRITES_KEEP_BYTES) {
      this.heldBytes = null;
      // The entries point into it too.
      for (const entry of this.heldWrites) pointInto(entry, NO_BYTES);
    }
  }

  get depth(): number {
    return this.levelCount;
  }

  /** True when the innermost level was marked failed (PostgreSQL's "current transaction is aborted"). */
  get failed(): boolean {
    return this.innermost().failed;
  }

  get bytes(): number {
    return this.totalBytes;
  }

  begin(): void {
    if (this.levelCount === this.levels.length) this.levels.push(newLevel());
    const level = this.levels[this.levelCount++]!;
    clearWrites(level);
    level.bytes = 0;
    level.failed = false;
  }

  markFailed(): void {
    this.innermost().failed = true;
  }

  /** True when some level has buffered a write. */
  get hasWrites(): boolean {
    return this.heldCount !== 0 || this.hasWritesAsStrings;
  }

  /** This transaction's own latest write of key: a value, DELETED, or undefined when it never wrote it. */
  ownWrite(key: string): Write | undefined {
    // A held write is the latest of its key: any write after it, at any level, would have settled it.
    const held = this.heldIndexOfText(key);
    if (held >= 0) {
      const entry = this.heldWrites[held]!;
      return latin1Text(entry.valueSrc, entry.valueStart, entry.valueEnd);
    }
    for (let i = this.levelCount - 1; i >= 0; i--) {
      const level = this.levels[i]!;
      if (level.firstKey === key) return level.firstValue;
      const write = level.writes?.get(key);
      if (write !== undefined) return write;
    }
    return undefined;
  }

  /**
   * This transaction's write of the ASCII key src[start, end) when it is
   * held as bytes (then its latest write of that key), else null. The keys
   * are compared as bytes and the writes stay bytes: turning them into
   * strings to look would cost the COMMIT its path from bytes (a PUT then a
   * GET of another key cost about 300 ns more per transaction in
   * bench/hotpath.ts terms).
   */
  ownAsciiWrite(src: Uint8Array, start: number, end: number): AsciiEntry | null {
    const held = this.heldIndexOf(src, start, end);
    return held < 0 ? null : this.heldWrites[held]!;
  }

  /** True when some level holds a write as strings (the writes held as bytes not counted): then ask ownWrite. */
  get hasWritesAsStrings(): boolean {
    for (let i = 0; i < this.levelCount; i++) if (levelHasWrites(this.levels[i]!)) return true;
    return false;
  }

  /** Buffers a PUT (value) or DEL (DELETED) in the innermost level, charging its request bytes. */
  write(key: string, value: Write, requestBytes: number): void {
    this.settle();
    addWrite(this.innermost(), key, value);
    this.charge(requestBytes);
  }

  /**
   * write() of a PUT given as bytes: the key keySrc[keyStart, keyEnd) and the
   * value's JSON text valueSrc[valueStart, valueEnd), both ASCII needing no
   * JSON escaping. They are copied: the sources may be reused afterwards.
   * Held as bytes alongside the writes held already, unless those are of
   * another level, of the same key, or MAX_HELD_WRITES many: then they are
   * settled into strings first, and this one starts a new list.
   */
  writeAscii(
    keySrc: Uint8Array,
    keyStart: number,
    keyEnd: number,
    valueSrc: Uint8Array,
    valueStart: number,
    valueEnd: number,
    requestBytes: number,
  ): void {
    const buffer = (this.heldBytes ??= new ByteBuffer(HELD_WRITES_INITIAL_BYTES));
    if (this.heldCount === 0) {
      buffer.clear();
    } else if (
      this.heldLevel !== this.levelCount - 1 ||
      this.heldCount === MAX_HELD_WRITES ||
      this.heldIndexOf(keySrc, keyStart, keyEnd) >= 0
    ) {
      this.settle();
      buffer.clear();
    }
    const before = buffer.bytes;
    const keyAt = buffer.length;
    buffer.range(keySrc, keyStart, keyEnd);
    buffer.range(valueSrc, valueStart, valueEnd);
    // The buffer grew into new memory: the entries held so far must point there too.
    if (buffer.bytes !== before) for (let i = 0; i < this.heldCount; i++) pointInto(this.heldWrites[i]!, buffer.bytes);
    const entry = (this.heldWrites[this.heldCount] ??= emptyAsciiEntry());
    pointInto(entry, buffer.bytes);
    entry.keyStart = keyAt;
    entry.keyEnd = entry.valueStart = keyAt + keyEnd - keyStart;
    entry.valueEnd = buffer.length;
    this.heldCount++;
    this.heldLevel = this.levelCount - 1;
    this.charge(requestBytes);
  }

  /**
   * When the transaction's changes are all writes held as bytes (the common
   * transaction of plain PUTs, at the outermost level): how many, to commit
   * from heldChanges[0, n). Else 0 (commit changes() instead).
   */
  asciiChangeCount(): number {
    return this.heldLevel === 0 && !levelHasWrites(this.levels[0]!) ? this.heldCount : 0;
  }

  /** The writes held as bytes, of distinct keys; only the first asciiChangeCount() are this transaction's. */
  get heldChanges(): readonly AsciiEntry[] {
    return this.heldWrites;
  }

  /** Charges request bytes without a write (a DEL that found nothing). */
  charge(requestBytes: number): void {
    this.innermost().bytes += requestBytes;
    this.totalBytes += requestBytes;
  }

  /** Merges the innermost level into its parent. Only for depth > 1. */
  commitNested(): void {
    this.settle();
    const child = this.levels[--this.levelCount]!;
    const parent = this.innermost();
    for (const [key, value] of writesOf(child)) addWrite(parent, key, value);
    clearWrites(child);
    parent.bytes += child.bytes;
  }

  /** Discards the innermost level. Returns true when that was the outermost (the transaction is over). */
  rollbackLevel(): boolean {
    if (this.heldLevel === this.levelCount - 1) {
      this.heldLevel = -1;
      this.heldCount = 0;
    }
    const level = this.levels[--this.levelCount]!;
    this.totalBytes -= level.bytes;
    // Level objects are reused: a discarded level's writes must not stay reachable until that depth is reached
    // again (a connection could keep up to 1,000 levels' worth, each up to the byte budget).
    clearWrites(level);
    return this.levelCount === 0;
  }

  /** The outermost level's changes as commit ops (call at the outermost COMMIT). */
  changes(): CommitOp[] {
    this.settle();
    const level = this.levels[0]!;
    if (level.firstKey !== null) return [[level.firstKey, commitValue(level.firstValue)]];
    const ops: CommitOp[] = [];
    if (level.writes !== null) for (const [key, value] of level.writes) ops.push([key, commitValue(value)]);
    return ops;
  }

  /**
   * This transaction's latest write of each key under prefix (a value, or
   * DELETED), over every open level, inner levels winning; null when none.
   * What KEYS answers inside it is the store's keys with these applied, and
   * these keys' presence is no read of the store.
   */
  ownWritesWithPrefix(prefix: string): Map<string, Write> | null {
    this.settle();
    let writes: Map<string, Write> | null = null;
    for (let i = 0; i < this.levelCount; i++) {
      for (const [key, value] of writesOf(this.levels[i]!)) {
        if (key.startsWith(prefix)) (writes ??= new Map()).set(key, value);
      }
    }
    return writes;
  }

  /** Turns the writes held as bytes into strings in their level (they are its latest writes, in order). */
  private settle(): void {
    if (this.heldCount === 0) return;
    const level = this.levels[this.heldLevel]!;
    for (let i = 0; i < this.heldCount; i++) {
      const entry = this.heldWrites[i]!;
      addWrite(level, latin1Text(entry.keySrc, entry.keyStart, entry.keyEnd), latin1Text(entry.valueSrc, entry.valueStart, entry.valueEnd));
    }
    this.heldLevel = -1;
    this.heldCount = 0;
  }

  /** The index of the held write of the ASCII key src[start, end), or -1. */
  private heldIndexOf(src: Uint8Array, start: number, end: number): number {
    const length = end - start;
    for (let i = 0; i < this.heldCount; i++) {
      const entry = this.heldWrites[i]!;
      if (entry.keyEnd - entry.keyStart === length && bytesEqual(entry.keySrc, entry.keyStart, src, start, length)) return i;
    }
    return -1;
  }

  /** heldIndexOf() for a key given as a string (held keys are ASCII: one byte per code unit). */
  private heldIndexOfText(key: string): number {
    for (let i = 0; i < this.heldCount; i++) {
      const entry = this.heldWrites[i]!;
      if (entry.keyEnd - entry.keyStart === key.length && textEqualsBytes(key, entry.keySrc, entry.keyStart)) return i;
    }
    return -1;
  }

  private innermost(): Level {
    return this.levels[this.levelCount - 1]!;
  }
}

function pointInto(entry: AsciiEntry, bytes: Uint8Array): void {
  entry.keySrc = entry.valueSrc = bytes;
}

function levelHasWrites(level: Level): boolean {
  return level.firstKey !== null || level.writes !== null;
}

/** Records key's latest write in level: in the first-write fields until a second key needs a Map. */
function addWrite(level: Level, key: string, value: Write): void {
  if (level.writes !== null) {
    level.writes.set(key, value);
  } else if (level.firstKey === null || level.firstKey === key) {
    level.firstKey = key;
    level.firstValue = value;
  } else {
    level.writes = new Map<string, Write>([[level.firstKey, level.firstValue], [key, value]]);
    level.firstKey = null;
  }
}

function clearWrites(level: Level): void {
  level.firstKey = null;
  level.firstValue = DELETED;
  level.writes = null;
}

/** The level's writes in the order they were first made (not for the hot path: it may allocate). */
function writesOf(level: Level): Iterable<[string, Write]> {
  if (level.firstKey !== null) return [[level.firstKey, level.firstValue]];
  return level.writes ?? [];
}

function commitValue(value: Write): EncodedValue | null {
  return value === DELETED ? null : value;
}
