/**
 * CompactMap (lib/compact-map.ts) against a JS Map as the model: random
 * operation sequences over keys and values of every shape (ASCII, Latin-1,
 * other BMP, astral, lone surrogates, empty, long), growth, packing (sweeps),
 * iteration while the map changes, and prefix scans.
 */
import { describe, expect, test } from "bun:test";
import { CompactMap, MAX_DATA_BYTES } from "../lib/compact-map.ts";
import { Store } from "../lib/store.ts";
import { seededRandom } from "./helpers.ts";

const PIECES = ["a", "key:", "Z9", "é", "ÿ", "日本", "€", "😀", "\ud800", "\udfff", " ", "\u0000", "\n", '"', "\\", "x".repeat(300)];

/** A string of 0-4 random pieces (so prefixes are shared, lengths vary, and every encoding shows up). */
function randomText(next: () => number, maxPieces = 4): string {
  let text = "";
  const pieces = Math.floor(next() * (maxPieces + 1));
  for (let i = 0; i < pieces; i++) {
    // Long pieces rarely, so most entries stay small and many fit.
    const piece = PIECES[Math.floor(next() * PIECES.length)]!;
    text += piece.length > 1 && piece[0] === "x" && next() < 0.8 ? "x" : piece;
  }
  return text;
}

/** The least bytes the model's entries take as records (header, key and value, padded to a word): liveBytes is never below it. */
function minimalLiveBytes(model: Map<string, string>): number {
  let bytes = 0;
  const width = (text: string) => (/[^\x00-\xff]/.test(text) ? 2 : 1);
  for (const [key, value] of model) bytes += 16 + Math.ceil((key.length * width(key) + value.length * width(value)) / 4) * 4;
  return bytes;
}

function expectSameContents(map: CompactMap, model: Map<string, string>): void {
  expect(map.size).toBe(model.size);
  const seen = new Map<string, string>();
  for (const [key, value] of map.entries()) {
    expect(seen.has(key)).toBe(false);
    seen.set(key, value);
  }
  expect(seen).toEqual(model);
  expect(new Set(map.keys())).toEqual(new Set(model.keys()));
}

/** Tuning that makes arena migrations and index rehashes as slow as they may be, so that they span many changes. */
const SLOW = { migrateWords: 0, rehashSlots: 2 };

