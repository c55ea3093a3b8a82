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
 * The transaction's latest write may also be held as bytes (a plain PUT from
 * the server's fast path): a transaction whose only change it is commits
 * straight from those bytes (soleAsciiWrite), making no string at all; any
 * other use of the writes first turns it into strings (settle).
 * Must not: touch the store (the executor decides what is read from it and
 * when to watch), build replies, or know about sockets.
 */
import { ByteBuffer, bytesEqual } from "./byte-buffer.ts";
import type { CommitOp, EncodedValue } from "./commit-log.ts";
import type { AsciiEntry } from "./compact-map.ts";
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

/** Room for a typical key and value; the buffer grows for longer ones. */
const ASCII_WRITE_INITIAL_BYTES = 256;
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
  /** The level whose latest write is held as bytes in asciiWrite (see writeAscii), or -1. */
  private asciiLevel = -1;
  /** That write: key and encoded value, pointing into asciiBytes. */
  private readonly asciiWrite: AsciiEntry = {
    keySrc: new Uint8Array(0),
    keyStart: 0,
    keyEnd: 0,
    valueSrc: new Uint8Array(0),
    valueStart: 0,
    valueEnd: 0,
  };
  /** Made at the first such write, then reused. */
  private asciiBytes: ByteBuffer | null = null;

  /** Makes this a fresh transaction of one level (the previous one must have ended: unwatch left watchedKeys empty). */
  reset(): void {
    this.conflicted = false;
    this.totalBytes = 0;
    this.levelCount = 0;
    this.asciiLevel = -1;
    this.begin();
  }

  /**
   * The transaction ended: keep a few levels for reuse, not every level the
   * deepest transaction opened (up to 1,000, about 70 bytes each), which an
   * idle connection would otherwise hold until its next START.
   */
  release(): void {
    if (this.levels.length > KEPT_LEVELS) this.levels.length = KEPT_LEVELS;
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
    return this.asciiLevel >= 0 || this.hasWritesAsStrings();
  }

  /** This transaction's own latest write of key: a value, DELETED, or undefined when it never wrote it. */
  ownWrite(key: string): Write | undefined {
    this.settle();
    for (let i = this.levelCount - 1; i >= 0; i--) {
      const level = this.levels[i]!;
      if (level.firstKey === key) return level.firstValue;
      const write = level.writes?.get(key);
      if (write !== undefined) return write;
    }
    return undefined;
  }

  /**
   * For a read of the ASCII key src[start, end): false when this transaction
   * surely never wrote that key, true when it may have (then ask ownWrite).
   * When its only write is the one held as bytes, the key bytes are compared
   * and that write stays bytes: ownWrite would turn it into strings, and the
   * COMMIT would lose soleAsciiWrite's path (a PUT then a GET of another key
   * cost about 300 ns more per transaction in bench/hotpath.ts terms).
   */
  mayHaveWritten(src: Uint8Array, start: number, end: number): boolean {
    if (this.hasWritesAsStrings()) return true;
    if (this.asciiLevel < 0) return false;
    const entry = this.asciiWrite;
    const length = end - start;
    return entry.keyEnd - entry.keyStart === length && bytesEqual(entry.keySrc, entry.keyStart, src, start, length);
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
    this.settle();
    const buffer = (this.asciiBytes ??= new ByteBuffer(ASCII_WRITE_INITIAL_BYTES));
    buffer.clear();
    buffer.range(keySrc, keyStart, keyEnd);
    buffer.range(valueSrc, valueStart, valueEnd);
    const entry = this.asciiWrite;
    entry.keySrc = entry.valueSrc = buffer.bytes;
    entry.keyStart = 0;
    entry.keyEnd = entry.valueStart = keyEnd - keyStart;
    entry.valueEnd = buffer.length;
    this.asciiLevel = this.levelCount - 1;
    this.charge(requestBytes);
  }

  /**
   * The transaction's only change, when it is a write held as bytes (the
   * common one-PUT transaction of the fast path): commit it from these. Else null.
   * Only at the outermost level.
   */
  soleAsciiWrite(): AsciiEntry | null {
    return this.asciiLevel === 0 && !levelHasWrites(this.levels[0]!) ? this.asciiWrite : null;
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
    if (this.asciiLevel === this.levelCount - 1) this.asciiLevel = -1;
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

  /** Turns the write held as bytes into strings in its level (it is that level's latest write). */
  private settle(): void {
    if (this.asciiLevel < 0) return;
    const level = this.levels[this.asciiLevel]!;
    this.asciiLevel = -1;
    const entry = this.asciiWrite;
    const key = latin1Text(entry.keySrc, entry.keyStart, entry.keyEnd);
    addWrite(level, key, latin1Text(entry.valueSrc, entry.valueStart, entry.valueEnd));
  }

  /** True when some level holds a write as strings (the write held as bytes not counted). */
  private hasWritesAsStrings(): boolean {
    for (let i = 0; i < this.levelCount; i++) if (levelHasWrites(this.levels[i]!)) return true;
    return false;
  }

  private innermost(): Level {
    return this.levels[this.levelCount - 1]!;
  }
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
