/**
 * Persistence benchmark (not a test): `bun run bench/persistence.ts [--keys N] [--seconds S]`.
 *
 * Reports, against real server subprocesses on port 0 with temporary data dirs:
 *  1. write throughput (pipelined PUTs from several connections) with an empty
 *     store vs with N keys loaded, under --fsync everysec and always, automatic
 *     compaction off (target ratio loaded/empty >= 0.9), and the same with
 *     --in-memory for comparison;
 *  2. p50/p99 latency of GETs (one at a time) while a compaction (SAVE) of
 *     N keys runs, next to the same without a compaction (target p99 <= 5 ms);
 *  3. time to reload N keys at start-up (target <= 1.5 s);
 *  4. the worst GET round trip while a SAVE replaces a large snapshot and
 *     journal (N/5 keys of 1,000 bytes, each written twice), under --fsync no
 *     and everysec: the end of a compaction frees hundreds of MB of files.
 * Must not: be run by `bun test` or assert anything; it prints figures.
 */
import type { Socket } from "bun";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { parseOption, positiveNumber, wholeNumber } from "../lib/option-schemas.ts";
import { encodeRecord } from "../lib/persistence/journal-format.ts";
import { snapshotEntry, snapshotHeader, snapshotTrailer } from "../lib/persistence/snapshot-format.ts";
import { spawnServer, type ServerProcess } from "../tests/helpers.ts";
import { flushPending, writeFully } from "./write-fully.ts";

const { values } = parseArgs({
  options: {
    keys: { type: "string", default: "1000000" },
    seconds: { type: "string", default: "3" },
    connections: { type: "string", default: "8" },
    depth: { type: "string", default: "32" },
    parts: { type: "string", default: "1,2,3,4" },
    rounds: { type: "string", default: "3" },
  },
});
const KEYS = parseOption("keys", values.keys, wholeNumber(1));
const SECONDS = parseOption("seconds", values.seconds, positiveNumber());
const CONNECTIONS = parseOption("connections", values.connections, wholeNumber(1));
const DEPTH = parseOption("depth", values.depth, wholeNumber(1));
const PARTS = new Set(values.parts.split(","));
const ROUNDS = parseOption("rounds", values.rounds, wholeNumber(1));

const NO_COMPACTION = String(Number.MAX_SAFE_INTEGER);
const SAVED = `{"status":"Ok","result":"Saved"}`;
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), "txkv-bench-"));
const loadedSnapshot = path.join(workDir, "loaded.json");

/** Writes a snapshot of `count` keys in the server's own format (what a SAVE would leave). */
function writeSnapshotFile(file: string, count: number): number {
  const fd = fs.openSync(file, "w");
  let crc = 0;
  const batch = 10_000;
  for (let start = 0; start < count; start += batch) {
    let chunk = "";
    for (let i = start; i < Math.min(count, start + batch); i++) {
      chunk += snapshotEntry(i === 0, `key:${i}`, JSON.stringify(`value number ${i} with some padding`));
    }
    const bytes = Buffer.from(chunk);
    crc = Bun.hash.crc32(bytes, crc);
    if (start === 0) fs.writeSync(fd, snapshotHeader(count));
    fs.writeSync(fd, bytes);
  }
  if (count === 0) fs.writeSync(fd, snapshotHeader(0));
  fs.writeSync(fd, snapshotTrailer(count, crc, count));
  fs.closeSync(fd);
  return fs.statSync(file).size;
}

/** A journal of `count` single-key PUT records from seq `firstSeq` (as the server writes them). */
function writeJournalFile(file: string, firstSeq: number, count: number): void {
  const fd = fs.openSync(file, "w");
  for (let start = 0; start < count; start += 10_000) {
    let chunk = "";
    for (let i = start; i < Math.min(count, start + 10_000); i++) {
      chunk += encodeRecord({ seq: firstSeq + i, ops: [[`key:${(i * 7919) % KEYS}`, JSON.stringify(`journal value ${i}`)]] });
    }
    fs.writeSync(fd, chunk);
  }
  fs.closeSync(fd);
}