describe("CompactMap against a Map", () => {
  test.each([
    ["default steps", {}],
    ["migrations and rehashes spanning many changes", SLOW],
  ])("random set/delete/get/has/size sequences agree with the model (%s)", (_name, tuning) => {
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const next = seededRandom(seed);
      const map = new CompactMap(0, tuning);
      const model = new Map<string, string>();
      // Small key pools force overwrites and deletes of present keys; larger ones force growth.
      const keyPool = Array.from({ length: seed * 150 }, (_, i) => (i % 3 === 0 ? `k${i}` : randomText(next) + i));
      keyPool.push("");
      for (let op = 0; op < 6000; op++) {
        const key = keyPool[Math.floor(next() * keyPool.length)]!;
        const roll = next();
        if (roll < 0.45) {
          const value = next() < 0.05 ? "" : randomText(next, 6);
          expect(map.set(key, value)).toBe(!model.has(key));
          model.set(key, value);
        } else if (roll < 0.7) {
          expect(map.delete(key)).toBe(model.delete(key));
        } else if (roll < 0.9) {
          expect(map.get(key)).toBe(model.get(key));
        } else {
          expect(map.has(key)).toBe(model.has(key));
        }
        expect(map.size).toBe(model.size);
        if (op % 1000 === 999) expectSameContents(map, model);
      }
      for (const key of keyPool) expect(map.get(key)).toBe(model.get(key));
      expectSameContents(map, model);
    }
  });

  test("every kind of string round-trips as key and as value, and stays distinct", () => {
    const strings = ["", "a", "A", "é", "\u00ff", "\u0100", "日本語", "😀", "a😀b", "\ud800", "\udc00", "x\ud800", "\ud800x", "\u0000", "\u0000\u0000", "€uro", "x".repeat(5000), "é".repeat(1000), "😀".repeat(700)];
    const map = new CompactMap();
    strings.forEach((s, i) => map.set(s, strings[(i + 1) % strings.length]!));
    strings.forEach((s, i) => expect(map.get(s)).toBe(strings[(i + 1) % strings.length]));
    expect(map.size).toBe(strings.length);
    // Same code units in a different width must not match: "é" (0xE9) vs "\u00e9\u0000"-like neighbours.
    expect(map.get("\u00e9\u0000")).toBeUndefined();
    expect(map.get("\u0100".slice(0, 0))).toBe(map.get(""));
  });

  test("a narrow stored key never equals a key with a unit above 255 whose low bytes match", () => {
    const map = new CompactMap();
    map.set("abcd", "narrow");
    // 0x161 = 'a' + 0x100: the low byte matches "a" but the key is different.
    expect(map.get("\u0161bcd")).toBeUndefined();
    expect(map.get("abc\u0164")).toBeUndefined();
    map.set("\u0161bcd", "wide");
    expect(map.get("abcd")).toBe("narrow");
    expect(map.get("\u0161bcd")).toBe("wide");
  });

  test("values change in place, grow, shrink and switch width", () => {
    const map = new CompactMap();
    map.set("k", "short");
    map.set("other", "o");
    const values = ["", "abc", "a much longer value than before".repeat(3), "x", "日本", "😀".repeat(50), "back to ascii", "\u00ff".repeat(40), ""];
    for (const value of values) {
      map.set("k", value);
      expect(map.get("k")).toBe(value);
      expect(map.get("other")).toBe("o");
    }
    expect(map.size).toBe(2);
  });

  test("a value read (and so cached) is never answered stale: after set, after setAscii, after delete, after its id is reused", () => {
    const map = new CompactMap();
    map.set("a", "1");
    expect(map.get("a")).toBe("1");
    map.set("a", "2");
    expect(map.get("a")).toBe("2");
    expect(map.get("a")).toBe("2");
    const line = new TextEncoder().encode("a 5"); // the fast path's PUT: key and value as bytes of a request line
    map.setAscii({ keySrc: line, keyStart: 0, keyEnd: 1, valueSrc: line, valueStart: 2, valueEnd: 3 });
    expect(map.get("a")).toBe("5");
    map.delete("a");
    expect(map.get("a")).toBeUndefined();
    map.set("b", "3"); // takes the id "a" had
    expect(map.get("b")).toBe("3");
    expect(map.get("a")).toBeUndefined();
    // Many entries share cache slots: reading them all in turn must still answer each one's own value.
    for (let i = 0; i < 40000; i++) map.set(`k${i}`, `v${i}`);
    for (let round = 0; round < 2; round++) for (let i = 0; i < 40000; i += 7) expect(map.get(`k${i}`)).toBe(`v${i}`);
  });

  test("values longer than the recent-values cache limit are read back from the arena", () => {
    const map = new CompactMap();
    const long = "v".repeat(10000);
    map.set("k", long);
    expect(map.get("k")).toBe(long);
    map.set("k", "short");
    expect(map.get("k")).toBe("short");
    map.set("k", long + "!");
    expect(map.get("k")).toBe(long + "!");
  });

  test("growth to many entries and deletion of most of them (index growth, a sweep, memory given back)", () => {
    const map = new CompactMap();
    const n = 50000;
    for (let i = 0; i < n; i++) map.set(`key:${i}`, `value:${i}`);
    expect(map.size).toBe(n);
    const peak = map.allocatedBytes;
    const model = new Map(Array.from({ length: n }, (_, i) => [`key:${i}`, `value:${i}`] as const));
    for (let i = 0; i < n; i++) {
      if (i % 10 === 0) continue;
      expect(map.delete(`key:${i}`)).toBe(true);
      model.delete(`key:${i}`);
      // Records made to size and never rewritten: live bytes are exact, also while a sweep runs.
      if (i % 997 === 0) expect(map.liveBytes).toBe(minimalLiveBytes(model));
    }
    expect(map.size).toBe(n / 10);
    for (let i = 0; i < n; i++) expect(map.get(`key:${i}`)).toBe(i % 10 === 0 ? `value:${i}` : undefined);
    expect(map.allocatedBytes).toBeLessThan(peak);
    for (let i = 0; i < n; i += 10) map.delete(`key:${i}`);
    expect(map.size).toBe(0);
    expect([...map.entries()]).toEqual([]);
    // Freed ids and space are reused.
    for (let i = 0; i < 100; i++) map.set(`again:${i}`, "x");
    expect(map.size).toBe(100);
    expect(map.get("again:99")).toBe("x");
  });

  test("values that keep outgrowing their records leave garbage that sweeps reclaim", () => {
    const map = new CompactMap();
    for (let i = 0; i < 1000; i++) map.set(`k${i}`, "");
    for (let round = 1; round <= 40; round++) {
      for (let i = 0; i < 1000; i++) map.set(`k${i}`, "y".repeat(round * 4));
    }
    for (let i = 0; i < 1000; i++) expect(map.get(`k${i}`)).toBe("y".repeat(160));
    // Live data is about 1000 × (16 + 4 + 160) bytes; without sweeps the garbage would be ~20× that.
    expect(map.allocatedBytes).toBeLessThan(1_500_000);
  });

  test("a new key reserved while garbage fills the arena, with a large record at word 0, leaves every entry readable and walkable (a whole-arena compaction once copied that record twice)", () => {
    const map = new CompactMap();
    const model = new Map<string, string>();
    const set = (key: string, value: string) => {
      map.set(key, value);
      model.set(key, value);
    };
    set("a", "x".repeat(3000)); // the record at word 0
    for (let i = 0; i < 362; i++) set("c", "y".repeat(40 + 4 * i)); // garbage outweighs the live records
    set("fresh", "z"); // a new id, reserved while the arena is full of garbage
    expectSameContents(map, model);
    expect(map.keysWithPrefix("fr")).toEqual(["fresh"]);
  });
});

