/**
 * CompactMap: a string → string map kept in a few typed arrays instead of
 * JS strings, so a million entries cost tens of bytes each instead of hundreds
 * and give the garbage collector nothing to trace.
 *
 * Owns: the byte layout of entries, hashing and probing, growth spread over
 * changes (arena migrations, index rehashes), packing (sweeps), iteration
 * that tolerates changes between steps, a small cache of recently used
 * values as strings, and byte access for the server's fast path (find an
 * ASCII key given as bytes, copy an ASCII value out, set a key and value
 * given as bytes) that never makes a string.
 * Must not: know about JSON, watches, commits or anything above a plain map.
 *
 * Layout
 * - Strings are stored as code units: "narrow" (one byte per unit, Latin-1)
 *   when every unit is below 256, otherwise "wide" (two bytes per unit,
 *   UTF-16LE). Both round-trip every JS string exactly, lone surrogates included.
 * - arena: one growable buffer of records, each starting on a 4-byte word:
 *     word 0  key length in code units << 1, | 1 when the key is wide
 *     word 1  value length in code units << 1, | 1 when the value is wide
 *     word 2  value capacity in bytes (the value may change in place up to it)
 *     word 3  the entry's id
 *     then the key bytes, then the value bytes, padded to a whole word.
 *   A value that no longer fits moves to a new record; the old one becomes
 *   garbage. Once garbage outweighs the live records, a sweep packs the arena
 *   a little at each change (live records slide down, garbage is dropped), so
 *   that no single PUT or DEL pays for the whole store. Growing the arena
 *   (doubling) allocates a new one and moves the records into it a little
 *   at each change too (a migration: records below copiedTo live in the
 *   new arena, the rest still in the old one), so that no change pays for
 *   copying a large store either; see reserve(). The arena holds at
 *   most MAX_DATA_BYTES (2 GiB): byte offsets (word × 4) must stay int32s for
 *   the shifts below, and Bun caps a typed array at 4 GiB; when garbage
 *   fills it up to there, the next record packs it all first (O(arena), once).
 *   A caller may set a lower limit on live records (`limitBytes`) and asks
 *   hasRoomFor() before a change that may add records; set() and setAscii()
 *   do not check it (a loader may pass it), only the 2 GiB cap, past which
 *   they throw, having changed nothing.
 * - index: open addressing with linear probing; pairs (record word + 1, hash),
 *   0 for an empty slot; a power-of-two slot count kept at load ≤ 0.6.
 *   Deletion shifts the following entries back instead of leaving tombstones.
 *   Growing it is a rehash spread over the following changes (growIndex).
 *   The hash is FNV-1a over code units with a per-process random seed and a
 *   final mix (murmur3 fmix32), so colliding keys cannot be precomputed.
 * - entry ids: every entry has an id that stays the same while it lives, across
 *   sweeps and index resizes. `offsets[id]` (offsetOf, in pages that are
 *   added, never copied) is the word where its record starts; a free id
 *   holds -2 - (next free id) instead, a linked free list, and an id taken
 *   for a new entry holds -1 until its record is indexed. Iterators walk
 *   ids, re-reading offsets at each step, so they survive changes.
 * - recent values: decoding a value makes a new string (≈30-50 ns with the
 *   collector's share), which a Map of strings never paid. A direct-mapped
 *   cache of the last RECENT_SLOTS short values read, by id, keeps hot keys as
 *   cheap to read as before, for a bounded, small amount of memory. It holds
 *   only strings this map decoded (set forgets instead of keeping the caller's
 *   string, which may be a slice pinning a much larger one).
 */

import { copyBytes, textEqualsBytes } from "./byte-buffer.ts";

/** The few Node Buffer methods used here that @types/node leaves out (Bun implements them). */
interface RawBuffer extends Buffer {
  latin1Slice(start: number, end: number): string;
  ucs2Slice(start: number, end: number): string;
  latin1Write(text: string, offset: number, length: number): number;
  ucs2Write(text: string, offset: number, length: number): number;
}

const HEADER_WORDS = 4;
const KEY_HEAD = 0;
const VALUE_HEAD = 1;
const VALUE_CAPACITY = 2;
const ID = 3;
const MIN_ARENA_WORDS = 1024;
/** Most bytes of records the arena holds: 2 GiB, less a margin so that a record's end offset is an int32 too. */
export const MAX_DATA_BYTES = 2 ** 31;
const MAX_ARENA_WORDS = MAX_DATA_BYTES / 4 - 64;
/**
 * Most words of records copied to give memory back after a sweep (16 MiB, a
 * few ms): past it the arena keeps its size, and the room for new records.
 */
const SHRINK_MAX_WORDS = 4 * 1024 * 1024;
/** Words of records a sweep moves or skips per change of the map, besides twice what the change appends. */
const SWEEP_WORDS = 1024;
/**
 * Words of records a migration copies per change, besides twice what the
 * change appends (so it always ends before the new arena fills): a copy
 * into fresh pages, cheaper per word than a sweep's moves, but the kernel
 * fills each new page (about 3 ms per MB on the VM measured).
 */
const MIGRATE_WORDS = 4096;
/** copiedTo while no migration runs: every word is in the current arena. */
const NOT_MIGRATING = 0x7fffffff;
/**
 * Slots of the old index a rehash moves per new or deleted entry: at least
 * 2, so that it ends before the new index (twice the slots) fills.
 */