/** A server on a fresh data directory, optionally starting from the N-key snapshot. */
async function serverWith(loaded: boolean, args: string[]): Promise<{ server: ServerProcess; dir: string }> {
  const dir = fs.mkdtempSync(path.join(workDir, "run-"));
  if (loaded) {
    fs.copyFileSync(loadedSnapshot, path.join(dir, "data.json"));
    // Settle the copy on disk first: its writeback would otherwise slow the run's first fsyncs
    // (ext4 commits in order), which measures the copy, not the loaded store.
    const fd = fs.openSync(path.join(dir, "data.json"), "r");
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }
  // --in-memory refuses a --data beside it.
  const dataArgs = args.includes("--in-memory") ? [] : ["--data", path.join(dir, "data.json")];
  const server = await spawnServer([...dataArgs, "--log-level", "info", ...args], {
    timeoutMs: 60_000,
  });
  return { server, dir };
}

async function stop(run: { server: ServerProcess; dir: string }): Promise<void> {
  await run.server.kill("SIGTERM");
  fs.rmSync(run.dir, { recursive: true, force: true });
}

/** Raw pipelined client: keeps `depth` requests in flight, counts reply lines. */
async function pipelinedWriters(port: number, seconds: number): Promise<number> {
  let replies = 0;
  let running = true;
  let counter = 0;
  const sockets: Socket<undefined>[] = [];
  const request = () => `PUT key:${(counter++ * 7919) % KEYS} new value ${counter}\n`;
  for (let c = 0; c < CONNECTIONS; c++) {
    const socket = await Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        drain: flushPending,
        data(s, chunk) {
          let lines = 0;
          for (let i = 0; i < chunk.length; i++) if (chunk[i] === 10) lines++;
          replies += lines;
          if (running && lines > 0) {
            let out = "";
            for (let i = 0; i < lines; i++) out += request();
            writeFully(s, out);
          }
        },
      },
    });
    sockets.push(socket);
  }
  const started = performance.now();
  for (const s of sockets) {
    let out = "";
    for (let i = 0; i < DEPTH; i++) out += request();
    writeFully(s, out);
  }
  await Bun.sleep(seconds * 1000);
  running = false;
  const elapsed = (performance.now() - started) / 1000;
  const rate = replies / elapsed;
  for (const s of sockets) s.end();
  return rate;
}

/** Puts key:0 .. key:count-1 (the snapshot's keys) over one pipelined connection. */
async function prefill(port: number, count: number, value?: string): Promise<void> {
  let replies = 0;
  let sent = 0;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const batch = (s: Socket<undefined>) => {
    let out = "";
    for (let i = 0; i < 1000 && sent < count; i++, sent++) out += `PUT key:${sent} ${value ?? `value number ${sent} with some padding`}\n`;
    if (out) writeFully(s, out);
  };
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      drain: flushPending,
      data(s, chunk) {
        for (let i = 0; i < chunk.length; i++) if (chunk[i] === 10) replies++;
        if (replies === count) done();
        else if (sent - replies < 2000) batch(s);
      },
    },
  });
  batch(socket);
  batch(socket);
  await finished;
  socket.end();
}

/** One GET at a time; returns each round trip in ms until `until` resolves. */
async function getLatencies(port: number, until: Promise<unknown>, keys = KEYS): Promise<number[]> {
  let done = false;
  void until.then(() => (done = true));
  const latencies: number[] = [];
  let resolveReply: (() => void) | null = null;
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      drain: flushPending,
      data() {
        resolveReply?.();
      },
    },
  });
  let i = 0;
  while (!done) {
    const sent = performance.now();
    const reply = new Promise<void>((resolve) => (resolveReply = resolve));
    writeFully(socket, `GET key:${(i++ * 104_729) % keys}\n`);
    await reply;
    latencies.push(performance.now() - sent);
  }
  socket.end();
  return latencies;
}

async function requestOnce(port: number, line: string): Promise<string> {
  let text = "";
  return new Promise((resolve) => {
    void Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        drain: flushPending,
        open(s) {
          writeFully(s, line + "\n");
        },
        data(s, chunk) {
          text += Buffer.from(chunk).toString();
          if (text.includes("\n")) {
            s.end();
            resolve(text.trim());
          }
        },
      },
    });
  });
}

/** User + system CPU time of a process so far (Linux /proc), in seconds. */
function cpuSeconds(pid: number): number {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[sorted.length >> 1] ?? NaN;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN;
}