describe("CompactMap's byte API (the fast path) against a Map", () => {
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  /** An AsciiEntry over one buffer with some bytes before, between and after, as a request line gives. */
  function asciiEntry(key: string, value: string) {
    const line = encoder.encode(`PUT ${key} ${value}\r\n`);
    const keyStart = 4;
    const valueStart = keyStart + key.length + 1;
    return { keySrc: line, keyStart, keyEnd: keyStart + key.length, valueSrc: line, valueStart, valueEnd: valueStart + value.length };
  }

  /** The fast path's read: find by bytes, then copy the value out, or null when it is not all ASCII. */
  function readAscii(map: CompactMap, key: string): string | null | undefined {
    const src = encoder.encode(`GET ${key}\r\n`);
    const entry = map.findAscii(src, 4, 4 + key.length);
    if (entry < 0) return undefined;
    const dest = new Uint8Array(3 + map.valueByteLength(entry));
    const end = map.copyAsciiValue(entry, dest, 3);
    return end < 0 ? null : decoder.decode(dest.subarray(3, end));
  }

  // SLOW: a grown arena's records move over only as fast as changes append (twice that), and a grown
  // index takes 2 old slots per new or deleted entry, so migrations and rehashes span many changes and
  // meet reads, deletes, moves, sweeps started or paused, and further growth.
  test.each([
    ["default steps", {}],
    ["migrations and rehashes spanning many changes", SLOW],
  ])("set, setAscii, delete and the byte reads, mixed, with values that grow, shrink and move, agree with the model through sweeps, growth, migrations, rehashes and shrinking (%s)", (_name, tuning) => {
    let changesWhileMigrating = 0;
    let changesWhileRehashing = 0;
    for (const seed of [11, 12, 13, 14]) {
      const next = seededRandom(seed);
      const map = new CompactMap(0, tuning);
      const model = new Map<string, string>();
      // ASCII keys take either write path; the others only set(), as in the server.
      const asciiKeys = Array.from({ length: 40 + seed * 60 }, (_, i) => `k:${i}`);
      const otherKeys = Array.from({ length: 30 }, (_, i) => `é${i}` + randomText(next));
      const asciiValue = () => "v".repeat(next() < 0.02 ? 2000 + Math.floor(next() * 3000) : Math.floor(next() * 120));
      let phaseDeletes = 0.2;
      for (let op = 0; op < 20000; op++) {
        // Alternate phases of mostly deletes and mostly writes, so garbage outweighs live data
        // (a sweep starts), the arena empties out (it shrinks) and fills again (it grows).
        if (op % 2500 === 0) phaseDeletes = phaseDeletes === 0.2 ? 0.75 : 0.2;
        const roll = next();
        const useAscii = next() < 0.85;
        const key = useAscii ? asciiKeys[Math.floor(next() * asciiKeys.length)]! : otherKeys[Math.floor(next() * otherKeys.length)]!;
        if (roll < phaseDeletes) {
          expect(map.delete(key)).toBe(model.delete(key));
        } else if (roll < 0.85) {
          if (useAscii && next() < 0.6) {
            const value = asciiValue();
            expect(map.setAscii(asciiEntry(key, value))).toBe(!model.has(key));
            model.set(key, value);
          } else {
            const value = next() < 0.3 ? randomText(next, 6) : asciiValue();
            expect(map.set(key, value)).toBe(!model.has(key));
            model.set(key, value);
          }
        } else if (useAscii) {
          const expected = model.get(key);
          const read = readAscii(map, key);
          if (expected === undefined) expect(read).toBeUndefined();
          else if (/^[\x00-\x7f]*$/.test(expected)) expect(read).toBe(expected);
          else expect(read).toBeNull();
        } else {
          expect(map.get(key)).toBe(model.get(key));
        }
        if (map.migrating && roll < 0.85) changesWhileMigrating++;
        if (map.rehashing && roll < 0.85) changesWhileRehashing++;
        if (op % 997 === 0 || ((map.migrating || map.rehashing) && op % 89 === 0)) {
          expectSameContents(map, model);
          expect(map.keysWithPrefix("k:1").sort()).toEqual([...model.keys()].filter((k) => k.startsWith("k:1")).sort());
          expect(map.liveBytes).toBeGreaterThanOrEqual(minimalLiveBytes(model)); // also in the middle of a sweep
        }
      }
      expectSameContents(map, model);
      for (const key of [...model.keys()]) map.delete(key);
      expect(map.liveBytes).toBe(0);
    }
    if (tuning === SLOW) {
      expect(changesWhileMigrating).toBeGreaterThan(1000);
      expect(changesWhileRehashing).toBeGreaterThan(1000);
    }
  });
});

