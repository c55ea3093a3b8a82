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
 * Must not: touch the store (the executor decides what is read from it and
 * when to watch), build replies, or know about sockets.
 */
import type { CommitOp, EncodedValue } from "./commit-log.ts";
import type { Watcher } from "./store.ts";

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

function newLevel(): Level {
  return { firstKey: null, firstValue: DELETED, writes: null, bytes: 0, failed: false };
}

export class Transaction implements Watcher {
  conflicted = false;
  /** Keys this transaction watches in the store (so they can be unwatched); the store keeps them unique. */
  readonly watchedKeys: string[] = [];
  /** levels[0, depth) are in use; the ones above are kept for reuse. */
  private readonly levels: Level[] = [newLevel()];
  private levelCount = 1;
  private totalBytes = 0;

  /** Makes this a fresh transaction of one level (the previous one must have ended and unwatched). */
  reset(): void {
    this.conflicted = false;
    this.watchedKeys.length = 0;
    this.totalBytes = 0;
    this.levelCount = 0;
    this.begin();
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
    for (let i = 0; i < this.levelCount; i++) if (levelHasWrites(this.levels[i]!)) return true;
    return false;
  }

  /** This transaction's own latest write of key: a value, DELETED, or undefined when it never wrote it. */
  ownWrite(key: string): Write | undefined {
    for (let i = this.levelCount - 1; i >= 0; i--) {
      const level = this.levels[i]!;
      if (level.firstKey === key) return level.firstValue;
      const write = level.writes?.get(key);
      if (write !== undefined) return write;
    }
    return undefined;
  }

  /** Buffers a PUT (value) or DEL (DELETED) in the innermost level, charging its request bytes. */
  write(key: string, value: Write, requestBytes: number): void {
    const level = this.innermost();
    addWrite(level, key, value);
    level.bytes += requestBytes;
    this.totalBytes += requestBytes;
  }

  /** Charges request bytes without a write (a DEL that found nothing). */
  charge(requestBytes: number): void {
    this.innermost().bytes += requestBytes;
    this.totalBytes += requestBytes;
  }

  /** Merges the innermost level into its parent. Only for depth > 1. */
  commitNested(): void {
    const child = this.levels[--this.levelCount]!;
    const parent = this.innermost();
    for (const [key, value] of writesOf(child)) addWrite(parent, key, value);
    clearWrites(child);
    parent.bytes += child.bytes;
  }

  /** Discards the innermost level. Returns true when that was the outermost (the transaction is over). */
  rollbackLevel(): boolean {
    const level = this.levels[--this.levelCount]!;
    this.totalBytes -= level.bytes;
    return this.levelCount === 0;
  }

  /** The outermost level's changes as commit ops (call at the outermost COMMIT). */
  changes(): CommitOp[] {
    const level = this.levels[0]!;
    if (level.firstKey !== null) return [[level.firstKey, commitValue(level.firstValue)]];
    const ops: CommitOp[] = [];
    if (level.writes !== null) for (const [key, value] of level.writes) ops.push([key, commitValue(value)]);
    return ops;
  }

  /** Applies this transaction's own writes to the store's keys under prefix: what KEYS answers inside it. */
  overlayKeys(storeKeys: string[], prefix: string): string[] {
    if (!this.hasWrites) return storeKeys;
    const keys = new Set(storeKeys);
    for (let i = 0; i < this.levelCount; i++) {
      for (const [key, value] of writesOf(this.levels[i]!)) {
        if (!key.startsWith(prefix)) continue;
        if (value === DELETED) keys.delete(key);
        else keys.add(key);
      }
    }
    return [...keys];
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
