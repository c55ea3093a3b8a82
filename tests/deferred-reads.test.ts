/**
 * DeferredReads on its own: the table the store keeps the fast path's reads
 * in. A model check against a plain list of (reader, key) pairs under random
 * reads, drops, commits (by bytes and by string) and drains, including two
 * keys whose filter hashes collide (found at run time: the hash is seeded),
 * so that only the byte comparison tells them apart. The store's use of it
 * is tested in fast-path.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { hashString } from "../lib/compact-map.ts";
import { DEFERRED_KEY_MAX_BYTES, DEFERRED_READS_MAX, DeferredReads } from "../lib/deferred-reads.ts";
import type { Watcher } from "../lib/store.ts";
import { seededRandom } from "./helpers.ts";

const encoder = new TextEncoder();

/**
 * Two keys of one length whose hashes (the table's filter: the store's key
 * hash, seeded per process) are equal, found by a birthday search (about
 * 80,000 keys for 32 bits).
 */
const COLLIDING = collidingKeys();

function collidingKeys(): readonly [string, string] {
  const seen = new Map<number, string>();
  for (let i = 0; ; i++) {
    const key = `key:${i.toString(36).padStart(6, "0")}`;
    const hash = hashString(key);
    const other = seen.get(hash);
    if (other !== undefined) return [other, key];
    seen.set(hash, key);
  }
}

function reader(): Watcher {
  return { conflicted: false, watchedKeys: [], watchesEverything: false };
}

/** Adds key as DeferredReads.add gets it: bytes inside a larger buffer. */
function addKey(reads: DeferredReads, w: Watcher, key: string): void {
  const bytes = encoder.encode(`GET ${key}\n`);
  reads.add(w, bytes, 4, 4 + key.length);
}

describe("DeferredReads", () => {
  test("two keys whose filter hashes collide are told apart by their bytes, by string and by bytes", () => {
    expect(hashString(COLLIDING[0])).toBe(hashString(COLLIDING[1]));
    for (const byBytes of [false, true]) {
      const reads = new DeferredReads();
      const [a, b] = [reader(), reader()];
      addKey(reads, a, COLLIDING[0]);
      addKey(reads, b, COLLIDING[1]);
      if (byBytes) reads.markReadersOfBytes(encoder.encode(`PUT ${COLLIDING[1]} 1`), 4, 4 + COLLIDING[1].length);
      else reads.markReadersOf(COLLIDING[1]);
      expect({ byBytes, conflicted: [a.conflicted, b.conflicted] }).toEqual({ byBytes, conflicted: [false, true] });
    }
  });

  test("dropping a reader moves the last entry into each hole and keeps the others' keys intact", () => {
    const reads = new DeferredReads();
    const [a, b, c] = [reader(), reader(), reader()];
    addKey(reads, a, "a1");
    addKey(reads, b, "b-long-key-1");
    addKey(reads, a, "a2");
    addKey(reads, c, "c");
    addKey(reads, a, "a3");
    reads.drop(a);
    expect(reads.size).toBe(2);
    const drained: [Watcher, string][] = [];
    reads.drain((w, key) => drained.push([w, key]));
    expect(drained.sort((x, y) => x[1].localeCompare(y[1]))).toEqual([
      [b, "b-long-key-1"],
      [c, "c"],
    ]);
    expect(reads.size).toBe(0);
  });

  test("a model check: random reads, drops, commits and drains mark exactly the readers a plain list would", () => {
    const keys = [...COLLIDING, "a", "b", "key:1", "key:2", "k".repeat(DEFERRED_KEY_MAX_BYTES), ""];
    for (let seed = 1; seed <= 200; seed++) {
      const random = seededRandom(seed);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
      const readers = Array.from({ length: 6 }, reader);
      const reads = new DeferredReads();
      let model: [Watcher, string][] = [];
      for (let step = 0; step < 400; step++) {
        const roll = random();
        if (roll < 0.45) {
          if (reads.isFull) continue;
          const [w, key] = [pick(readers), pick(keys)];
          addKey(reads, w, key);
          model.push([w, key]);
        } else if (roll < 0.65) {
          const w = pick(readers);
          reads.drop(w);
          model = model.filter(([r]) => r !== w);
          w.conflicted = false; // a new transaction on the same connection
        } else if (roll < 0.97) {
          const key = pick(keys);
          const expected = new Set(readers.filter((r) => r.conflicted || model.some(([m, k]) => m === r && k === key)));
          if (random() < 0.5) reads.markReadersOf(key);
          else reads.markReadersOfBytes(encoder.encode(`PUT ${key} 1`), 4, 4 + key.length);
          expect(new Set(readers.filter((r) => r.conflicted))).toEqual(expected);
        } else {
          const drained: [Watcher, string][] = [];
          reads.drain((w, key) => drained.push([w, key]));
          expect(drained.length).toBe(model.length);
          expect(new Set(drained.map(([w, k]) => `${readers.indexOf(w)} ${k}`))).toEqual(
            new Set(model.map(([w, k]) => `${readers.indexOf(w)} ${k}`)),
          );
          model = [];
        }
        expect(reads.size).toBe(model.length);
      }
    }
  });

  test(`the table holds ${DEFERRED_READS_MAX} reads, then says it is full`, () => {
    const reads = new DeferredReads();
    const w = reader();
    for (let i = 0; i < DEFERRED_READS_MAX; i++) {
      expect(reads.isFull).toBe(false);
      addKey(reads, w, `k${i}`);
    }
    expect(reads.isFull).toBe(true);
    reads.markReadersOf(`k${DEFERRED_READS_MAX - 1}`);
    expect(w.conflicted).toBe(true);
  });
});