describe("CompactMap's limit on bytes of live records", () => {
  const record = CompactMap.recordWordsAtMost(8, 40);

  test("hasRoomFor counts live records only: deleting makes room at once, a change that adds nothing always fits, set() itself is not limited (a loader may pass the limit)", () => {
    const map = new CompactMap();
    map.limitBytes = 16384;
    const model = new Map<string, string>();
    let n = 0;
    for (; map.hasRoomFor(record); n++) {
      const key = `k${String(n).padStart(7, "0")}`;
      map.set(key, "v".repeat(40));
      model.set(key, "v".repeat(40));
    }
    expect(n).toBeGreaterThan(100);
    expect(map.liveBytes).toBeLessThanOrEqual(16384);
    expect(map.liveBytes).toBeGreaterThanOrEqual(minimalLiveBytes(model));
    // Past the limit a loader can still set; hasRoomFor then refuses all but changes that add nothing.
    map.set("loaded", "x".repeat(4000));
    model.set("loaded", "x".repeat(4000));
    expect(map.liveBytes).toBeGreaterThan(16384);
    expect(map.hasRoomFor(1)).toBe(false);
    expect(map.hasRoomFor(0)).toBe(true);
    // Deleting makes room at once: the space left behind is garbage, which the limit does not count.
    map.delete("loaded");
    model.delete("loaded");
    const before = map.liveBytes;
    map.delete("k0000000");
    model.delete("k0000000");
    expect(map.liveBytes).toBeLessThan(before);
    expect(map.hasRoomFor(record)).toBe(true);
    expectSameContents(map, model);
    for (const key of [...model.keys()]) map.delete(key);
    expect(map.liveBytes).toBe(0);
  });

  test("at the arena's cap (lowered here from 2 GiB), writes are refused until deleting frees 1/64 of it, then one whole sweep makes room; nothing approved ever throws", () => {
    const capBytes = 65536; // a whole sweep is worth it from 1 KiB of garbage
    const map = new CompactMap(0, { capBytes });
    const model = new Map<string, string>();
    const put = (key: string, value: string): boolean => {
      if (!map.hasRoomFor(CompactMap.recordWordsAtMost(key.length, value.length))) return false;
      map.set(key, value);
      model.set(key, value);
      return true;
    };
    let n = 0;
    while (put(`k${String(n).padStart(5, "0")}`, "v".repeat(40))) n++;
    expect(map.liveBytes).toBeLessThanOrEqual(capBytes);
    // Churn at the cap: a DEL leaves too little garbage for a whole sweep, so the PUT after it is refused.
    map.delete("k00000");
    model.delete("k00000");
    expect(put("k00000", "w".repeat(40))).toBe(false);
    // Enough deleted: the next new record packs the arena once, and writes go on.
    for (let i = 1; i <= 20; i++) {
      map.delete(`k${String(i).padStart(5, "0")}`);
      model.delete(`k${String(i).padStart(5, "0")}`);
    }
    for (let i = 0; i <= 20; i++) expect(put(`k${String(i).padStart(5, "0")}`, "w".repeat(40))).toBe(true);
    expectSameContents(map, model);

    // Random churn at the cap, as the executor drives it (hasRoomFor first): never a throw, always the model.
    const next = seededRandom(5);
    for (let op = 0; op < 20000; op++) {
      const key = `k${String(Math.floor(next() * (n + 50))).padStart(5, "0")}`;
      if (next() < 0.45) {
        map.delete(key);
        model.delete(key);
      } else {
        put(key, (next() < 0.2 ? "\u20ac" : "x").repeat(Math.floor(next() * 120)));
      }
      if (op % 1000 === 0) expectSameContents(map, model);
    }
    expectSameContents(map, model);
  });

  test("the limit is at most MAX_DATA_BYTES (2 GiB), so every byte offset stays an int32", () => {
    const map = new CompactMap();
    map.limitBytes = 2 ** 40;
    expect(map.limitBytes).toBeLessThanOrEqual(MAX_DATA_BYTES);
    expect(MAX_DATA_BYTES).toBe(2 ** 31);
    expect(map.hasRoomFor(MAX_DATA_BYTES / 4)).toBe(false);
  });
});

