/**
 * The committed state: key → encoded value, the commit counter, and the
 * watches that make optimistic transactions serializable.
 *
 * Owns: the data map, `seq` (one per commit), applying a commit atomically
 * (one synchronous step), and conflict marking. A transaction watches each key
 * it read from the store (present or absent) and each KEYS prefix (less the
 * keys its answer took from the transaction's own writes); when a commit
 * changes a watched key, or creates, changes or deletes a key under a
 * watched prefix (PROTOCOL §4 counts every key KEYS listed as read, so a new
 * value conflicts too, though the answer held only names), every other
 * watching transaction is marked conflicted at once (as Redis WATCH does). A delete of an absent key changes nothing. Nothing is kept
 * for conflict checks beyond the open transactions' own watches, which are
 * dropped when they end.
 * Deferred watches (watchAscii): a read by the fast path is only noted, as
 * bytes in a small table (DeferredReads), and a commit looks for the keys it
 * changes there as well as among the watches; the reads become real watches
 * (a string in a Map) only when the table fills up. The common transaction
 * (START, GET, PUT, COMMIT) thus watches without a string or a Map entry,
 * however many other transactions commit while it is open.
 * A bound on what one transaction watches (maxWatchesPerTransaction, the
 * server's --max-transaction-reads): a transaction that has read more
 * distinct keys and KEYS prefixes than that stops watching each of them and
 * watches the whole store instead, so that any later commit that changes a
 * key (another connection's: a committer drops its watches first) conflicts
 * with it (PostgreSQL promotes its predicate locks to coarser ones
 * past max_pred_locks_per_transaction the same way). It stays serializable,
 * with more conflicts, and one client reading a million keys in a
 * transaction cannot hold a million watches.
 * The data lives in a CompactMap (bytes in typed arrays, not JS strings): a
 * million keys cost tens of bytes each instead of hundreds (issue 6). The
 * fast path reads and writes it by bytes (findAscii, putAscii); a key becomes
 * a string only when a transaction watches something.
 * Must not: know about sockets, replies, sessions or the disk.
 */
import type { CommitOp, EncodedValue } from "./commit-log.ts";
import { CompactMap, type AsciiEntry } from "./compact-map.ts";
import { DEFERRED_KEY_MAX_BYTES, DeferredReads } from "./deferred-reads.ts";
import { latin1Text } from "./text.ts";

/** A watch list at most this long is emptied in place and reused; a longer one is replaced (see unwatchKeys). */
const KEPT_WATCH_SLOTS = 64;

/** Something that can be marked conflicted: an open transaction. */
export interface Watcher {
  conflicted: boolean;
  /** The keys it watches (kept by the store, unique), so that unwatch can drop them. */
  watchedKeys: string[];
  /** Set by the store: it read too much to watch each read, and any commit that changes a key conflicts with it (see the top). */
  watchesEverything: boolean;
}

/**
 * A KEYS prefix a transaction read. ownKeys: keys under it whose presence the
 * answer took from the transaction's own writes, not from the store, so
 * another commit creating or deleting one of them is no conflict (null: none).
 */
interface PrefixWatch {
  ownKeys: OwnKeys | null;
}

/** Keys a transaction wrote (a Set, or the Map of its writes). */
type OwnKeys = { has(key: string): boolean; keys(): Iterable<string> };

