/**
 * The longest single change of the store's data map, in-process: how long
 * one PUT or DEL can hold the event loop (and so every client) while the map
 * grows its arena, packs it after values moved or keys were deleted, or
 * doubles its index. Found by a soak audit: 100-500 ms at a million keys
 * when the arena was copied whole inside one change; 2.4 s at 4,000,000
 * keys when growth still copied the arena, the index and the id table in
 * one change (now each moves a little at each change).
 *
 *   bun run bench/store-pauses.ts [--keys 1000000]
 *
 * Phases, on one CompactMap: load N keys of 32 bytes; rewrite every value to
 * 64 bytes (each record moves: garbage, growth, packing); delete 70 % of the
 * keys; load them again. Per phase: changes, the longest one, p99.9, and the
 * total time. Not a test: nothing here asserts a time.
 */
import { parseArgs } from "node:util";
import { CompactMap } from "../lib/compact-map.ts";
import { parseOption, wholeNumber } from "../lib/option-schemas.ts";

const { values } = parseArgs({ options: { keys: { type: "string", default: "1000000" } } });
const KEYS = parseOption("keys", values.keys, wholeNumber(1));

const key = (i: number) => `key:${String(i).padStart(8, "0")}`;

function phase(name: string, count: number, change: (i: number) => void): void {
  const times = new Float64Array(count);
  const started = performance.now();
  for (let i = 0; i < count; i++) {
    const t = performance.now();
    change(i);
    times[i] = performance.now() - t;
  }
  const total = performance.now() - started;
  times.sort();
  const p999 = times[Math.min(count - 1, Math.floor(count * 0.999))]!;
  console.log(
    `${name.padEnd(34)} ${String(count).padStart(8)} changes: longest ${times[count - 1]!.toFixed(2)} ms, p99.9 ${(p999 * 1000).toFixed(1)} µs, total ${Math.round(total)} ms`,
  );
}

const map = new CompactMap();
const v32 = "v".repeat(32);
const v64 = "w".repeat(64);
const deleted = Math.floor(KEYS * 0.7);
console.log(`store pauses: ${KEYS} keys, bun ${Bun.version}`);
phase("load, 32-byte values", KEYS, (i) => map.set(key(i), v32));
phase("rewrite every value to 64 bytes", KEYS, (i) => map.set(key(i), v64));
phase(`delete ${deleted} keys`, deleted, (i) => map.delete(key(i)));
phase("load them again, 64-byte values", deleted, (i) => map.set(key(i), v64));
console.log(`rss ${Math.round(process.memoryUsage().rss / 1048576)} MB, arena and index ${Math.round(map.allocatedBytes / 1048576)} MB`);
