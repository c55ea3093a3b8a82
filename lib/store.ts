/**
 * The committed state: key → encoded value, the commit counter, and the
 * watches that make optimistic transactions serializable.
 *
 * Owns: the data map, `seq` (one per commit), applying a commit atomically
 * (one synchronous step), and conflict marking. A transaction watches each key
 * it read from the store (present or absent) and each KEYS prefix; when a
 * commit changes a watched key, or creates or deletes a key under a watched
 * prefix, every other watching transaction is marked conflicted at once
 * (as Redis WATCH does). Nothing is kept for conflict checks beyond the open
 * transactions' own watches, which are dropped when they end.
 * The data lives in a CompactMap (bytes in typed arrays, not JS strings): a
 * million keys cost tens of bytes each instead of hundreds (issue 6). The
 * fast path reads and writes it by bytes (findAscii, putAscii); a key becomes
 * a string only when a transaction watches something.
 * Must not: know about sockets, replies, sessions or the disk.
 */
import type { CommitOp, EncodedValue } from "./commit-log.ts";
import { CompactMap, type AsciiEntry } from "./compact-map.ts";
import { latin1Text } from "./text.ts";

/** Something that can be marked conflicted: an open transaction. */
export interface Watcher {
  conflicted: boolean;
}

export class Store {
  private readonly data: CompactMap;
  /** Number of the last commit. */
  seq: number;
  /** Who watches each key: one transaction as itself (the common case, no Set to allocate), or a Set. */
  private readonly keyWatchers = new Map<string, Watcher | Set<Watcher>>();
  private readonly prefixWatchers = new Map<Watcher, string[]>();

  /**
   * Starts from initial: a CompactMap is adopted as is (a loader can build
   * one directly, with Map-like set/delete, and skip a copy); a Map or any
   * other iterable of pairs is copied.
   */
  constructor(initial: CompactMap | Iterable<readonly [string, EncodedValue]> = [], seq = 0) {
    if (initial instanceof CompactMap) {
      this.data = initial;
    } else {
      this.data = new CompactMap(initial instanceof Map ? initial.size : 0);
      for (const [key, value] of initial) this.data.set(key, value);
    }
    this.seq = seq;
  }

  get size(): number {
    return this.data.size;
  }

  get(key: string): EncodedValue | undefined {
    return this.data.get(key);
  }

  /** The fast path's read by bytes (see CompactMap.findAscii): an entry handle, or -1 when absent. */
  findAscii(src: Uint8Array, start: number, end: number): number {
    return this.data.findAscii(src, start, end);
  }

  valueByteLength(entry: number): number {
    return this.data.valueByteLength(entry);
  }

  /** Copies the encoded value of entry to dest at pos; the end, or -1 when it is not all ASCII. */
  copyAsciiValue(entry: number, dest: Uint8Array, pos: number): number {
    return this.data.copyAsciiValue(entry, dest, pos);
  }

  /**
   * Live iteration over the committed entries (snapshots read this across
   * many event-loop turns while commits go on): an entry present throughout
   * is visited once, with a value it had meanwhile; others may or may not be.
   */
  entries(): IterableIterator<[string, EncodedValue]> {
    return this.data.entries();
  }

  /** Keys starting with prefix, unsorted. O(keys): like Redis KEYS, not for hot paths. */
  keysWithPrefix(prefix: string): string[] {
    return this.data.keysWithPrefix(prefix);
  }

  /** Auto-committed PUT. Returns the commit's seq. */
  put(key: string, value: EncodedValue): number {
    const created = this.data.set(key, value);
    this.changed(key, created, null);
    return ++this.seq;
  }

  /** put() for a key and an encoded value given as ASCII bytes (the fast path). Returns the commit's seq. */
  putAscii(entry: AsciiEntry): number {
    const created = this.data.setAscii(entry);
    // The key is made a string only when a transaction watches something.
    if (this.keyWatchers.size !== 0 || (created && this.prefixWatchers.size !== 0)) {
      this.changed(latin1Text(entry.keySrc, entry.keyStart, entry.keyEnd), created, null);
    }
    return ++this.seq;
  }

  /** Auto-committed DEL of a present key. Returns the commit's seq. */
  delete(key: string): number {
    this.data.delete(key);
    this.changed(key, true, null);
    return ++this.seq;
  }

  /** Applies one transaction's changes at once. Returns the commit's seq. */
  apply(ops: readonly CommitOp[], committer: Watcher | null): number {
    for (const [key, value] of ops) {
      let existenceChanged: boolean;
      if (value === null) {
        existenceChanged = this.data.delete(key);
      } else {
        existenceChanged = this.data.set(key, value);
      }
      this.changed(key, existenceChanged, committer);
    }
    return ++this.seq;
  }

  /**
   * Marks w conflicted when another commit changes key (present or absent
   * now). Returns true when this is a new watch (so w must unwatch key later).
   */
  watchKey(w: Watcher, key: string): boolean {
    if (w.conflicted) return false;
    const current = this.keyWatchers.get(key);
    if (current === undefined) {
      this.keyWatchers.set(key, w);
      return true;
    }
    if (current === w) return false;
    if (current instanceof Set) {
      if (current.has(w)) return false;
      current.add(w);
      return true;
    }
    this.keyWatchers.set(key, new Set([current, w]));
    return true;
  }

  /** Marks w conflicted when another commit creates or deletes a key under prefix. */
  watchPrefix(w: Watcher, prefix: string): void {
    if (w.conflicted) return;
    const prefixes = this.prefixWatchers.get(w);
    if (prefixes === undefined) this.prefixWatchers.set(w, [prefix]);
    else if (!prefixes.includes(prefix)) prefixes.push(prefix);
  }

  /** Drops every watch of w on the given keys and all its prefixes. */
  unwatch(w: Watcher, keys: readonly string[]): void {
    for (const key of keys) {
      const current = this.keyWatchers.get(key);
      if (current === w) {
        this.keyWatchers.delete(key);
      } else if (current instanceof Set) {
        current.delete(w);
        if (current.size === 0) this.keyWatchers.delete(key);
      }
    }
    this.prefixWatchers.delete(w);
  }

  /** Watch entries held, for STATS and for tests that check bookkeeping is freed. */
  get watchCounts(): { keys: number; prefixes: number } {
    return { keys: this.keyWatchers.size, prefixes: this.prefixWatchers.size };
  }

  private changed(key: string, existenceChanged: boolean, committer: Watcher | null): void {
    const watchers = this.keyWatchers.get(key);
    if (watchers instanceof Set) {
      for (const w of watchers) if (w !== committer) w.conflicted = true;
    } else if (watchers !== undefined && watchers !== committer) {
      watchers.conflicted = true;
    }
    if (existenceChanged && this.prefixWatchers.size !== 0) {
      for (const [w, prefixes] of this.prefixWatchers) {
        if (w === committer || w.conflicted) continue;
        for (const prefix of prefixes) {
          if (key.startsWith(prefix)) {
            w.conflicted = true;
            break;
          }
        }
      }
    }
  }
}