const REHASH_SLOTS = 1024;
/** A read moves a migration or rehash along by 1/2^this of a change's share. */
const READ_STEP_SHIFT = 3;
const MIN_SLOTS = 16;
/** Most entries per index slot before the index doubles (linear probing stays short below it). */
const MAX_LOAD = 0.6;
/** Ids per page of the id table: it grows by a page, never by a copy (16 MB at 4,000,000 keys held the loop for tens of ms). */
const ID_PAGE_SHIFT = 14;
const ID_PAGE_SIZE = 1 << ID_PAGE_SHIFT;
const ID_PAGE_MASK = ID_PAGE_SIZE - 1;
const FREE_END = -1;
/** offsets[id] of an id taken for a new entry whose record is not yet in the index (negative, so walks skip it). */
const NOT_PLACED = -1;
const HASH_SEED = (Math.random() * 0x100000000) | 0;
/** Slots of the recent-values cache (a power of two). */
const RECENT_SLOTS = 1 << 14;
/** Longer values are not cached: the cache must stay small whatever is stored. */
const RECENT_MAX_LENGTH = 256;

/** Hash of a string's code units (the same whether it is stored narrow or wide); DeferredReads filters with it too. */
export function hashString(text: string): number {
  let h = HASH_SEED ^ text.length;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return finalMix(h);
}

