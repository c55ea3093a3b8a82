/**
 * txkv vs Redis on this machine, with the same load generator and command
 * stream (../shared/tools/kvload), interleaving the two servers in one run.
 * Prints the median ratio txkv/Redis per cell with a confidence interval
 * for it (at least 90 % from 5 rounds on; bench/median-interval.ts) and a
 * verdict per cell (measurably above or below parity, or parity within the
 * machine's noise), the median ratio of the servers' CPU time per operation
 * (steadier than throughput on a busy machine), txkv against the fastest
 * possible Bun server on this framing, where that server itself stands
 * against Redis on the workloads without pipelining (the floor any Bun
 * server pays per request), and bytes per key for 1,000,000 keys.
 *
 *   bun run bench/compare.ts [--secs 1] [--rounds 31] [--pairing in-memory] [--workload PUT] [--skip-floor] [--skip-memory] [--kvload <dir>]
 *
 * Many short rounds rather than a few long ones: the machine's load drifts
 * over seconds, and the two halves of a short round see nearly the same load,
 * so 31 rounds of 1 s give a much tighter interval than 11 of 3 s in the same
 * quarter of an hour (bench/BENCHMARKS.md, "Judging a cell").
 *
 * Needs cargo (to build kvload from --kvload, by default ../shared/tools/kvload
 * beside this repository) and redis-server (apt-get install redis-server).
 * Not a test: nothing here asserts a time. A run that fails or is stopped
 * (SIGINT, SIGTERM) kills the servers and kvload runs it started.
 */
import { spawn, spawnSync, type Subprocess } from "bun";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { errorMessage } from "../lib/errors.ts";
import { parseOption, positiveNumber, wholeNumber } from "../lib/option-schemas.ts";
import { median, medianInterval, type MedianInterval } from "./median-interval.ts";

const ROOT = join(import.meta.dir, "..");
const OUT = join(ROOT, "bench", "out");

const { values: opts } = parseArgs({
  options: {
    secs: { type: "string", default: "1" },
    rounds: { type: "string", default: "31" },
    "skip-memory": { type: "boolean", default: false },
    /** Skip measuring the fixed-reply server against Redis (about 5 minutes at the default rounds). */
    "skip-floor": { type: "boolean", default: false },
    /** Run only the pairings whose name contains this text (e.g. "in-memory"). */
    pairing: { type: "string", default: "" },
    /** Run only the workloads whose name contains this text (e.g. "PUT", "transactions"). */
    workload: { type: "string", default: "" },
    /** Where kvload's source is (its Cargo.toml): the team's copy beside this repository unless told. */
    kvload: { type: "string", default: join(ROOT, "..", "shared", "tools", "kvload") },
  },
});
const KVLOAD_SRC = opts.kvload;
const SECS = parseOption("secs", opts.secs, positiveNumber());
/** Each workload runs this long, unmeasured, against both servers before its rounds. */
const WARMUP_SECS = 1;
const ROUNDS = parseOption("rounds", opts.rounds, wholeNumber(1));

interface Workload {
  name: string;
  args: string[];
}
const WORKLOADS: Workload[] = [
  { name: "mix, no pipelining", args: ["--workload", "mix", "--pipeline", "1"] },
  { name: "mix, pipeline 16", args: ["--workload", "mix", "--pipeline", "16"] },
  { name: "PUT, no pipelining", args: ["--workload", "put", "--pipeline", "1"] },
  { name: "transactions, no pipelining", args: ["--workload", "tx", "--pipeline", "1"] },
];