export class Store {
  private readonly data: CompactMap;
  /** Number of the last commit. */
  seq: number;
  /** Who watches each key: one transaction as itself (the common case, no Set to allocate), or a Set. */
  private readonly keyWatchers = new Map<string, Watcher | Set<Watcher>>();
  private readonly prefixWatches = new PrefixWatches();
  /** Reads by the fast path inside transactions, not (yet) watches: see the top. */
  private readonly deferred = new DeferredReads();
  /** Open transactions that watch the whole store and are not conflicted yet (see the top). */
  private readonly everythingWatchers = new Set<Watcher>();
  /** Distinct keys and prefixes one transaction may watch before it watches the whole store instead. */
  maxWatchesPerTransaction = Number.MAX_SAFE_INTEGER;
  /** Transactions that were made to watch the whole store, since the start (for STATS). */
  watchedEverythingTotal = 0;

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
    // Loading may have left a growth half done; a store started for reads should not hold two arenas meanwhile.
    this.data.finishGrowth();
    this.seq = seq;
  }

  get size(): number {
    return this.data.size;
  }

  /** Bytes the stored records may take (--max-data-bytes); writes that could pass it are refused. */
  get dataLimitBytes(): number {
    return this.data.limitBytes;
  }

  set dataLimitBytes(bytes: number) {
    this.data.limitBytes = bytes;
  }

  /** Bytes the stored records take now (what the limit counts; space left by deletes is not). */
  get dataBytes(): number {
    return this.data.liveBytes;
  }

  /** Bytes the store's buffers take, records and free space, with both old and new while a growth runs. */
  get allocatedBytes(): number {
    return this.data.allocatedBytes;
  }

  /** True while a grown arena or index is being filled beside the old one (changes and reads move it along). */
  get growing(): boolean {
    return this.data.growthRunning;
  }

  /**
   * Moves a running growth along for up to budgetMs, for a timer to call
   * (Redis's activerehashing: 1 ms of every 100): changes and reads move it
   * too, but a server with no traffic would hold both buffers for good.
   */
  growInBackground(budgetMs: number): void {
    if (!this.data.growthRunning) return;
    const deadline = performance.now() + budgetMs;
    while (this.data.advanceGrowth() && performance.now() < deadline);
  }

  /** Whether a PUT of a key and an encoded value of these lengths (code units) fits under the limit. */
  hasRoomForPut(keyLength: number, valueLength: number): boolean {
    return this.data.hasRoomFor(CompactMap.recordWordsAtMost(keyLength, valueLength));
  }

  /** Whether every PUT of a commit fits under the limit (each counted as a new record: the most it can take). */
  hasRoomFor(ops: readonly CommitOp[]): boolean {
    let words = 0;
    for (const [key, value] of ops) if (value !== null) words += CompactMap.recordWordsAtMost(key.length, value.length);
    return this.data.hasRoomFor(words);
  }

  /** Whether the PUTs entries[0, count) fit under the limit (each counted as a new record: the most it can take). */
  hasRoomForAscii(entries: readonly AsciiEntry[], count: number): boolean {
    let words = 0;
    for (let i = 0; i < count; i++) {
      const entry = entries[i]!;
      words += CompactMap.recordWordsAtMost(entry.keyEnd - entry.keyStart, entry.valueEnd - entry.valueStart);
    }
    return this.data.hasRoomFor(words);
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
    this.data.set(key, value);
    this.changed(key);
    return ++this.seq;
  }

  /**
   * put() for a key and an encoded value given as ASCII bytes (the fast
   * path). Returns the commit's seq.
   */
  putAscii(entry: AsciiEntry): number {
    this.setAscii(entry);
    return ++this.seq;
  }

  /**
   * apply() of a transaction whose changes are all PUTs given as ASCII bytes,
   * of distinct keys: entries[0, count). Returns the commit's seq. The
   * committing transaction must have dropped its own watches (unwatch) first.
   */
  applyAscii(entries: readonly AsciiEntry[], count: number): number {
    for (let i = 0; i < count; i++) this.setAscii(entries[i]!);
    return ++this.seq;
  }

  /** Auto-committed DEL of a present key. Returns the commit's seq. */
  delete(key: string): number {
    this.data.delete(key);
    this.changed(key);
    return ++this.seq;
  }

  /**
   * Applies one transaction's changes at once. Returns the commit's seq. The
   * committing transaction must have dropped its own watches (unwatch) first.
   */
  apply(ops: readonly CommitOp[]): number {
    for (const [key, value] of ops) {
      if (value !== null) {
        this.data.set(key, value);
        this.changed(key);
      } else if (this.data.delete(key)) {
        this.changed(key);
      }
      // A delete of an absent key (a transaction created and then deleted
      // it) changes nothing, so it conflicts no one, as in Redis WATCH.
    }
    return ++this.seq;
  }

  /** Marks w conflicted when another commit changes key (present or absent now). */
  watchKey(w: Watcher, key: string): void {
    if (w.conflicted || w.watchesEverything) return;
    const current = this.keyWatchers.get(key);
    if (current === w) return;
    if (current instanceof Set && current.has(w)) return;
    if (this.watchesOf(w) >= this.maxWatchesPerTransaction) {
      this.watchEverything(w);
      return;
    }
    if (current === undefined) {
      this.keyWatchers.set(key, w);
    } else if (current instanceof Set) {
      current.add(w);
    } else {
      this.keyWatchers.set(key, new Set([current, w]));
    }
    w.watchedKeys.push(key);
  }

  /**
   * watchKey() for a key given as ASCII bytes (the fast path), deferred: the
   * bytes are noted, and become a watch only if the table of such reads fills
   * up (see the top). A key too long for the table is watched at once.
   */
  watchAscii(w: Watcher, src: Uint8Array, start: number, end: number): void {
    if (w.conflicted || w.watchesEverything) return;
    if (end - start > DEFERRED_KEY_MAX_BYTES) {
      this.watchKey(w, latin1Text(src, start, end));
      return;
    }
    if (this.deferred.isFull) {
      this.watchDeferred();
      // Those reads may have taken w past the read limit.
      if (w.watchesEverything) return;
    }
    this.deferred.add(w, src, start, end);
  }

  /**
   * Marks w conflicted when another commit creates or deletes a key under
   * prefix, except the keys in ownKeys (answered from w's own writes).
   */
  watchPrefix(w: Watcher, prefix: string, ownKeys: OwnKeys | null): void {
    if (w.conflicted || w.watchesEverything) return;
    if (!this.prefixWatches.watches(w, prefix) && this.watchesOf(w) >= this.maxWatchesPerTransaction) {
      this.watchEverything(w);
      return;
    }
    this.prefixWatches.add(w, prefix, ownKeys);
  }

  /** Drops every watch of w: its keys, its prefixes and its deferred reads. */
  unwatch(w: Watcher): void {
    // Each step only when there is something to drop: most transactions have only deferred reads.
    if (w.watchesEverything) {
      w.watchesEverything = false;
      this.everythingWatchers.delete(w);
    }
    if (w.watchedKeys.length !== 0) this.unwatchKeys(w);
    if (!this.prefixWatches.isEmpty) this.prefixWatches.remove(w);
    if (this.deferred.size !== 0) this.deferred.drop(w);
  }

  private unwatchKeys(w: Watcher): void {
    for (const key of w.watchedKeys) {
      const current = this.keyWatchers.get(key);
      if (current === w) {
        this.keyWatchers.delete(key);
      } else if (current instanceof Set) {
        current.delete(w);
        if (current.size === 0) this.keyWatchers.delete(key);
      }
    }
    // Emptied in place for reuse, but an array keeps its storage after `length = 0`: a list as long as a big
    // transaction's (up to --max-transaction-reads) would stay with its connection until it closed.
    if (w.watchedKeys.length > KEPT_WATCH_SLOTS) w.watchedKeys = [];
    else w.watchedKeys.length = 0;
  }

  /** Watch entries held (deferred reads included), for STATS and for tests that check bookkeeping is freed. */
  get watchCounts(): { keys: number; prefixes: number; deferredReads: number; everything: number } {
    return {
      keys: this.keyWatchers.size,
      prefixes: this.prefixWatches.prefixCount,
      deferredReads: this.deferred.size,
      everything: this.everythingWatchers.size,
    };
  }

  /** Keys and prefixes w watches one by one (its deferred reads, at most a small table's worth, not counted). */
  private watchesOf(w: Watcher): number {
    return w.watchedKeys.length + (this.prefixWatches.isEmpty ? 0 : this.prefixWatches.countOf(w));
  }

  /** w read too much: its watches give way to one on the whole store (see the top). */
  private watchEverything(w: Watcher): void {
    this.unwatchKeys(w);
    if (!this.prefixWatches.isEmpty) this.prefixWatches.remove(w);
    // Its deferred reads stay until it ends: the table is small, and they only mark it conflicted, as any commit now does.
    w.watchesEverything = true;
    this.everythingWatchers.add(w);
    this.watchedEverythingTotal++;
  }

  /** A commit changed something: every transaction watching the whole store conflicts, and needs watching no more. */
  private markEverythingWatchers(): void {
    for (const w of this.everythingWatchers) w.conflicted = true;
    this.everythingWatchers.clear();
  }

  /** The table of deferred reads is full: they all become watches, which cost a commit nothing when they are not its keys. */
  private watchDeferred(): void {
    this.deferred.drain((reader, key) => this.watchKey(reader, key));
  }

  /** Stores one PUT given as bytes and marks the transactions watching its key. */
  private setAscii(entry: AsciiEntry): void {
    this.data.setAscii(entry);
    if (this.everythingWatchers.size !== 0) this.markEverythingWatchers();
    if (this.deferred.size !== 0) this.deferred.markReadersOfBytes(entry.keySrc, entry.keyStart, entry.keyEnd);
    // The key is made a string only when a transaction watches something.
    if (this.keyWatchers.size !== 0 || !this.prefixWatches.isEmpty) {
      this.markWatchers(latin1Text(entry.keySrc, entry.keyStart, entry.keyEnd));
    }
  }

  /** Marks every transaction watching key, or a prefix of it, conflicted (less those whose own write it is). */
  private changed(key: string): void {
    if (this.everythingWatchers.size !== 0) this.markEverythingWatchers();
    if (this.deferred.size !== 0) this.deferred.markReadersOf(key);
    this.markWatchers(key);
  }

  /** changed() but for the deferred reads: the watches of key and of its prefixes. */
  private markWatchers(key: string): void {
    const watchers = this.keyWatchers.get(key);
    if (watchers instanceof Set) {
      for (const w of watchers) w.conflicted = true;
    } else if (watchers !== undefined) {
      watchers.conflicted = true;
    }
    if (!this.prefixWatches.isEmpty) this.prefixWatches.markConflicts(key);
  }
}