describe("CompactMap arena growth", () => {
  test("a grown arena is filled a little at each change (a migration over many changes), never in one copy", () => {
    const map = new CompactMap();
    const model = new Map<string, string>();
    let longestMigration = 0;
    let migrationChanges = 0;
    for (let i = 0; i < 60000; i++) {
      const key = `key:${i}`;
      const value = "v".repeat(32);
      map.set(key, value);
      model.set(key, value);
      migrationChanges = map.migrating ? migrationChanges + 1 : 0;
      longestMigration = Math.max(longestMigration, migrationChanges);
    }
    // The arena last grew from 2 to 4 MiB: 2 MiB of records moved over in steps of about 16 KiB.
    expect(longestMigration).toBeGreaterThan(50);
    expectSameContents(map, model);
  });
});

describe("CompactMap growth and reads", () => {
  test("reads alone carry a migration and a rehash to their end (a store read but seldom written after a growth)", () => {
    const map = new CompactMap(0, { migrateWords: 64, rehashSlots: 16 });
    let i = 0;
    while (!(map.migrating && map.rehashing)) map.set(`k${i++}`, "v".repeat(40));
    let reads = 0;
    while (map.migrating || map.rehashing) {
      expect(map.get(`k${reads % i}`)).toBe("v".repeat(40));
      if (++reads > 1_000_000) throw new Error("reads did not end the growth");
    }
    expect(reads).toBeGreaterThan(10);
    for (let k = 0; k < i; k++) expect(map.has(`k${k}`)).toBe(true);
  });

  test("overwrites of existing keys alone carry a migration and a rehash to their end (a store whose keys are only updated)", () => {
    for (const setter of ["set", "setAscii"] as const) {
      const map = new CompactMap(0, { migrateWords: 64, rehashSlots: 16 });
      let i = 0;
      while (!(map.migrating && map.rehashing)) map.set(`k${i++}`, "v".repeat(40));
      let overwrites = 0;
      while (map.migrating || map.rehashing) {
        const key = `k${overwrites % i}`;
        const value = String(overwrites % 10).repeat(40); // the same length: in place, nothing appended
        if (setter === "set") map.set(key, value);
        else {
          const line = new TextEncoder().encode(`${key} ${value}`);
          map.setAscii({ keySrc: line, keyStart: 0, keyEnd: key.length, valueSrc: line, valueStart: key.length + 1, valueEnd: line.length });
        }
        if (++overwrites > 1_000_000) throw new Error(`${setter}: overwrites did not end the growth`);
      }
      for (let k = 0; k < i; k++) expect(map.get(`k${k}`)!.length).toBe(40);
    }
  });

  test("advanceGrowth alone (no change, no read) ends a migration or a rehash, and the old arena's and index's bytes are let go", () => {
    const map = new CompactMap(0, { migrateWords: 64, rehashSlots: 16 });
    let i = 0;
    while (i < 2000 || !map.growthRunning) map.set(`k${i++}`, "v".repeat(40));
    const whileGrowing = map.allocatedBytes;
    let steps = 0;
    while (map.advanceGrowth()) if (++steps > 1_000_000) throw new Error("advanceGrowth did not end the growth");
    expect(steps).toBeGreaterThan(10);
    expect(map.growthRunning as boolean).toBe(false);
    expect(map.advanceGrowth()).toBe(false);
    expect(map.allocatedBytes).toBeLessThan(whileGrowing);
    for (let k = 0; k < i; k++) expect(map.get(`k${k}`)).toBe("v".repeat(40));
  });

  test("Store.growInBackground: a budget of 0 ms stops after a step, a long one ends the growth, and with none running it does nothing", () => {
    const store = new Store(new CompactMap(0, { migrateWords: 64, rehashSlots: 16 }));
    let i = 0;
    while (i < 2000 || !store.growing) store.put(`k${i++}`, JSON.stringify("v".repeat(40)));
    store.growInBackground(0);
    expect(store.growing).toBe(true);
    store.growInBackground(60_000);
    expect(store.growing as boolean).toBe(false);
    store.growInBackground(60_000);
    expect(store.size).toBe(i);
    for (let k = 0; k < i; k++) expect(store.get(`k${k}`)).toBe(JSON.stringify("v".repeat(40)));
  });

  test("a Store adopting a map mid-growth finishes it (start-up: the loader's map is settled before serving)", () => {
    const map = new CompactMap(0, { migrateWords: 0, rehashSlots: 2 });
    let i = 0;
    while (!(map.migrating && map.rehashing)) map.set(`k${i++}`, "1");
    const growth = () => ({ migrating: map.migrating, rehashing: map.rehashing });
    const store = new Store(map, 7);
    expect(growth()).toEqual({ migrating: false, rehashing: false });
    expect(store.size).toBe(i);
    expect(store.get(`k${i - 1}`)).toBe("1");
  });
});

