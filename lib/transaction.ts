/**
 * One connection's open transaction: a stack of levels (savepoints).
 *
 * Owns: each level's buffered writes, its share of the byte budget and its
 * failed mark; read-your-writes lookups (innermost level first); merging a
 * nested level into its parent on COMMIT; the final list of changes. The
 * `conflicted` flag is set by the store's watches. A session keeps its
 * Transaction and `reset()`s it for the next START, so the object, its
 * watch list and its levels are reused rather than allocated per transaction.
 * Must not: touch the store (the executor decides what is read from it and
 * when to watch), build replies, or know about sockets.
 */
import type { CommitOp, EncodedValue } from "./commit-log.ts";
import type { Watcher } from "./store.ts";

/** A buffered delete. */
export const DELETED = Symbol("DELETED");
export type Write = EncodedValue | typeof DELETED;

interface Level {
  /** Created on the first write: most levels of a read-only transaction stay empty. */
  writes: Map<string, Write> | null;
  /** UTF-8 bytes of this level's PUT/DEL request lines. */
  bytes: number;
  failed: boolean;
}

function newLevel(): Level {
  return { writes: null, bytes: 0, failed: false };
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
    // A new map on the first write is cheaper than clearing the old one.
    level.writes = null;
    level.bytes = 0;
    level.failed = false;
  }

  markFailed(): void {
    this.innermost().failed = true;
  }

  /** True when some level has buffered a write. */
  get hasWrites(): boolean {
    for (let i = 0; i < this.levelCount; i++) if (this.levels[i]!.writes !== null) return true;
    return false;
  }

  /** This transaction's own latest write of key: a value, DELETED, or undefined when it never wrote it. */
  ownWrite(key: string): Write | undefined {
    for (let i = this.levelCount - 1; i >= 0; i--) {
      const write = this.levels[i]!.writes?.get(key);
      if (write !== undefined) return write;
    }
    return undefined;
  }

  /** Buffers a PUT (value) or DEL (DELETED) in the innermost level, charging its request bytes. */
  write(key: string, value: Write, requestBytes: number): void {
    const level = this.innermost();
    (level.writes ??= new Map()).set(key, value);
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
    if (child.writes !== null) {
      if (parent.writes === null) parent.writes = child.writes;
      else for (const [key, value] of child.writes) parent.writes.set(key, value);
      child.writes = null;
    }
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
    const ops: CommitOp[] = [];
    const writes = this.levels[0]!.writes;
    if (writes !== null) for (const [key, value] of writes) ops.push([key, value === DELETED ? null : value]);
    return ops;
  }

  /** Applies this transaction's own writes to the store's keys under prefix: what KEYS answers inside it. */
  overlayKeys(storeKeys: string[], prefix: string): string[] {
    if (!this.hasWrites) return storeKeys;
    const keys = new Set(storeKeys);
    for (let i = 0; i < this.levelCount; i++) {
      const writes = this.levels[i]!.writes;
      if (writes === null) continue;
      for (const [key, value] of writes) {
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