/**
 * The KEYS prefixes open transactions read, indexed by prefix: a commit that
 * changes a key looks up that key's own prefixes, one lookup per
 * distinct watched length, instead of scanning every watch of every open
 * transaction (thousands held open slowed every key creation hundreds of times).
 */
class PrefixWatches {
  private readonly byPrefix = new Map<string, Map<Watcher, PrefixWatch>>();
  private readonly byWatcher = new Map<Watcher, Map<string, PrefixWatch>>();
  /** How many watched prefixes there are of each length. */
  private readonly lengths = new Map<number, number>();

  get isEmpty(): boolean {
    return this.byWatcher.size === 0;
  }

  /** Prefixes w watches. */
  countOf(w: Watcher): number {
    return this.byWatcher.get(w)?.size ?? 0;
  }

  watches(w: Watcher, prefix: string): boolean {
    return this.byWatcher.get(w)?.has(prefix) === true;
  }

  /**
   * Distinct prefixes watched, by anyone. Reported as the larger of the two
   * indexes' sizes (they are equal while consistent), so that a test checking
   * the bookkeeping is freed sees an entry left behind in either.
   */
  get prefixCount(): number {
    return Math.max(this.byPrefix.size, this.lengths.size);
  }

  add(w: Watcher, prefix: string, ownKeys: OwnKeys | null): void {
    let mine = this.byWatcher.get(w);
    const same = mine?.get(prefix);
    if (same !== undefined) {
      // Read twice: a key is exempt only if neither read took it from the store.
      same.ownKeys = bothOwn(same.ownKeys, ownKeys);
      return;
    }
    if (mine === undefined) this.byWatcher.set(w, (mine = new Map()));
    const watch: PrefixWatch = { ownKeys };
    mine.set(prefix, watch);
    let watchers = this.byPrefix.get(prefix);
    if (watchers === undefined) {
      this.byPrefix.set(prefix, (watchers = new Map()));
      this.lengths.set(prefix.length, (this.lengths.get(prefix.length) ?? 0) + 1);
    }
    watchers.set(w, watch);
  }