describe("CompactMap index growth", () => {
  test("small indexes rehashed two slots per change, with deletes and rewrites meanwhile (runs that wrap around the end), agree with the model after every change", () => {
    let changesWhileRehashing = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const next = seededRandom(seed);
      const map = new CompactMap(0, SLOW);
      const model = new Map<string, string>();
      const keys = Array.from({ length: 12 + (seed % 60) }, (_, i) => `k${i}`);
      for (let op = 0; op < 300; op++) {
        const key = keys[Math.floor(next() * keys.length)]!;
        if (next() < 0.35) expect(map.delete(key)).toBe(model.delete(key));
        else {
          const value = "v".repeat(Math.floor(next() * 40));
          expect(map.set(key, value)).toBe(!model.has(key));
          model.set(key, value);
        }
        if (map.rehashing) changesWhileRehashing++;
        for (const k of keys) expect(map.get(k)).toBe(model.get(k));
      }
      expectSameContents(map, model);
    }
    // (The reads after each change move the rehash along too, a slot each.)
    expect(changesWhileRehashing).toBeGreaterThan(300);
  });
});

describe("CompactMap iteration while the map changes", () => {
  test.each([
    ["default steps", {}],
    ["migrations and rehashes spanning many changes", SLOW],
  ])("an entry present throughout is visited exactly once, with a value it had meanwhile (%s)", (_name, tuning) => {
    let stepsWhileMigrating = 0;
    for (const seed of [11, 12, 13]) {
      const next = seededRandom(seed);
      const map = new CompactMap(0, tuning);
      const stable = Array.from({ length: 2000 }, (_, i) => `stable:${i}`);
      const valuesHad = new Map<string, Set<string>>();
      for (const key of stable) {
        map.set(key, "v0");
        valuesHad.set(key, new Set(["v0"]));
      }
      for (let i = 0; i < 2000; i++) map.set(`churn:${i}`, "c");
      const visits = new Map<string, number>();
      let step = 0;
      for (const [key, value] of map.entries()) {
        visits.set(key, (visits.get(key) ?? 0) + 1);
        if (key.startsWith("stable:")) expect(valuesHad.get(key)!.has(value)).toBe(true);
        step++;
        if (map.migrating) stepsWhileMigrating++;
        // Between steps: update stable values (in place and relocating), delete and add churn keys.
        for (let j = 0; j < 5; j++) {
          const key2 = stable[Math.floor(next() * stable.length)]!;
          const value2 = `v${step}`.padEnd(Math.floor(next() * 60), "+");
          map.set(key2, value2);
          valuesHad.get(key2)!.add(value2);
          const churn = `churn:${Math.floor(next() * 6000)}`;
          if (next() < 0.5) map.delete(churn);
          else map.set(churn, "c".repeat(Math.floor(next() * 100)));
        }
      }
      for (const key of stable) expect(visits.get(key)).toBe(1);
      // A churn key deleted and added again may be seen twice, as with a Map; nothing unknown appears.
      for (const key of visits.keys()) expect(/^(stable|churn):\d+$/.test(key)).toBe(true);
    }
    if (tuning === SLOW) expect(stepsWhileMigrating).toBeGreaterThan(100);
  });

  test("keys() tolerates deletion of the key just visited and of keys not yet visited", () => {
    const map = new CompactMap();
    for (let i = 0; i < 1000; i++) map.set(`k${i}`, "v");
    const seen: string[] = [];
    for (const key of map.keys()) {
      seen.push(key);
      map.delete(key);
      map.delete(`k${999 - Number(key.slice(1))}`);
    }
    expect(map.size).toBe(0);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen.length).toBe(500);
  });
});

