/**
 * Memory and speed of the store's data map for a large data set, in-process:
 * the CompactMap the Store now keeps its data in, against the
 * Map<string, string> it replaced (the rest of the Store is the same for both).
 * Each variant runs in its own subprocess so RSS deltas do not mix.
 *
 *   bun run bench/memory.ts [--keys 1000000] [--rounds 3]
 *
 * Per variant: RSS after loading minus RSS before (bytes/key), load time,
 * GET and PUT (overwrite, same length) ns/op in random key order, on keys
 * sliced fresh from a request-like line as the server sees them; a full
 * entries() walk; KEYS without a prefix and with a selective prefix; and,
 * for the Store, starting it from a Map of everything (a reload).
 * Not a test: nothing here asserts a time. Medians over --rounds subprocesses.
 */
import { spawnSync } from "bun";
import { parseArgs } from "node:util";
import { CompactMap } from "../lib/compact-map.ts";
import { parseOption, wholeNumber } from "../lib/option-schemas.ts";
import { Store } from "../lib/store.ts";

const { values: opts } = parseArgs({
  options: {
    keys: { type: "string", default: "1000000" },
    rounds: { type: "string", default: "3" },
    /** Internal: run one measurement of this variant and print JSON. */
    child: { type: "string" },
  },
});
const KEYS = parseOption("keys", opts.keys, wholeNumber(1));
const ROUNDS = parseOption("rounds", opts.rounds, wholeNumber(1));

interface DataMap {
  get(key: string): string | undefined;
  put(key: string, value: string): void;
  entries(): Iterable<[string, string]>;
  keysWithPrefix(prefix: string): string[];
}

function mapVariant(): DataMap {
  const map = new Map<string, string>();
  return {
    get: (key) => map.get(key),
    put: (key, value) => void map.set(key, value),
    entries: () => map.entries(),
    keysWithPrefix(prefix) {
      const out: string[] = [];
      for (const key of map.keys()) if (key.startsWith(prefix)) out.push(key);
      return out;
    },
  };
}

function compactVariant(): DataMap {
  const map = new CompactMap();
  return {
    get: (key) => map.get(key),
    put: (key, value) => void map.set(key, value),
    entries: () => map.entries(),
    keysWithPrefix: (prefix) => map.keysWithPrefix(prefix),
  };
}

const rss = () => process.memoryUsage().rss;
const keyName = (i: number) => `key:${String(i).padStart(8, "0")}`;
/** A fresh 32-character value per key, JSON-encoded as the server stores it. */
const valueFor = (i: number) => JSON.stringify(`v${String(i).padStart(8, "0")}`.padEnd(32, "x"));

function nsPerOp(ops: number, run: () => void): number {
  const start = Bun.nanoseconds();
  run();
  return (Bun.nanoseconds() - start) / ops;
}

function child(variant: string): Record<string, number> {
  Bun.gc(true);
  const before = rss();
  const data = variant === "map" ? mapVariant() : compactVariant();
  const loadStart = performance.now();
  for (let i = 0; i < KEYS; i++) data.put(keyName(i), valueFor(i));
  const loadMs = performance.now() - loadStart;
  Bun.gc(true);
  const bytesPerKey = (rss() - before) / KEYS;

  // Keys sliced out of a longer line, like the parser's: fresh strings with no cached hash.
  // Every key once, in a scattered order, so caches see the whole data set.
  const lines = Array.from({ length: KEYS }, (_, i) => `GET ${keyName((i * 104729) % KEYS)}\n`);
  let found = 0;
  const getNs = nsPerOp(KEYS, () => {
    for (let i = 0; i < KEYS; i++) if (data.get(lines[i]!.slice(4, 16)) !== undefined) found++;
  });
  const newValue = valueFor(7);
  const putNs = nsPerOp(KEYS, () => {
    for (let i = KEYS - 1; i >= 0; i--) data.put(lines[i]!.slice(4, 16), newValue);
  });
  if (found !== KEYS) throw new Error("lookups missed");

  const scanStart = performance.now();
  let bytes = 0;
  for (const [key, value] of data.entries()) bytes += key.length + value.length;
  const entriesMs = performance.now() - scanStart;
  const keysAllStart = performance.now();
  const all = data.keysWithPrefix("").length;
  const keysAllMs = performance.now() - keysAllStart;
  const keysSomeStart = performance.now();
  const some = data.keysWithPrefix("key:0000").length;
  const keysPrefixMs = performance.now() - keysSomeStart;
  if (all !== KEYS || some === 0 || bytes === 0) throw new Error("scan miscounted");

  let reloadMs = 0;
  if (variant === "compact") {
    const map = new Map<string, string>();
    for (const [key, value] of data.entries()) map.set(key, value);
    const reloadStart = performance.now();
    const reloaded = new Store(map, 1);
    reloadMs = performance.now() - reloadStart;
    if (reloaded.size !== KEYS) throw new Error("reload miscounted");
  }
  return { bytesPerKey, loadMs, getNs, putNs, entriesMs, keysAllMs, keysPrefixMs, reloadMs };
}

if (opts.child !== undefined) {
  console.log(JSON.stringify(child(opts.child)));
} else {
  const results: Record<string, Record<string, number>[]> = { map: [], compact: [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const variant of ["map", "compact"]) {
      const run = spawnSync([process.execPath, "run", import.meta.path, "--child", variant, "--keys", String(KEYS)], { stderr: "inherit" });
      if (run.exitCode !== 0) throw new Error(`${variant} run failed`);
      results[variant]!.push(JSON.parse(run.stdout.toString()));
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(`${KEYS} keys, 32-character values, median of ${opts.rounds} runs each`);
  console.log(`| metric | Map<string,string> | CompactMap |`);
  console.log(`|---|---|---|`);
  for (const metric of Object.keys(results.map![0]!)) {
    const cell = (variant: string) => median(results[variant]!.map((r) => r[metric]!)).toFixed(metric.endsWith("Key") ? 0 : 1);
    console.log(`| ${metric} | ${cell("map")} | ${cell("compact")} |`);
  }
}