  remove(w: Watcher): void {
    const mine = this.byWatcher.get(w);
    if (mine === undefined) return;
    this.byWatcher.delete(w);
    for (const prefix of mine.keys()) {
      const watchers = this.byPrefix.get(prefix)!;
      watchers.delete(w);
      if (watchers.size !== 0) continue;
      this.byPrefix.delete(prefix);
      const left = this.lengths.get(prefix.length)! - 1;
      if (left === 0) this.lengths.delete(prefix.length);
      else this.lengths.set(prefix.length, left);
    }
  }

  /** Marks conflicted every transaction watching a prefix of key, unless its answer took key from its own writes. */
  markConflicts(key: string): void {
    for (const length of this.lengths.keys()) {
      if (length > key.length) continue;
      const watchers = this.byPrefix.get(length === key.length ? key : key.slice(0, length));
      if (watchers === undefined) continue;
      for (const [w, watch] of watchers) {
        if (watch.ownKeys?.has(key) !== true) w.conflicted = true;
      }
    }
  }
}

/** The keys in both sets (null: no keys). */
function bothOwn(a: OwnKeys | null, b: OwnKeys | null): OwnKeys | null {
  if (a === null || b === null) return null;
  const both = new Set<string>();
  for (const key of a.keys()) if (b.has(key)) both.add(key);
  return both.size === 0 ? null : both;
}