describe("CompactMap.keysWithPrefix", () => {
  test("matches String.startsWith for every stored key, including non-ASCII prefixes", () => {
    const next = seededRandom(99);
    const map = new CompactMap();
    const model = new Map<string, string>();
    for (let i = 0; i < 3000; i++) {
      const key = randomText(next, 3) + (i % 7 === 0 ? "" : String(i));
      map.set(key, "v");
      model.set(key, "v");
    }
    const prefixes = ["", "a", "key:", "é", "日", "日本", "😀", "\ud83d", "\ud800", "aa", "x", "zzz-none", "a".repeat(50)];
    for (const prefix of prefixes) {
      const expected = [...model.keys()].filter((k) => k.startsWith(prefix)).sort();
      expect(map.keysWithPrefix(prefix).sort()).toEqual(expected);
    }
  });
});

describe("Store over CompactMap", () => {
  test("starts from a Map or from any iterable of pairs, with the given seq", () => {
    const initial = new Map([["a", '"1"'], ["b", "[2]"], ["日本", '"3"']]);
    const fromMap = new Store(initial, 7);
    expect(fromMap.seq).toBe(7);
    expect(fromMap.size).toBe(3);
    expect(fromMap.get("日本")).toBe('"3"');
    const fromPairs = new Store([["x", "1"], ["y", "2"]] as const, 2);
    expect(new Map(fromPairs.entries())).toEqual(new Map([["x", "1"], ["y", "2"]]));
    expect(fromPairs.keysWithPrefix("").sort()).toEqual(["x", "y"]);
  });

  test("a snapshot-style walk of entries() across commits sees every untouched key once", () => {
    const store = new Store(new Map(Array.from({ length: 3000 }, (_, i) => [`key:${i}`, `"${i}"`] as const)), 0);
    const iterator = store.entries();
    const seen = new Map<string, string>();
    let step = 0;
    for (let next = iterator.next(); !next.done; next = iterator.next()) {
      const [key, value] = next.value;
      expect(seen.has(key)).toBe(false);
      seen.set(key, value);
      // Commits between steps, as while a snapshot is written in slices: only keys >= 2000 change.
      const n = 2000 + (step++ % 1000);
      if (step % 3 === 0) store.delete(`key:${n}`);
      else store.apply([[`key:${n}`, `"changed ${step} ${"x".repeat(step % 50)}"`], [`new:${step}`, "1"]]);
    }
    for (let i = 0; i < 2000; i++) expect(seen.get(`key:${i}`)).toBe(`"${i}"`);
    expect(store.seq).toBe(step);
  });

  test("adopts a CompactMap without copying it", () => {
    const data = new CompactMap();
    data.set("k", '"v"');
    const store = new Store(data, 3);
    expect(store.get("k")).toBe('"v"');
    store.put("j", "1");
    expect(data.get("j")).toBe("1");
  });
});

describe("CompactMap size hint", () => {
  test("a map sized for few entries grows past the hint, one sized for many works when nearly empty", () => {
    const small = new CompactMap(10);
    for (let i = 0; i < 5000; i++) small.set(`k${i}`, `v${i}`);
    for (let i = 0; i < 5000; i++) expect(small.get(`k${i}`)).toBe(`v${i}`);
    const large = new CompactMap(100000);
    large.set("only", "one");
    expect([...large.entries()]).toEqual([["only", "one"]]);
    expect(large.get("other")).toBeUndefined();
  });
});