/** hashString of the string whose code units are bytes[start, end) (one per byte, as for ASCII). */
export function hashBytes(bytes: Uint8Array, start: number, end: number): number {
  let h = HASH_SEED ^ (end - start);
  for (let i = start; i < end; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  return finalMix(h);
}

/** murmur3's fmix32: spreads FNV-1a's weak low bits over the whole word. */
function finalMix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/**
 * An entry given as bytes, for the fast path: the key is
 * keySrc[keyStart, keyEnd) and the value valueSrc[valueStart, valueEnd), both
 * ASCII (every byte below 0x80, so each byte is one code unit). The fast path
 * fills one such object and passes it down through the store and the journal.
 */
export interface AsciiEntry {
  keySrc: Uint8Array;
  keyStart: number;
  keyEnd: number;
  valueSrc: Uint8Array;
  valueStart: number;
  valueEnd: number;
}

/** An entry pointing at no bytes, for a holder that fills it in later. */
export function emptyAsciiEntry(): AsciiEntry {
  const none = new Uint8Array(0);
  return { keySrc: none, keyStart: 0, keyEnd: 0, valueSrc: none, valueStart: 0, valueEnd: 0 };
}

/** 1 when text needs two bytes per code unit, else 0. */
function wideFlag(text: string): number {
  let all = 0;
  for (let i = 0; i < text.length; i++) all |= text.charCodeAt(i);
  return all > 0xff ? 1 : 0;
}

function wordsFor(bytes: number): number {
  return (bytes + 3) >>> 2;
}

/** Whether the first `length` code units stored wide at bytes[start] are text's. */
function wideEquals(bytes: Uint8Array, start: number, text: string, length: number): boolean {
  for (let i = 0; i < length; i++) {
    const p = start + 2 * i;
    if ((bytes[p]! | (bytes[p + 1]! << 8)) !== text.charCodeAt(i)) return false;
  }
  return true;
}

/** Empties slot of an index, then moves back each following entry that may not stay behind the gap (no tombstones). */
function removeFrom(index: Int32Array, mask: number, slot: number): void {
  let gap = slot;
  let next = (slot + 1) & mask;
  for (;;) {
    const entry = index[next << 1]!;
    if (entry === 0) break;
    const home = index[(next << 1) + 1]! & mask;
    // The entry must stay when its home lies cyclically in (gap, next]: moving it would hide it.
    const stays = gap <= next ? gap < home && home <= next : gap < home || home <= next;
    if (!stays) {
      index[gap << 1] = entry;
      index[(gap << 1) + 1] = index[(next << 1) + 1]!;
      gap = next;
    }
    next = (next + 1) & mask;
  }
  index[gap << 1] = 0;
  index[(gap << 1) + 1] = 0;
}

/** One buffer of records, seen as words, bytes and a Buffer (for its latin1/ucs2 codecs). */
interface Arena {
  readonly words: Int32Array;
  readonly bytes: Uint8Array;
  readonly text: RawBuffer;
}

function arenaOver(words: Int32Array): Arena {
  return { words, bytes: new Uint8Array(words.buffer), text: Buffer.from(words.buffer) as RawBuffer };
}

export class CompactMap {
  private arena!: Arena;
  /**
   * While a migration runs: the arena being left, which still holds the
   * records in [copiedTo, migrateEnd); otherwise the arena itself. A record
   * never straddles either bound, so any word of a record finds its arena.
   */
  private oldArena!: Arena;
  private copiedTo = NOT_MIGRATING;
  private migrateEnd = 0;
  /** A migration or a rehash runs (one flag for the read path to test). */
  private growing = false;
  /** Words of the arena in use, live records and garbage. */
  private usedWords = 0;
  private garbageWords = 0;
  /** A running sweep: records before sweepTo are packed, sweepTo..sweepFrom is free, sweepFrom.. not yet swept. -1: none. */
  private sweepFrom = -1;
  private sweepTo = 0;
  /** Words a migration copies per change besides twice what it appends: MIGRATE_WORDS, lower only in tests. */
  private readonly migrateWords: number;
  /** The arena's cap in words: MAX_ARENA_WORDS, lower only in tests of what happens there. */
  private readonly capWords: number;
  /** Least garbage (1/64 of the cap: 32 MiB) that makes a whole sweep at the cap worth its pause. */
  private readonly fullSweepMinWords: number;
  /** Words of live records hasRoomFor() allows: from limitBytes, at most capWords. */
  private limitWords: number;
  /** limitBytes as set (reported as given; the words above stay within the cap). */
  private limitSetBytes: number;

  /** Pairs (record word + 1, hash); 0 marks an empty slot. */
  private index: Int32Array;
  private mask: number;
  private count = 0;
  /**
   * While a rehash runs (see growIndex): the index being left, else null.
   * Its slots from rehashStart on, rehashDone of them (cyclically), have
   * been moved to the new index; what they still hold is stale and skipped,
   * but kept, so that probes for the entries not yet moved pass over them.
   */
  private oldIndex: Int32Array | null = null;
  private oldMask = 0;
  private rehashStart = 0;
  private rehashDone = 0;
  private readonly rehashSlots: number;

  /** Per id, in pages of ID_PAGE_SIZE: record word, or -2 - next free id. */
  private readonly idPages: Int32Array[] = [];
  /** Ids below this have been handed out at least once. */
  private idLimit = 0;
  private freeHead = FREE_END;

  /** Direct-mapped by id: recentIds[id & mask] === id + 1 when recent[...] holds id's value. */
  private readonly recent: (string | undefined)[] = new Array<string | undefined>(RECENT_SLOTS).fill(undefined);
  private readonly recentIds = new Int32Array(RECENT_SLOTS);

  /**
   * expectedSize: entries about to be loaded, so that the index and ids are
   * sized once. tuning, for tests only: capBytes, the arena's cap
   * (MAX_DATA_BYTES), lowered to reach the cap without 2 GiB of records;
   * migrateWords and rehashSlots (MIGRATE_WORDS, REHASH_SLOTS), lowered so
   * that a migration or a rehash spans many changes.
   */
  constructor(expectedSize = 0, tuning: { capBytes?: number; migrateWords?: number; rehashSlots?: number } = {}) {
    const { capBytes = MAX_DATA_BYTES, migrateWords = MIGRATE_WORDS, rehashSlots = REHASH_SLOTS } = tuning;
    this.migrateWords = migrateWords;
    this.rehashSlots = Math.max(2, rehashSlots);
    this.capWords = this.limitWords = Math.min(MAX_ARENA_WORDS, Math.floor(capBytes / 4));
    this.limitSetBytes = Math.min(capBytes, MAX_DATA_BYTES);
    this.fullSweepMinWords = this.capWords >>> 6;
    let slots = MIN_SLOTS;
    while (slots * MAX_LOAD < expectedSize) slots *= 2;
    this.index = new Int32Array(slots * 2);
    this.mask = slots - 1;
    do this.idPages.push(new Int32Array(ID_PAGE_SIZE));
    while (this.idPages.length * ID_PAGE_SIZE < expectedSize);
    this.arena = this.oldArena = arenaOver(new Int32Array(MIN_ARENA_WORDS));
  }

  get size(): number {
    return this.count;
  }

  /** True while records are being moved into a grown arena, a few at each change (for tests and benchmarks). */
  get migrating(): boolean {
    return this.copiedTo !== NOT_MIGRATING;
  }

  /** True while index entries are being moved into a grown index, a few at each change (for tests and benchmarks). */
  get rehashing(): boolean {
    return this.oldIndex !== null;
  }

  /** True while a grown arena or index is being filled: until then the old one is held beside it. */
  get growthRunning(): boolean {
    return this.growing;
  }

  /** Moves a running growth along by one change's share without a change (for idle time); false once none runs. */
  advanceGrowth(): boolean {
    if (this.growing) this.growthStep(0);
    return this.growing;
  }

  /**
   * Ends a running migration and rehash at once (O(map)): for a loader
   * that has built the map, so that a store served mostly by reads does
   * not hold two arenas or probe two indexes for long.
   */
  finishGrowth(): void {
    this.finishMigration();
    this.finishRehash();
  }

  /** Bytes of live records hasRoomFor() allows (MAX_DATA_BYTES unless lowered). */
  get limitBytes(): number {
    return this.limitSetBytes;
  }

  set limitBytes(bytes: number) {
    this.limitSetBytes = Math.min(bytes, MAX_DATA_BYTES);
    this.limitWords = Math.min(Math.floor(bytes / 4), this.capWords);
  }

  /** Bytes of live records (keys, values, headers, padding), as counted against limitBytes; garbage is not counted. */
  get liveBytes(): number {
    return this.liveWords() * 4;
  }

  /**
   * Words a new record for a key and a value of these lengths (in code
   * units) may take: wide, the most either can need. hasRoomFor() takes a sum
   * of these for every PUT of a change.
   */
  static recordWordsAtMost(keyLength: number, valueLength: number): number {
    return HEADER_WORDS + wordsFor(2 * (keyLength + valueLength));
  }

  /**
   * Whether `words` more words of records stay under the limit on live
   * records (a change that adds none always does: deletes go on past it).
   * Space left by deletes and moves is not counted: sweeps reclaim it. But
   * at the arena's 2 GiB cap a new record needs a whole sweep, so there the
   * space to reclaim must also be worth one (1/64 of the cap): else a store
   * kept full would pay an O(arena) pass on almost every write.
   */
  hasRoomFor(words: number): boolean {
    if (words === 0) return true;
    const live = this.liveWords();
    if (live + words > this.limitWords) return false;
    return this.usedWords + words <= this.capWords || this.usedWords - live >= Math.max(words, this.fullSweepMinWords);
  }

  get(key: string): string | undefined {
    if (this.growing) this.growthStep(READ_STEP_SHIFT);
    const entry = this.entryAt(this.probe(key, hashString(key)));
    if (entry === 0) return undefined;
    const at = entry - 1;
    const id = this.arenaOf(at).words[at + ID]!;
    const cached = id & (RECENT_SLOTS - 1);
    if (this.recentIds[cached] === id + 1) return this.recent[cached];
    const value = this.valueAt(at);
    if (value.length <= RECENT_MAX_LENGTH) this.remember(id, value);
    return value;
  }

  has(key: string): boolean {
    if (this.growing) this.growthStep(READ_STEP_SHIFT);
    return this.entryAt(this.probe(key, hashString(key))) !== 0;
  }

  // ---- byte access, for the server's fast path ----

  /**
   * The entry whose key is the ASCII text in src[start, end) (every byte below
   * 0x80), as a handle for the two methods below, or -1 when absent. A handle
   * is valid only until the map next changes.
   */
  findAscii(src: Uint8Array, start: number, end: number): number {
    if (this.growing) this.growthStep(READ_STEP_SHIFT);
    return this.entryAt(this.probeBytes(src, start, end, hashBytes(src, start, end))) - 1;
  }

  /** Bytes the value of entry takes (the room copyAsciiValue needs). */
  valueByteLength(entry: number): number {
    const head = this.arenaOf(entry).words[entry + VALUE_HEAD]!;
    return (head >>> 1) << (head & 1);
  }

  /**
   * Copies the value of entry to dest at pos when it is all ASCII (so its
   * bytes are also its UTF-8) and returns the position after it; returns -1
   * otherwise, when what was written must be ignored.
   */
  copyAsciiValue(entry: number, dest: Uint8Array, pos: number): number {
    const arena = this.arenaOf(entry);
    const words = arena.words;
    const head = words[entry + VALUE_HEAD]!;
    if ((head & 1) !== 0) return -1;
    const keyHead = words[entry + KEY_HEAD]!;
    const start = ((entry + HEADER_WORDS) << 2) + ((keyHead >>> 1) << (keyHead & 1));
    const end = start + (head >>> 1);
    const bytes = arena.bytes;
    let all = 0;
    for (let i = start; i < end; i++) {
      const c = bytes[i]!;
      all |= c;
      dest[pos++] = c;
    }
    return all < 0x80 ? pos : -1;
  }

  /** Sets key to value. Returns true when the key was not present before. */
  set(key: string, value: string): boolean {
    const hash = hashString(key);
    const slot = this.probe(key, hash);
    const entry = this.entryAt(slot);
    const valueWide = wideFlag(value);
    if (entry !== 0) {
      this.forget(this.arenaOf(entry - 1).words[entry - 1 + ID]!);
      this.writeString(value, valueWide, this.prepareValue(slot, value.length, valueWide));
      // After the write: a rehash step may move the entry out of `slot`, a migration step copy the record.
      if (this.growing) this.growthStep(0);
      return false;
    }
    const keyWide = wideFlag(key);
    const at = this.newRecord(key.length, keyWide, value.length, valueWide);
    const keyStart = (at + HEADER_WORDS) << 2;
    this.writeString(key, keyWide, keyStart);
    this.writeString(value, valueWide, keyStart + (key.length << keyWide));
    this.insert(slot, hash, at, this.arenaOf(at).words[at + ID]!);
    return true;
  }

  /** set() for an entry given as ASCII bytes: the fast path stores a PUT without making strings. Returns true when the key is new. */
  setAscii(entry: AsciiEntry): boolean {
    const { keySrc, keyStart, keyEnd, valueSrc, valueStart, valueEnd } = entry;
    const hash = hashBytes(keySrc, keyStart, keyEnd);
    const slot = this.probeBytes(keySrc, keyStart, keyEnd, hash);
    const found = this.entryAt(slot);
    const valueLength = valueEnd - valueStart;
    if (found !== 0) {
      this.forget(this.arenaOf(found - 1).words[found - 1 + ID]!);
      const at = this.prepareValue(slot, valueLength, 0); // may move records (a sweep step) or grow the arena: find its arena after
      copyBytes(valueSrc, valueStart, valueEnd, this.arenaOf(at >>> 2).bytes, at);
      if (this.growing) this.growthStep(0); // after the write, as in set()
      return false;
    }
    const keyLength = keyEnd - keyStart;
    const at = this.newRecord(keyLength, 0, valueLength, 0);
    const arena = this.arenaOf(at);
    const start = (at + HEADER_WORDS) << 2;
    copyBytes(keySrc, keyStart, keyEnd, arena.bytes, start);
    copyBytes(valueSrc, valueStart, valueEnd, arena.bytes, start + keyLength);
    this.insert(slot, hash, at, arena.words[at + ID]!);
    return true;
  }

  /** Removes key. Returns true when it was present. */
  delete(key: string): boolean {
    const slot = this.probe(key, hashString(key));
    const entry = this.entryAt(slot);
    if (entry === 0) return false;
    const at = entry - 1;
    const id = this.arenaOf(at).words[at + ID]!;
    this.forget(id);
    this.garbageWords += this.recordWords(at);
    this.setOffset(id, -2 - this.freeHead);
    this.freeHead = id;
    this.count--;
    this.removeSlot(slot);
    this.rehashStep();
    this.sweepIfWasteful();
    this.arenaStep(SWEEP_WORDS);
    return true;
  }

  /**
   * Live iteration. Changes between steps are allowed: an entry present for
   * the whole iteration is visited exactly once, with a value it had meanwhile;
   * entries added or removed meanwhile may or may not be visited.
   */
  *entries(): Generator<[string, string], undefined, undefined> {
    for (let id = 0; id < this.idLimit; id++) {
      const at = this.offsetOf(id);
      if (at >= 0) yield [this.keyAt(at), this.valueAt(at)];
    }
    return undefined;
  }

  /** Live iteration over the keys, with the same guarantee as entries(). */
  *keys(): Generator<string, undefined, undefined> {
    for (let id = 0; id < this.idLimit; id++) {
      const at = this.offsetOf(id);
      if (at >= 0) yield this.keyAt(at);
    }
    return undefined;
  }

  [Symbol.iterator](): Generator<[string, string], undefined, undefined> {
    return this.entries();
  }

  /** Keys that start with prefix, in no particular order; only matching keys are decoded. */
  keysWithPrefix(prefix: string): string[] {
    const out: string[] = [];
    for (let id = 0; id < this.idLimit; id++) {
      const at = this.offsetOf(id);
      if (at >= 0 && this.keyStartsWith(at, prefix)) out.push(this.keyAt(at));
    }
    return out;
  }

  /** Bytes held by the typed arrays (arena, index, ids, cache ids), the old arena or index too while growing (STATS). */
  get allocatedBytes(): number {
    const old = this.oldArena === this.arena ? 0 : this.oldArena.words.byteLength;
    const oldIndex = this.oldIndex?.byteLength ?? 0;
    return this.arena.words.byteLength + old + this.index.byteLength + oldIndex + this.idPages.length * ID_PAGE_SIZE * 4 + this.recentIds.byteLength;
  }

  // ---- index ----

  /*
   * Slots: a slot of the current index is its number (>= 0); a slot of the
   * old index during a rehash is ~number (< 0). A probe looks in the
   * current index, then in the old one's slots not yet moved; for an absent
   * key it returns the current index's empty slot where the key would go.
   */

  /** The slot holding key, or the empty slot where it would be inserted. */
  private probe(key: string, hash: number): number {
    const index = this.index;
    const mask = this.mask;
    let slot = hash & mask;
    for (;;) {
      const entry = index[slot << 1]!;
      if (entry === 0) return this.oldIndex === null ? slot : this.probeOld(key, hash, slot);
      if (index[(slot << 1) + 1] === hash && this.keyEquals(entry - 1, key)) return slot;
      slot = (slot + 1) & mask;
    }
  }

  /** probe() for the key whose code units are src[start, end). */
  private probeBytes(src: Uint8Array, start: number, end: number, hash: number): number {
    const index = this.index;
    const mask = this.mask;
    let slot = hash & mask;
    for (;;) {
      const entry = index[slot << 1]!;
      if (entry === 0) return this.oldIndex === null ? slot : this.probeOldBytes(src, start, end, hash, slot);
      if (index[(slot << 1) + 1] === hash && this.keyEqualsBytes(entry - 1, src, start, end)) return slot;
      slot = (slot + 1) & mask;
    }
  }

  /** The old index's slot (as ~slot) holding key among those not yet moved, else emptySlot. */
  private probeOld(key: string, hash: number, emptySlot: number): number {
    const old = this.oldIndex!;
    const mask = this.oldMask;
    for (let slot = hash & mask; old[slot << 1] !== 0; slot = (slot + 1) & mask) {
      if (old[(slot << 1) + 1] === hash && !this.isRehashed(slot) && this.keyEquals(old[slot << 1]! - 1, key)) return ~slot;
    }
    return emptySlot;
  }

  private probeOldBytes(src: Uint8Array, start: number, end: number, hash: number, emptySlot: number): number {
    const old = this.oldIndex!;
    const mask = this.oldMask;
    for (let slot = hash & mask; old[slot << 1] !== 0; slot = (slot + 1) & mask) {
      if (old[(slot << 1) + 1] === hash && !this.isRehashed(slot) && this.keyEqualsBytes(old[slot << 1]! - 1, src, start, end)) {
        return ~slot;
      }
    }
    return emptySlot;
  }

  /** Whether the old index's slot has been moved already (its contents are stale). */
  private isRehashed(oldSlot: number): boolean {
    return ((oldSlot - this.rehashStart) & this.oldMask) < this.rehashDone;
  }

  /** The entry (record word + 1) in slot, 0 for none. */
  private entryAt(slot: number): number {
    return slot >= 0 ? this.index[slot << 1]! : this.oldIndex![~slot << 1]!;
  }

  private setEntryAt(slot: number, entry: number): void {
    if (slot >= 0) this.index[slot << 1] = entry;
    else this.oldIndex![~slot << 1] = entry;
  }

  /** Puts a new entry's record into the empty slot found by a probe, growing the index when it gets full. */
  private insert(slot: number, hash: number, at: number, id: number): void {
    // A sweep step in newRecord may have moved records: that rewrites slots' words but moves no slot.
    this.index[slot << 1] = at + 1;
    this.index[(slot << 1) + 1] = hash;
    this.setOffset(id, at);
    this.count++;
    this.rehashStep();
    if (this.count > (this.mask + 1) * MAX_LOAD) this.growIndex();
  }

  private removeSlot(slot: number): void {
    if (slot >= 0) removeFrom(this.index, this.mask, slot);
    // In the old index the shifted entries never reach the moved slots: they start after an empty slot (see growIndex).
    else removeFrom(this.oldIndex!, this.oldMask, ~slot);
  }

  /**
   * Starts a rehash into an index with twice the slots: new entries go
   * there, and each new or deleted entry moves a few of the old index's
   * (rehashStep; from their stored hashes, no key is read) until none are
   * left, so that no change pays for the whole index, as Redis rehashes.
   * The move starts at an empty slot, so that no run of entries not yet
   * moved begins among moved ones (a probe stops at the first empty slot).
   * A rehash still running is finished first (rare: the new index fills to
   * the load limit only after as many new entries as it had old slots / 2).
   */
  private growIndex(): void {
    this.finishRehash();
    const old = this.index;
    let start = 0;
    while (old[start << 1] !== 0) start++; // the load limit leaves empty slots
    this.oldIndex = old;
    this.oldMask = this.mask;
    this.rehashStart = start;
    this.rehashDone = 0;
    this.index = new Int32Array(old.length * 2);
    this.mask = old.length - 1;
    this.growing = true;
  }

  /** Moves the next rehashSlots slots of the old index to the current one; drops the old index after its last. */
  private rehashStep(budget = this.rehashSlots): void {
    const old = this.oldIndex;
    if (old === null) return;
    const slots = this.oldMask + 1;
    const index = this.index;
    const mask = this.mask;
    const end = Math.min(slots, this.rehashDone + budget);
    for (let done = this.rehashDone; done < end; done++) {
      const from = (this.rehashStart + done) & this.oldMask;
      const entry = old[from << 1]!;
      if (entry === 0) continue;
      const hash = old[(from << 1) + 1]!;
      let slot = hash & mask;
      while (index[slot << 1] !== 0) slot = (slot + 1) & mask;
      index[slot << 1] = entry;
      index[(slot << 1) + 1] = hash;
    }
    this.rehashDone = end;
    if (end === slots) {
      this.oldIndex = null;
      this.growing = this.copiedTo !== NOT_MIGRATING;
    }
  }

  private finishRehash(): void {
    if (this.oldIndex !== null) this.rehashStep(this.oldMask + 1);
  }

  // ---- ids and recent values ----

  /**
   * An id for a new entry. Its offset reads NOT_PLACED until insert(), so
   * that anything walking ids meanwhile skips it (a fresh id's offset 0 would
   * read as a live record at word 0: a whole-arena compaction once copied that
   * record twice and overflowed).
   */
  private takeId(): number {
    let id: number;
    if (this.freeHead !== FREE_END) {
      id = this.freeHead;
      this.freeHead = -2 - this.offsetOf(id);
    } else {
      if (this.idLimit === this.idPages.length * ID_PAGE_SIZE) this.idPages.push(new Int32Array(ID_PAGE_SIZE));
      id = this.idLimit++;
    }
    this.setOffset(id, NOT_PLACED);
    return id;
  }

  private offsetOf(id: number): number {
    return this.idPages[id >>> ID_PAGE_SHIFT]![id & ID_PAGE_MASK]!;
  }

  private setOffset(id: number, at: number): void {
    this.idPages[id >>> ID_PAGE_SHIFT]![id & ID_PAGE_MASK] = at;
  }

  private remember(id: number, value: string): void {
    const slot = id & (RECENT_SLOTS - 1);
    this.recentIds[slot] = id + 1;
    this.recent[slot] = value;
  }

  private forget(id: number): void {
    const slot = id & (RECENT_SLOTS - 1);
    if (this.recentIds[slot] !== id + 1) return;
    this.recentIds[slot] = 0;
    this.recent[slot] = undefined;
  }

  // ---- records ----

  private keyEquals(at: number, key: string): boolean {
    const arena = this.arenaOf(at);
    const words = arena.words;
    const head = words[at + KEY_HEAD]!;
    const length = key.length;
    if (head >>> 1 !== length) return false;
    if ((head & 1) === 0) {
      // Four code units per word; `all` catches a unit above 255, which a narrow key cannot hold.
      let w = at + HEADER_WORDS;
      let i = 0;
      let all = 0;
      for (; i + 3 < length; i += 4, w++) {
        const a = key.charCodeAt(i);
        const b = key.charCodeAt(i + 1);
        const c = key.charCodeAt(i + 2);
        const d = key.charCodeAt(i + 3);
        all |= a | b | c | d;
        if (words[w] !== (a | (b << 8) | (c << 16) | (d << 24))) return false;
      }
      const bytes = arena.bytes;
      for (let p = w << 2; i < length; i++, p++) {
        const c = key.charCodeAt(i);
        all |= c;
        if (bytes[p] !== c) return false;
      }
      return all <= 0xff;
    }
    return wideEquals(arena.bytes, (at + HEADER_WORDS) << 2, key, length);
  }

  /** Whether the key of record at is the string whose code units are src[start, end). */
  private keyEqualsBytes(at: number, src: Uint8Array, start: number, end: number): boolean {
    const arena = this.arenaOf(at);
    const head = arena.words[at + KEY_HEAD]!;
    // A wide key holds a code unit above 255: never equal to one made of bytes.
    if (head !== (end - start) << 1) return false;
    const bytes = arena.bytes;
    for (let i = start, p = (at + HEADER_WORDS) << 2; i < end; i++, p++) if (bytes[p] !== src[i]) return false;
    return true;
  }

  private keyStartsWith(at: number, prefix: string): boolean {
    const arena = this.arenaOf(at);
    const head = arena.words[at + KEY_HEAD]!;
    const length = prefix.length;
    if (head >>> 1 < length) return false;
    const start = (at + HEADER_WORDS) << 2;
    const bytes = arena.bytes;
    if ((head & 1) !== 0) return wideEquals(bytes, start, prefix, length);
    return textEqualsBytes(prefix, bytes, start);
  }

  private keyAt(at: number): string {
    const arena = this.arenaOf(at);
    const head = arena.words[at + KEY_HEAD]!;
    const start = (at + HEADER_WORDS) << 2;
    const end = start + ((head >>> 1) << (head & 1));
    return (head & 1) === 0 ? arena.text.latin1Slice(start, end) : arena.text.ucs2Slice(start, end);
  }

  private valueAt(at: number): string {
    const arena = this.arenaOf(at);
    const keyHead = arena.words[at + KEY_HEAD]!;
    const head = arena.words[at + VALUE_HEAD]!;
    const start = ((at + HEADER_WORDS) << 2) + ((keyHead >>> 1) << (keyHead & 1));
    const end = start + ((head >>> 1) << (head & 1));
    return (head & 1) === 0 ? arena.text.latin1Slice(start, end) : arena.text.ucs2Slice(start, end);
  }

  private recordWords(at: number): number {
    const words = this.arenaOf(at).words;
    const keyHead = words[at + KEY_HEAD]!;
    return HEADER_WORDS + wordsFor(((keyHead >>> 1) << (keyHead & 1)) + words[at + VALUE_CAPACITY]!);
  }

  /**
   * Readies the record in slot for a new value of `length` code units: in
   * place when it fits, else in a new record (the old one becomes garbage).
   * Sets the value's header; returns the byte offset where its bytes go.
   */
  private prepareValue(slot: number, length: number, wide: number): number {
    const valueBytes = length << wide;
    let at = this.entryAt(slot) - 1;
    let arena = this.arenaOf(at);
    const keyHead = arena.words[at + KEY_HEAD]!;
    const keyBytes = (keyHead >>> 1) << (keyHead & 1);
    if (valueBytes > arena.words[at + VALUE_CAPACITY]!) {
      const size = HEADER_WORDS + wordsFor(keyBytes + valueBytes);
      const fresh = this.reserve(size);
      // reserve's step may have moved the record (a sweep) or copied it to a new arena (a migration)
      at = this.entryAt(slot) - 1;
      const from = this.arenaOf(at);
      const id = from.words[at + ID]!;
      const keyStart = (at + HEADER_WORDS) << 2;
      arena = this.arena; // where fresh records go
      copyBytes(from.bytes, keyStart, keyStart + keyBytes, arena.bytes, (fresh + HEADER_WORDS) << 2);
      this.garbageWords += this.recordWords(at);
      this.writeHeader(fresh, id, keyHead, keyBytes, size);
      this.setEntryAt(slot, fresh + 1);
      this.setOffset(id, fresh);
      at = fresh;
      this.sweepIfWasteful();
    }
    arena.words[at + VALUE_HEAD] = (length << 1) | wide;
    return ((at + HEADER_WORDS) << 2) + keyBytes;
  }

  /**
   * Reserves a record for a new entry, takes its id and writes its header;
   * the caller writes the key and value bytes. May run a sweep step (moving
   * records); adds nothing to the index. Throws, having changed nothing, when
   * the record would pass the limit.
   */
  private newRecord(keyLength: number, keyWide: number, valueLength: number, valueWide: number): number {
    const keyBytes = keyLength << keyWide;
    const size = HEADER_WORDS + wordsFor(keyBytes + (valueLength << valueWide));
    const at = this.reserve(size);
    // The id after the reservation: a sweep step run by it never meets an id without its record.
    const id = this.takeId();
    this.writeHeader(at, id, (keyLength << 1) | keyWide, keyBytes, size);
    this.arena.words[at + VALUE_HEAD] = (valueLength << 1) | valueWide;
    return at;
  }

  /** Writes the header words but the value's of a record just reserved (so in the current arena). */
  private writeHeader(at: number, id: number, keyHead: number, keyBytes: number, size: number): void {
    const words = this.arena.words;
    words[at + KEY_HEAD] = keyHead;
    // The padding up to the next word is capacity the value may grow into.
    words[at + VALUE_CAPACITY] = ((size - HEADER_WORDS) << 2) - keyBytes;
    words[at + ID] = id;
  }

  private writeString(text: string, wide: number, byteOffset: number): void {
    if (text.length === 0) return;
    const buffer = this.arenaOf(byteOffset >>> 2).text;
    if (wide === 0) buffer.latin1Write(text, byteOffset, text.length);
    else buffer.ucs2Write(text, byteOffset, text.length * 2);
  }

  // ---- arena ----

  /** The arena holding the record that starts at (or includes) word at: see oldArena. */
  private arenaOf(at: number): Arena {
    return at < this.copiedTo || at >= this.migrateEnd ? this.arena : this.oldArena;
  }

  /**
   * Room for a record of size words at the end of the arena; returns its
   * word (always in the current arena). Runs this change's share of a
   * running sweep or migration first, which may move records: callers
   * re-read a record's word from the index after it. (A resizable
   * ArrayBuffer would grow in place, but typed arrays over one made this
   * map's JIT code 1.5-2× slower in this Bun; reserving the whole 2 GiB up
   * front made JavaScriptCore count all of it as heap.)
   */
  private reserve(size: number): number {
    this.arenaStep(size);
    let needed = this.usedWords + size;
    if (needed > this.capWords) {
      // Garbage fills the arena up to its cap: pack all of it now (O(arena), a pause, but only here).
      this.sweepAll();
      needed = this.usedWords + size;
      if (needed > this.capWords) throw new RangeError(`CompactMap: full (${this.capWords * 4} bytes of records)`);
    }
    if (needed > this.arena.words.length) this.grow(needed);
    const at = this.usedWords;
    this.usedWords = needed;
    return at;
  }

  /** This change's share of the arena's upkeep, given the words it appends: a migration step while one runs, else a sweep step. */
  private arenaStep(appended: number): void {
    if (this.copiedTo !== NOT_MIGRATING) this.migrateStep(this.migrateWords + 2 * appended);
    else this.sweepStep(SWEEP_WORDS + 2 * appended);
  }

  /**
   * Starts a migration into an arena twice as large (at least `needed`
   * words): records appended from now on go there, and each change copies a
   * few of the old ones (migrateStep) until none are left. A sweep pauses
   * meanwhile. A migration still running is finished first (rare: each
   * change copies twice what it appends, so one ends before its arena fills).
   */
  private grow(needed: number): void {
    this.finishMigration();
    const words = new Int32Array(Math.min(Math.max(this.arena.words.length * 2, needed), this.capWords));
    this.oldArena = this.arena;
    this.arena = arenaOver(words);
    this.copiedTo = 0;
    this.migrateEnd = this.usedWords;
    this.growing = true;
    if (this.migrateEnd === 0) this.endMigration();
  }

  /**
   * Copies whole records, at least `budget` words of them, from the old
   * arena to the same words of the new one, from copiedTo on; a paused
   * sweep's free gap holds none and is skipped. Ends the migration at
   * migrateEnd, where the records appended since begin.
   */
  private migrateStep(budget: number): void {
    const end = this.migrateEnd;
    let from = this.copiedTo;
    let at = from;
    while (at < end && budget > 0) {
      if (at === this.sweepTo && this.sweepFrom > at) {
        this.copyFromOld(from, at);
        at = from = this.sweepFrom;
        continue;
      }
      const size = this.recordWords(at);
      at += size;
      budget -= size;
    }
    this.copyFromOld(from, at);
    this.copiedTo = at;
    if (at >= end) this.endMigration();
  }

  private copyFromOld(from: number, to: number): void {
    if (to > from) this.arena.words.set(this.oldArena.words.subarray(from, to), from);
  }

  private finishMigration(): void {
    if (this.copiedTo !== NOT_MIGRATING) this.migrateStep(Number.MAX_SAFE_INTEGER);
  }

  private endMigration(): void {
    this.oldArena = this.arena;
    this.copiedTo = NOT_MIGRATING;
    this.migrateEnd = 0;
    this.growing = this.oldIndex !== null;
  }

  /**
   * A step of a running migration and rehash for a change that neither adds
   * nor deletes a key (an overwrite: shift 0), or for a read (shift
   * READ_STEP_SHIFT, as Redis rehashes a step on lookups): else a store
   * whose keys are only overwritten, or only read, after a growth would
   * hold both arenas and probe both indexes for good.
   */
  private growthStep(shift: number): void {
    if (this.copiedTo !== NOT_MIGRATING) this.migrateStep(this.migrateWords >>> shift);
    if (this.oldIndex !== null) this.rehashStep(Math.max(1, this.rehashSlots >>> shift));
  }

  /** Words of live records: the arena's used words less garbage and a running sweep's free gap. */
  private liveWords(): number {
    return this.usedWords - this.garbageWords - (this.sweepFrom >= 0 ? this.sweepFrom - this.sweepTo : 0);
  }

  /** Runs a sweep (starting one if none runs) to the end of the arena. */
  private sweepAll(): void {
    this.finishMigration();
    // Twice when a sweep was running: garbage made behind it waits for the next one.
    for (let pass = 0; pass < 2 && (this.sweepFrom >= 0 || this.garbageWords > 0); pass++) {
      if (this.sweepFrom < 0) {
        this.sweepFrom = 0;
        this.sweepTo = 0;
      }
      this.sweepStep(Number.MAX_SAFE_INTEGER);
    }
  }

  /** Starts a sweep once garbage outweighs the live records (so its work is paid for by the changes that made the garbage). */
  private sweepIfWasteful(): void {
    if (this.sweepFrom >= 0 || this.usedWords <= MIN_ARENA_WORDS) return;
    if (this.garbageWords <= this.usedWords - this.garbageWords) return;
    this.sweepFrom = 0;
    this.sweepTo = 0;
  }

  /**
   * Packs the arena a little at a time, so that no single change pays for the
   * whole of it: walks the records in arena order from sweepFrom, slides each
   * live one down to sweepTo (pointing its id and index slot at the new
   * place) and skips garbage. Once it reaches the end, the arena ends at
   * sweepTo. Changes between steps are fine: records appended meanwhile are
   * swept too, and a record that turns to garbage behind sweepTo waits for
   * the next sweep.
   */
  private sweepStep(budget: number): void {
    let from = this.sweepFrom;
    if (from < 0) return;
    let to = this.sweepTo;
    const words = this.arena.words; // never during a migration (see arenaStep)
    while (budget > 0 && from < this.usedWords) {
      const size = this.recordWords(from);
      const id = words[from + ID]!;
      if (this.offsetOf(id) === from) {
        if (to !== from) {
          words.copyWithin(to, from, from + size);
          this.setOffset(id, to);
          this.repointSlot(from, to);
        }
        to += size;
      } else {
        this.garbageWords -= size;
      }
      from += size;
      budget -= size;
    }
    this.sweepTo = to;
    if (from < this.usedWords) {
      this.sweepFrom = from;
      return;
    }
    this.sweepFrom = -1;
    this.usedWords = to;
    this.shrinkIfMostlyEmpty();
  }

  /** Points the index slot holding the record at `from` (found by its key's hash) at `to`. */
  private repointSlot(from: number, to: number): void {
    const hash = this.storedKeyHash(to);
    const index = this.index;
    const mask = this.mask;
    for (let slot = hash & mask; index[slot << 1] !== 0; slot = (slot + 1) & mask) {
      if (index[slot << 1] === from + 1) {
        index[slot << 1] = to + 1;
        return;
      }
    }
    const old = this.oldIndex;
    if (old !== null) {
      for (let slot = hash & this.oldMask; old[slot << 1] !== 0; slot = (slot + 1) & this.oldMask) {
        if (old[slot << 1] === from + 1 && !this.isRehashed(slot)) {
          old[slot << 1] = to + 1;
          return;
        }
      }
    }
    throw new Error("CompactMap: a live record is missing from the index");
  }

  /** hashString of the key stored in the record at `at`. */
  private storedKeyHash(at: number): number {
    const arena = this.arenaOf(at);
    const head = arena.words[at + KEY_HEAD]!;
    const length = head >>> 1;
    const bytes = arena.bytes;
    const start = (at + HEADER_WORDS) << 2;
    let h = HASH_SEED ^ length;
    if ((head & 1) === 0) {
      for (let p = start; p < start + length; p++) h = Math.imul(h ^ bytes[p]!, 0x01000193);
    } else {
      for (let p = start; p < start + 2 * length; p += 2) h = Math.imul(h ^ (bytes[p]! | (bytes[p + 1]! << 8)), 0x01000193);
    }
    return finalMix(h);
  }

  /**
   * After a sweep, gives memory back when the arena is mostly empty (many
   * keys deleted): a shrunk buffer keeps its pages, so the records are copied
   * into a smaller one. Records keep their words, so the index is untouched.
   * Only when they fill at most a quarter of the arena and the copy is small
   * (SHRINK_MAX_WORDS): no change may pay for copying a large store.
   */
  private shrinkIfMostlyEmpty(): void {
    const capacity = this.arena.words.length;
    if (capacity <= MIN_ARENA_WORDS * 4 || this.usedWords * 4 > capacity || this.usedWords > SHRINK_MAX_WORDS) return;
    const smaller = new Int32Array(Math.max(MIN_ARENA_WORDS, this.usedWords * 2));
    smaller.set(this.arena.words.subarray(0, this.usedWords));
    this.arena = this.oldArena = arenaOver(smaller);
  }
}