interface Pairing {
  name: string;
  txkv: string[];
  redis: string[];
}
const PAIRINGS: Pairing[] = [
  { name: "in-memory / no persistence", txkv: ["--in-memory"], redis: ["--save", "", "--appendonly", "no"] },
  { name: "fsync everysec / appendfsync everysec", txkv: ["--fsync", "everysec"], redis: ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"] },
  { name: "fsync always / appendfsync always", txkv: ["--fsync", "always"], redis: ["--save", "", "--appendonly", "yes", "--appendfsync", "always"] },
];

function buildKvload(): string {
  if (!existsSync(join(KVLOAD_SRC, "Cargo.toml"))) {
    throw new Error(`no kvload source at ${KVLOAD_SRC} (no Cargo.toml there): give its directory with --kvload <dir>`);
  }
  if (Bun.which("cargo") === null) throw new Error("cargo is not on PATH: kvload is built with Rust's cargo (https://rustup.rs)");
  const target = join(OUT, "kvload-target");
  const build = spawnSync(["cargo", "build", "--release", "--quiet", "--manifest-path", join(KVLOAD_SRC, "Cargo.toml")], {
    env: { ...process.env, CARGO_TARGET_DIR: target },
    stderr: "inherit",
  });
  if (build.exitCode !== 0) throw new Error("cargo build of kvload failed");
  return join(target, "release", "kvload");
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer().listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

async function waitForLine(proc: Subprocess<"ignore", "pipe", "inherit">, pattern: RegExp): Promise<RegExpExecArray> {
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of proc.stdout) {
    text += decoder.decode(chunk, { stream: true });
    const match = pattern.exec(text);
    if (match) return match;
  }
  throw new Error(`process exited before printing ${pattern}`);
}

interface Server {
  port: number;
  pid: number;
  stop(): Promise<void>;
}

/** Processes started (servers, kvload runs) and not yet ended: killed if the run fails or is interrupted, so none outlives it. */
const running = new Set<Subprocess>();

/** A server whose proc is already in `running` (added at spawn, before waiting for it to listen); stop() ends it with SIGTERM and waits. */
function serverOf(proc: Subprocess, port: number): Server {
  return {
    port,
    pid: proc.pid,
    stop: async () => {
      proc.kill("SIGTERM");
      await proc.exited;
      running.delete(proc);
    },
  };
}

function killAll(): void {
  for (const proc of running) proc.kill("SIGKILL");
  running.clear();
}

async function startTxkv(args: string[], dataDir: string): Promise<Server> {
  // --in-memory refuses a --data beside it.
  const dataArgs = args.includes("--in-memory") ? [] : ["--data", join(dataDir, "data.json")];
  const proc = spawn([process.execPath, "run", join(ROOT, "index.ts"), "--port", "0", ...dataArgs, "--log-level", "warn", ...args], {
    stdout: "pipe",
    stderr: "inherit",
    stdin: "ignore",
  });
  running.add(proc);
  const match = await waitForLine(proc, /listening on [^\s]*:(\d+)/);
  return serverOf(proc, Number(match[1]));
}

async function startRedis(args: string[], dataDir: string): Promise<Server> {
  const port = await freePort();
  const proc = spawn(["redis-server", "--port", String(port), "--bind", "127.0.0.1", "--dir", dataDir, ...args], {
    stdout: "pipe",
    stderr: "inherit",
    stdin: "ignore",
  });
  running.add(proc);
  await waitForLine(proc, /Ready to accept connections/);
  return serverOf(proc, port);
}

async function startFixedReply(): Promise<Server> {
  const proc = spawn([process.execPath, "run", join(ROOT, "bench", "fixed-reply-server.ts"), "0"], { stdout: "pipe", stderr: "inherit" });
  running.add(proc);
  const match = await waitForLine(proc, /listening on [^\s]*:(\d+)/);
  return serverOf(proc, Number(match[1]));
}

/** CPU time (user + system, all threads) a process has used so far, in clock ticks (1/100 s on Linux). */
function cpuTicks(pid: number): number {
  // The fields after the command name (which is in parentheses and may hold spaces): utime and stime are 14th and 15th.
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/**
 * One kvload run against the server: its throughput, and the server's CPU
 * time per operation (µs) during it. Awaited, not spawnSync: a blocked event
 * loop would not run the signal handlers that stop the servers.
 */
async function kvload(
  bin: string,
  proto: "kv" | "resp",
  server: Server,
  args: string[],
  preload: boolean,
  secs = SECS,
): Promise<{ opsPerSec: number; cpuUs: number; clientCpuUs: number }> {
  const ticksBefore = cpuTicks(server.pid);
  const proc = spawn([bin, "--proto", proto, "--port", String(server.port), "--secs", String(secs), "--preload", preload ? "1" : "0", ...args], {
    stdout: "pipe",
    stderr: "pipe",
  });
  running.add(proc);
  const [stdout, stderr, exitCode] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  running.delete(proc);
  const ticks = cpuTicks(server.pid) - ticksBefore;
  if (exitCode !== 0) throw new Error(`kvload failed: ${stderr}`);
  const result = JSON.parse(stdout) as { ops: number; ops_per_s: number; errors: number };
  if (result.errors > 0) throw new Error(`kvload saw ${result.errors} error replies (${proto})`);
  const usage = proc.resourceUsage();
  // kvload's own CPU (µs, user + system): were it dearer against one server's replies, a closed loop on 2 cores would charge that server.
  const clientCpuUs = usage ? Number(usage.cpuTime.total) / result.ops : NaN;
  return { opsPerSec: result.ops_per_s, cpuUs: (ticks * 10_000) / result.ops, clientCpuUs };
}

/** Runs a and b, a first in even rounds and b first in odd ones, so that drift in the machine's load evens out. */
async function alternately<T>(round: number, a: () => Promise<T>, b: () => Promise<T>): Promise<[T, T]> {
  if (round % 2 === 0) {
    const first = await a();
    return [first, await b()];
  }
  const first = await b();
  return [await a(), first];
}

/** "0.94-1.06 (93 %)": an interval and how likely it holds the true median. */
function describeInterval(interval: MedianInterval): string {
  return `${interval.lo.toFixed(2)}-${interval.hi.toFixed(2)} (${Math.round(interval.coverage * 100)} %)`;
}

/** Where a cell stands against parity (1.0), given its median's interval. */
function verdictOf(interval: MedianInterval): string {
  if (interval.lo >= 1) return "above parity";
  if (interval.hi < 1) return "BELOW parity";
  return "parity within noise";
}

const rssBytes = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) * 1024;

async function main() {
  const bin = buildKvload();
  const lines: string[] = [];
  const say = (line: string) => {
    lines.push(line);
    console.log(line);
  };
  say(`# txkv vs Redis — ${new Date().toISOString()}, ${SECS} s per run, ${ROUNDS} rounds, median ratio txkv/Redis (ops/s)`);
  say(`redis: ${spawnSync(["redis-server", "--version"]).stdout.toString().trim()}; bun ${Bun.version}; ${navigator.hardwareConcurrency} cores`);
  say("");
  say(`| pairing | workload | txkv ops/s | Redis ops/s | ratio (median) | interval | ratios per round | server CPU µs/op, txkv / Redis (medians) | kvload CPU µs/op, against txkv / Redis |`);
  say(`|---|---|---|---|---|---|---|---|---|`);
  const verdicts: string[] = [];
  for (const pairing of PAIRINGS.filter((p) => p.name.includes(opts.pairing!))) {
    const dir = mkdtempSync(join(tmpdir(), "txkv-bench-"));
    const txkv = await startTxkv(pairing.txkv, dir);
    const redis = await startRedis(pairing.redis, dir);
    await kvload(bin, "kv", txkv, ["--workload", "get"], true, 0.2);
    await kvload(bin, "resp", redis, ["--workload", "get"], true, 0.2);
    for (const workload of WORKLOADS.filter((w) => w.name.includes(opts.workload!))) {
      const ratios: number[] = [];
      const t: number[] = [];
      const r: number[] = [];
      const cpuRatios: number[] = [];
      const tCpu: number[] = [];
      const rCpu: number[] = [];
      const tClient: number[] = [];
      const rClient: number[] = [];
      // An unmeasured run of this workload first: the JIT compiles its path (about 0.5 µs per request of
      // a compiler thread's CPU during the first seconds), as it would early in a long-running server's life.
      await kvload(bin, "kv", txkv, workload.args, false, WARMUP_SECS);
      await kvload(bin, "resp", redis, workload.args, false, WARMUP_SECS);
      for (let round = 0; round < ROUNDS; round++) {
        const [c, b] = await alternately(
          round,
          () => kvload(bin, "kv", txkv, workload.args, false),
          () => kvload(bin, "resp", redis, workload.args, false),
        );
        t.push(c.opsPerSec);
        r.push(b.opsPerSec);
        ratios.push(c.opsPerSec / b.opsPerSec);
        tCpu.push(c.cpuUs);
        rCpu.push(b.cpuUs);
        cpuRatios.push(c.cpuUs / b.cpuUs);
        tClient.push(c.clientCpuUs);
        rClient.push(b.clientCpuUs);
      }
      const client = `${median(tClient).toFixed(2)} / ${median(rClient).toFixed(2)}`;
      const cpu = `${median(tCpu).toFixed(2)} / ${median(rCpu).toFixed(2)} (ratio ${median(cpuRatios).toFixed(2)})`;
      const interval = medianInterval(ratios);
      say(`| ${pairing.name} | ${workload.name} | ${median(t).toFixed(0)} | ${median(r).toFixed(0)} | **${median(ratios).toFixed(3)}** | ${describeInterval(interval)} | ${ratios.map((x) => x.toFixed(2)).join(", ")} | ${cpu} | ${client} |`);
      verdicts.push(`${verdictOf(interval)}, interval ${describeInterval(interval)}: ${pairing.name}, ${workload.name}`);
    }
    await txkv.stop();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  say("");
  say("Interval: a confidence interval for the median ratio (order statistics, no assumption about the noise).");
  say("A cell is measurably above or below parity only when its whole interval is.");
  for (const verdict of verdicts) say(`- ${verdict}`);

  say("");
  say("## txkv vs the fastest possible Bun server on this framing (GET, pipeline 16)");
  {
    const dir = mkdtempSync(join(tmpdir(), "txkv-bench-"));
    const txkv = await startTxkv(["--in-memory"], dir);
    const fixed = await startFixedReply();
    await kvload(bin, "kv", txkv, ["--workload", "get"], true, 0.2);
    const args = ["--workload", "get", "--pipeline", "16"];
    // As for the cells above: one unmeasured run against each first (the JIT), then rounds that alternate which goes first.
    await kvload(bin, "kv", txkv, args, false, WARMUP_SECS);
    await kvload(bin, "kv", fixed, args, false, WARMUP_SECS);
    const ratios: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const [x, f] = await alternately(
        round,
        () => kvload(bin, "kv", txkv, args, false),
        () => kvload(bin, "kv", fixed, args, false),
      );
      ratios.push(x.opsPerSec / f.opsPerSec);
    }
    const interval = describeInterval(medianInterval(ratios));
    say(`txkv / fixed-reply server: **${median(ratios).toFixed(2)}**, interval ${interval} (rounds: ${ratios.map((x) => x.toFixed(2)).join(", ")})`);
    await txkv.stop();
    await fixed.stop();
    rmSync(dir, { recursive: true, force: true });
  }

  if (!opts["skip-floor"]) await measureFloor(bin, say);

  if (!opts["skip-memory"]) {
    say("");
    say("## Memory: 1,000,000 keys of 32-byte values (RSS after loading minus RSS before)");
    const dir = mkdtempSync(join(tmpdir(), "txkv-bench-"));
    const txkv = await startTxkv(["--in-memory"], dir);
    const redis = await startRedis(["--save", "", "--appendonly", "no"], dir);
    const before = { txkv: rssBytes(txkv.pid), redis: rssBytes(redis.pid) };
    await kvload(bin, "kv", txkv, ["--workload", "get", "--keys", "1000000", "--conns", "1"], true, 0.1);
    await kvload(bin, "resp", redis, ["--workload", "get", "--keys", "1000000", "--conns", "1"], true, 0.1);
    await Bun.sleep(2000); // let the collector settle after the load
    const perKey = { txkv: (rssBytes(txkv.pid) - before.txkv) / 1e6, redis: (rssBytes(redis.pid) - before.redis) / 1e6 };
    say(`txkv ${perKey.txkv.toFixed(0)} bytes/key, Redis ${perKey.redis.toFixed(0)} bytes/key: ratio **${(perKey.txkv / perKey.redis).toFixed(2)}**`);
    await txkv.stop();
    await redis.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  await Bun.write(join(OUT, `compare-${Date.now()}.md`), lines.join("\n") + "\n");
}

/**
 * The fixed-reply server answers each line at once and does nothing else, so
 * no Bun server can be cheaper per request: its ratio to Redis (in memory,
 * the workloads without pipelining, where each request is a read and a
 * send) is the most txkv could reach on this machine, and txkv's ratio to it
 * is what txkv's own work costs. The three servers take turns in each round,
 * in a rotating order.
 */
async function measureFloor(bin: string, say: (line: string) => void): Promise<void> {
  say("");
  say("## Where the floor is: the fixed-reply server against Redis, in memory, without pipelining");
  say("");
  say("| workload | fixed-reply / Redis | interval | txkv / fixed-reply | interval | txkv / Redis |");
  say("|---|---|---|---|---|---|");
  const dir = mkdtempSync(join(tmpdir(), "txkv-bench-"));
  const txkv = await startTxkv(["--in-memory"], dir);
  const redis = await startRedis(["--save", "", "--appendonly", "no"], dir);
  const fixed = await startFixedReply();
  await kvload(bin, "kv", txkv, ["--workload", "get"], true, 0.2);
  await kvload(bin, "resp", redis, ["--workload", "get"], true, 0.2);
  const withoutPipelining = (w: Workload) => w.args[w.args.indexOf("--pipeline") + 1] === "1";
  for (const workload of WORKLOADS.filter((w) => withoutPipelining(w) && w.name.includes(opts.workload!))) {
    const runs = [
      (secs = SECS) => kvload(bin, "kv", fixed, workload.args, false, secs),
      (secs = SECS) => kvload(bin, "kv", txkv, workload.args, false, secs),
      (secs = SECS) => kvload(bin, "resp", redis, workload.args, false, secs),
    ];
    for (const run of runs) await run(WARMUP_SECS); // unmeasured, as for the cells above
    const fixedToRedis: number[] = [];
    const txkvToFixed: number[] = [];
    const txkvToRedis: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const ops = [0, 0, 0];
      for (let k = 0; k < 3; k++) {
        const which = (round + k) % 3;
        ops[which] = (await runs[which]!()).opsPerSec;
      }
      const [f, t, r] = ops as [number, number, number];
      fixedToRedis.push(f / r);
      txkvToFixed.push(t / f);
      txkvToRedis.push(t / r);
    }
    say(
      `| ${workload.name} | **${median(fixedToRedis).toFixed(2)}** | ${describeInterval(medianInterval(fixedToRedis))} | ` +
        `**${median(txkvToFixed).toFixed(2)}** | ${describeInterval(medianInterval(txkvToFixed))} | ${median(txkvToRedis).toFixed(2)} |`,
    );
  }
  await Promise.all([txkv.stop(), redis.stop(), fixed.stop()]);
  rmSync(dir, { recursive: true, force: true });
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    killAll();
    process.exit(signal === "SIGINT" ? 130 : 143);
  });
}
try {
  await main();
} catch (err) {
  process.stderr.write(`bench/compare.ts: ${errorMessage(err)}\n`);
  process.exitCode = 1;
} finally {
  killAll();
}