function latencySummary(latencies: number[]): string {
  const sorted = [...latencies].sort((a, b) => a - b);
  return `p50 ${percentile(sorted, 50).toFixed(2)} ms, p99 ${percentile(sorted, 99).toFixed(2)} ms, max ${sorted.at(-1)?.toFixed(2)} ms (${sorted.length} GETs)`;
}

const loadedMs = (server: ServerProcess) => {
  const match = /"msg":"loaded (\d+) keys in (\d+) ms"/.exec(server.stderr());
  return match ? { keys: Number(match[1]), ms: Number(match[2]) } : null;
};

async function main(): Promise<void> {
  console.log(
    `txkv persistence benchmark: ${KEYS} keys, ${CONNECTIONS} connections x ${DEPTH} pipelined PUTs, ${SECONDS} s per run, ${ROUNDS} rounds`,
  );
  console.log(`machine: ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? "?"}, bun ${Bun.version}`);
  const bytes = writeSnapshotFile(loadedSnapshot, KEYS);
  console.log(`snapshot of ${KEYS} keys: ${(bytes / 1e6).toFixed(1)} MB`);

  if (PARTS.has("1")) console.log("\n1. write throughput, empty store vs loaded store");
  for (const fsync of PARTS.has("1") ? ["everysec", "always"] : []) {
    // Alternate empty/loaded runs and keep the median of each: the machine is shared and noisy.
    const rates: Record<"empty" | "loaded", number[]> = { empty: [], loaded: [] };
    const perCpuSecond: Record<"empty" | "loaded", number[]> = { empty: [], loaded: [] };
    for (let round = 0; round < ROUNDS; round++) {
      for (const kind of ["empty", "loaded"] as const) {
        // No automatic compaction in these runs: they compare the per-write cost (part 2 measures compaction).
        const run = await serverWith(kind === "loaded", ["--fsync", fsync, "--compact-min-bytes", NO_COMPACTION]);
        await pipelinedWriters(run.server.port, 0.5); // warm-up (JIT of client and server)
        const cpuBefore = cpuSeconds(run.server.proc.pid);
        const rate = await pipelinedWriters(run.server.port, SECONDS);
        const cpu = cpuSeconds(run.server.proc.pid) - cpuBefore;
        rates[kind].push(rate);
        perCpuSecond[kind].push((rate * SECONDS) / cpu);
        await stop(run);
      }
    }
    const emptyRate = median(rates.empty);
    const loadedRate = median(rates.loaded);
    const emptyCpu = median(perCpuSecond.empty);
    const loadedCpu = median(perCpuSecond.loaded);
    console.log(
      `   --fsync ${fsync.padEnd(8)} empty ${Math.round(emptyRate)} PUT/s, ${KEYS} keys ${Math.round(loadedRate)} PUT/s, ratio ${(loadedRate / emptyRate).toFixed(2)}` +
        `  (runs: empty ${rates.empty.map(Math.round).join(" ")}; loaded ${rates.loaded.map(Math.round).join(" ")})`,
    );
    console.log(
      `   ${"".padEnd(16)} per server CPU-second: empty ${Math.round(emptyCpu)} PUTs, loaded ${Math.round(loadedCpu)} PUTs, ratio ${(loadedCpu / emptyCpu).toFixed(2)}`,
    );
  }
  if (PARTS.has("1")) {
    // The same with no persistence at all (the 1M keys put over TCP first): what the store alone costs.
    const rates: Record<"empty" | "loaded", number[]> = { empty: [], loaded: [] };
    for (let round = 0; round < ROUNDS; round++) {
      for (const kind of ["empty", "loaded"] as const) {
        const run = await serverWith(false, ["--in-memory"]);
        if (kind === "loaded") await prefill(run.server.port, KEYS);
        await pipelinedWriters(run.server.port, 0.5);
        rates[kind].push(await pipelinedWriters(run.server.port, SECONDS));
        await stop(run);
      }
    }
    const emptyRate = median(rates.empty);
    const loadedRate = median(rates.loaded);
    console.log(
      `   --in-memory      empty ${Math.round(emptyRate)} PUT/s, ${KEYS} keys ${Math.round(loadedRate)} PUT/s, ratio ${(loadedRate / emptyRate).toFixed(2)} (no persistence: the store alone)`,
    );
  }

  const run = await serverWith(true, []);
  if (PARTS.has("2")) {
    console.log(`\n2. GET latency while a compaction of ${KEYS} keys runs`);
    const baseline = await getLatencies(run.server.port, Bun.sleep(1000));
    console.log(`   no compaction:     ${latencySummary(baseline)}`);
    for (let attempt = 1; attempt <= 3; attempt++) {
      const saveStarted = performance.now();
      const save = requestOnce(run.server.port, "SAVE");
      const during = await getLatencies(run.server.port, save);
      const saveMs = performance.now() - saveStarted;
      const written = [...run.server.stderr().matchAll(/"msg":"snapshot written".*?"slices":(\d+),"longestSliceMs":([\d.]+)/g)].at(-1);
      console.log(
        `   during compaction: ${latencySummary(during)}; SAVE took ${Math.round(saveMs)} ms (${await save}), ${written?.[1]} slices, longest ${written?.[2]} ms`,
      );
    }
  }

  await run.server.kill("SIGTERM");
  if (PARTS.has("3")) console.log(`\n3. reload time at start-up`);
  const snapshotSize = fs.statSync(path.join(run.dir, "data.json")).size;
  const reloadMs: number[] = [];
  for (let attempt = 1; attempt <= (PARTS.has("3") ? 5 : 0); attempt++) {
    const spawned = performance.now();
    const server = await spawnServer(["--data", path.join(run.dir, "data.json")], { timeoutMs: 60_000 });
    const toListening = performance.now() - spawned;
    const loaded = loadedMs(server);
    console.log(
      `   run ${attempt}: loaded ${loaded?.keys} keys (${(snapshotSize / 1e6).toFixed(1)} MB) in ${loaded?.ms} ms; process start to listening ${Math.round(toListening)} ms`,
    );
    reloadMs.push(loaded?.ms ?? NaN);
    await server.kill("SIGTERM");
  }
  reloadMs.sort((a, b) => a - b);
  if (PARTS.has("3")) console.log(`   median reload ${reloadMs[2]} ms (min ${reloadMs[0]}, max ${reloadMs[4]})`);
  if (PARTS.has("3")) {
    // Worst case before an automatic compaction: a journal as large as the snapshot after it.
    const dir = fs.mkdtempSync(path.join(workDir, "journal-"));
    fs.copyFileSync(loadedSnapshot, path.join(dir, "data.json"));
    writeJournalFile(path.join(dir, "data.json.journal.1"), KEYS + 1, KEYS);
    const journalSize = fs.statSync(path.join(dir, "data.json.journal.1")).size;
    const server = await spawnServer(["--data", path.join(dir, "data.json")], { timeoutMs: 60_000 });
    const loaded = loadedMs(server);
    console.log(
      `   snapshot + a journal of ${KEYS} records (${(journalSize / 1e6).toFixed(1)} MB): loaded ${loaded?.keys} keys in ${loaded?.ms} ms`,
    );
    await server.kill("SIGTERM");
  }
  if (PARTS.has("4")) await worstGetDuringLargeSave();
  fs.rmSync(workDir, { recursive: true, force: true });
}

/** Part 4: a store of large values, rewritten once so that the journal is as large as the data, then SAVE three times. */
async function worstGetDuringLargeSave(): Promise<void> {
  const keys = Math.max(1, Math.floor(KEYS / 5));
  const value = "v".repeat(1000);
  console.log(`\n4. worst GET while SAVE replaces a snapshot and journal of ${keys} keys x 1,000 bytes`);
  for (const fsync of ["no", "everysec"]) {
    const run = await serverWith(false, ["--fsync", fsync, "--compact-min-bytes", NO_COMPACTION]);
    await prefill(run.server.port, keys, value);
    const worst: string[] = [];
    for (let attempt = 1; attempt <= 3; attempt++) {
      await prefill(run.server.port, keys, value);
      const save = requestOnce(run.server.port, "SAVE");
      const during = await getLatencies(run.server.port, save, keys);
      worst.push(`${Math.max(...during).toFixed(1)} ms (${during.length} GETs, ${(await save).trim() === SAVED ? "saved" : await save})`);
    }
    console.log(`   --fsync ${fsync.padEnd(8)} worst GET per SAVE: ${worst.join("; ")}`);
    await stop(run);
  }
}

await main();
