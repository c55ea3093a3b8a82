/**
 * Operations, seen from outside: STATS groups and counts, the Prometheus
 * scrape on --metrics-port (parsed as the text exposition format), /health,
 * and the logging of refused connections, connection errors and the HTTP
 * guard (once each, with a reason, storms summarised). Real servers on port 0.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startServer, type RunningServer } from "../lib/app.ts";
import type { CommitLog, CommitRecord } from "../lib/commit-log.ts";
import { Executor } from "../lib/execute.ts";
import { Logger } from "../lib/log.ts";
import { healthOf, MetricsServer, renderMetrics } from "../lib/metrics.ts";
import { ServerStats } from "../lib/stats.ts";
import { Store } from "../lib/store.ts";
import { join } from "node:path";
import { closedPort, LineClient, spawnServer, startInProcess, tempDir, testConfig, waitFor } from "./helpers.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

interface Scrape {
  help: Map<string, string>;
  type: Map<string, string>;
  samples: Sample[];
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const SAMPLE_LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/;
const LABEL_PAIR = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/y;

/**
 * Parses the Prometheus text format strictly: every family has `# HELP` and
 * `# TYPE` before its first sample, appears once, and every sample line is
 * `name{labels} value`.
 */
function parseExposition(text: string): Scrape {
  expect(text.endsWith("\n")).toBe(true);
  const help = new Map<string, string>();
  const type = new Map<string, string>();
  const samples: Sample[] = [];
  const finished = new Set<string>();
  let current: string | null = null;
  for (const line of text.slice(0, -1).split("\n")) {
    if (line.startsWith("# HELP ")) {
      const [name, ...rest] = line.slice(7).split(" ");
      expect(name).toMatch(METRIC_NAME);
      expect(help.has(name!)).toBe(false);
      expect(finished.has(name!)).toBe(false);
      if (current !== null) finished.add(current);
      current = name!;
      help.set(name!, rest.join(" "));
      continue;
    }
    if (line.startsWith("# TYPE ")) {
      const [name, kind] = line.slice(7).split(" ");
      expect(name).toBe(current!);
      expect(["counter", "gauge"]).toContain(kind!);
      type.set(name!, kind!);
      continue;
    }
    const match = SAMPLE_LINE.exec(line);
    if (match === null) throw new Error(`not a sample line: ${JSON.stringify(line)}`);
    const [, name, labelText, valueText] = match;
    expect(name).toBe(current!);
    expect(type.has(name!)).toBe(true);
    const labels: Record<string, string> = {};
    if (labelText !== undefined) {
      LABEL_PAIR.lastIndex = 0;
      while (LABEL_PAIR.lastIndex < labelText.length) {
        const pair = LABEL_PAIR.exec(labelText);
        if (pair === null) throw new Error(`bad labels: ${labelText}`);
        labels[pair[1]!] = pair[2]!.replace(/\\(.)/g, (_m, c: string) => (c === "n" ? "\n" : c));
      }
    }
    const value = Number(valueText);
    expect(Number.isNaN(value) && valueText !== "NaN").toBe(false);
    samples.push({ name: name!, labels, value });
  }
  return { help, type, samples };
}

function sample(scrape: Scrape, name: string, labels: Record<string, string> = {}): number | undefined {
  return scrape.samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;
}

async function scrape(port: number): Promise<Scrape> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toStartWith("text/plain; version=0.0.4");
  return parseExposition(await response.text());
}

let server: RunningServer & { logs: string[] };

beforeAll(async () => {
  server = await startInProcess(["--metrics-port", "0"]);
});
afterAll(() => server.shutdown());

/** Drives a known mix of traffic on a fresh server: returns what it did. */
async function traffic(port: number) {
  const a = await LineClient.connect(port);
  const b = await LineClient.connect(port);
  await a.pipeline(["PUT k1 v1", "PUT k2 v2", "GET k1", "GET nope", "BOGUS", "START", "PUT k3 v3", "COMMIT"]);
  await a.pipeline(["START", "PUT k4 v4", "ROLLBACK"]);
  await a.pipeline(["START", "GET k1"]);
  await b.request("PUT k1 changed");
  expect(await a.request("COMMIT")).toMatchObject({ code: "CONFLICT" });
  await a.pipeline(["START", "PUT k5 v5"]); // left open: one transaction open
  return { a, b };
}

describe("STATS", () => {
  test("groups server, clients, memory, persistence, stats, transactions with exact counts", async () => {
    const fresh = await startInProcess(["--max-connections", "3"]);
    const { a, b } = await traffic(fresh.port);
    const c = await LineClient.connect(fresh.port);
    const refused = await LineClient.connect(fresh.port);
    expect(await refused.readReply()).toMatchObject({ code: "BUSY" });
    await refused.closed;
    const stats = (await c.request("STATS")).result as Record<string, any>;

    // The summary fields outside suites read.
    expect(stats).toMatchObject({ keys: 3, connections: 3, commands: 18, uptime: expect.any(Number) });
    expect(stats.server).toEqual({ version: "test", uptime_seconds: stats.uptime, pid: process.pid, bun: Bun.version });
    expect(stats.clients).toEqual({ connected: 3, total: 3, rejected: 1 });
    expect(stats.memory.rss).toBeGreaterThan(stats.memory.heap_used);
    expect(stats.memory.heap_used).toBeGreaterThan(0);
    expect(Number.isInteger(stats.memory.client_buffers) && stats.memory.client_buffers >= 0).toBe(true); // its growth: lifecycle and abuse tests
    expect(stats.persistence).toEqual({ mode: "in-memory" });
    expect(stats.transactions).toEqual({ open: 1, committed: 1, rolled_back: 1, conflicted: 1, aborted: 0, watched_keys: 0, watched_prefixes: 0, read_limit_reached: 0 });
    expect(stats.stats).toMatchObject({
      keys: 3,
      commands: 18,
      ops_per_sec: expect.any(Number),
      commands_by_type: { PUT: 6, GET: 3, INVALID: 1, START: 4, COMMIT: 2, ROLLBACK: 1, STATS: 1 },
      errors_by_code: { NOT_FOUND: 1, UNKNOWN_COMMAND: 1, CONFLICT: 1, BUSY: 1 },
    });
    a.close();
    b.close();
    c.close();
    await fresh.shutdown();
  });

  test("README's STATS example is what a server answers after the same session: the same fields in the same order, the same counts", async () => {
    const readme = await Bun.file(join(import.meta.dir, "..", "README.md")).text();
    const lead = readme.indexOf("`STATS` on the txkv port");
    const open = readme.indexOf("```json\n", lead) + "```json\n".length;
    const example = JSON.parse(readme.slice(open, readme.indexOf("```", open)));
    const fresh = await startInProcess();
    try {
      const c = await LineClient.connect(fresh.port);
      const replies = await c.pipeline(["START", "PUT key1 value1", "PUT key2 value2", "GET key1", "COMMIT", "GET nope", "STATS"]);
      const stats = replies[6]!.result as Record<string, any>;
      /** Field names, nested, in order (the persistence layer's own fields aside: the example elides them). */
      const shape = (value: unknown, path = ""): unknown =>
        value !== null && typeof value === "object" && !Array.isArray(value) && path !== ".persistence"
          ? Object.entries(value).map(([k, v]) => [k, shape(v, `${path}.${k}`)])
          : null;
      expect(shape(stats)).toEqual(shape(example));
      for (const section of ["transactions", "clients"]) expect(stats[section]).toEqual(example[section]);
      expect({ ...stats.stats, ops_per_sec: 0 }).toEqual(example.stats);
      expect(stats.memory.data).toBe(example.memory.data);
      expect(stats.persistence.mode).toBe("in-memory");
      c.close();
    } finally {
      await fresh.shutdown();
    }
  });

  test("ops/s counts from when the server started listening: a burst in the first second shows at the first tick", async () => {
    const fresh = await startInProcess();
    try {
      const c = await LineClient.connect(fresh.port);
      await c.pipeline(Array.from({ length: 500 }, () => "PING"));
      fresh.executor.stats.tick(); // the once-a-second timer's tick, taken here so no second need pass
      const stats = (await c.request("STATS")).result as { stats: { ops_per_sec: number } };
      // 500 PINGs since the start, over one second (or, had the real timer ticked too, over two at most).
      expect(stats.stats.ops_per_sec).toBeGreaterThanOrEqual(250);
      c.close();
    } finally {
      await fresh.shutdown();
    }
  });

  test("ops/s is the command rate over the last seconds' ticks", () => {
    const stats = new ServerStats();
    expect(stats.opsPerSecond()).toBe(0);
    stats.tick();
    for (let i = 0; i < 30; i++) stats.countCommand("GET");
    stats.tick();
    expect(stats.opsPerSecond()).toBe(30);
    for (let i = 0; i < 10; i++) stats.countCommand("PUT");
    stats.tick();
    expect(stats.opsPerSecond()).toBe(20);
    for (let i = 0; i < 6; i++) stats.tick(); // idle seconds push the burst out of the window
    expect(stats.opsPerSecond()).toBe(0);
  });
});

describe("metrics endpoint", () => {
  test("GET /metrics is valid Prometheus text with every txkv_ family and the counts of the traffic", async () => {
    const fresh = await startInProcess(["--metrics-port", "0"]);
    expect(fresh.metricsPort).toBeGreaterThan(0);
    expect(fresh.metricsPort).not.toBe(fresh.port);
    const { a, b } = await traffic(fresh.port);
    const m = await scrape(fresh.metricsPort!);

    for (const name of m.type.keys()) expect(name).toStartWith("txkv_");
    for (const [name, kind] of m.type) if (kind === "counter") expect(name).toEndWith("_total");
    expect(Object.fromEntries(m.type)).toMatchObject({
      txkv_up: "gauge",
      txkv_uptime_seconds: "gauge",
      txkv_connections: "gauge",
      txkv_connections_total: "counter",
      txkv_connections_rejected_total: "counter",
      txkv_commands_total: "counter",
      txkv_errors_total: "counter",
      txkv_transactions_total: "counter",
      txkv_transactions_open: "gauge",
      txkv_transactions_read_limit_reached_total: "counter",
      txkv_keys: "gauge",
      txkv_data_bytes: "gauge",
      txkv_data_limit_bytes: "gauge",
      txkv_data_allocated_bytes: "gauge",
      txkv_data_growing: "gauge",
      txkv_memory_rss_bytes: "gauge",
      txkv_memory_heap_used_bytes: "gauge",
      txkv_persistence_available: "gauge",
      txkv_ops_per_second: "gauge",
    });
    expect(sample(m, "txkv_up")).toBe(1);
    expect(sample(m, "txkv_build_info", { version: "test", bun: Bun.version })).toBe(1);
    expect(sample(m, "txkv_connections")).toBe(2);
    expect(sample(m, "txkv_connections_total")).toBe(2);
    expect(sample(m, "txkv_connections_rejected_total")).toBe(0);
    expect(sample(m, "txkv_commands_total", { command: "PUT" })).toBe(6);
    expect(sample(m, "txkv_commands_total", { command: "GET" })).toBe(3);
    expect(sample(m, "txkv_commands_processed_total")).toBe(17);
    expect(sample(m, "txkv_errors_total", { code: "CONFLICT" })).toBe(1);
    expect(sample(m, "txkv_errors_total", { code: "NOT_FOUND" })).toBe(1);
    expect(sample(m, "txkv_transactions_total", { outcome: "committed" })).toBe(1);
    expect(sample(m, "txkv_transactions_total", { outcome: "rolled_back" })).toBe(1);
    expect(sample(m, "txkv_transactions_total", { outcome: "conflicted" })).toBe(1);
    expect(sample(m, "txkv_transactions_total", { outcome: "aborted" })).toBe(0);
    expect(sample(m, "txkv_transactions_open")).toBe(1);
    expect(sample(m, "txkv_transactions_read_limit_reached_total")).toBe(0);
    expect(sample(m, "txkv_keys")).toBe(3);
    // Three small records (a 16-byte header each, key and value padded to a word), and the default limit.
    expect(sample(m, "txkv_data_bytes")).toBeGreaterThanOrEqual(3 * 20);
    expect(sample(m, "txkv_data_bytes")).toBeLessThan(3 * 200);
    expect(sample(m, "txkv_data_limit_bytes")).toBe(2 ** 31);
    // The smallest arena, index and id page, held whatever the data: more than the records, and nothing growing.
    expect(sample(m, "txkv_data_allocated_bytes")).toBeGreaterThan(sample(m, "txkv_data_bytes")!);
    expect(sample(m, "txkv_data_growing")).toBe(0);
    expect(sample(m, "txkv_memory_rss_bytes")).toBeGreaterThan(sample(m, "txkv_memory_heap_used_bytes")!);
    expect(sample(m, "txkv_persistence_available")).toBe(1);
    expect(sample(m, "txkv_persistence_mode", { mode: "in-memory" })).toBe(1);

    const health = await fetch(`http://127.0.0.1:${fresh.metricsPort}/health`);
    expect(health.status).toBe(200);
    expect(await health.json()).toEqual({ status: "ok" });
    expect((await fetch(`http://127.0.0.1:${fresh.metricsPort}/other`)).status).toBe(404);
    const post = await fetch(`http://127.0.0.1:${fresh.metricsPort}/metrics`, { method: "POST" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
    const head = await fetch(`http://127.0.0.1:${fresh.metricsPort}/metrics`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(head.headers.get("content-type")).toStartWith("text/plain");
    expect(await head.text()).toBe("");
    a.close();
    b.close();
    await fresh.shutdown();
  });

  test("off by default; the endpoint stops with the server", async () => {
    const plain = await startInProcess();
    expect(plain.metricsPort).toBeNull();
    await plain.shutdown();
    const port = server.metricsPort!;
    const other = await startInProcess(["--metrics-port", "0"]);
    const metricsPort = other.metricsPort!;
    expect((await fetch(`http://127.0.0.1:${metricsPort}/health`)).status).toBe(200);
    await other.shutdown();
    await expect(fetch(`http://127.0.0.1:${metricsPort}/health`)).rejects.toThrow();
    expect((await fetch(`http://127.0.0.1:${port}/health`)).status).toBe(200);
  });

  test("a port already in use is a start-up error naming it", async () => {
    const taken = server.metricsPort!;
    const log = new Logger("error", () => {});
    await expect(startServer(testConfig(["--metrics-port", String(taken)]), "test", log)).rejects.toThrow(
      `cannot serve metrics on 127.0.0.1:${taken}: the address is already in use`,
    );
  });

  test("when the metrics port is in use, start-up also closes the protocol listener it had opened: nothing listens on that port afterwards", async () => {
    const taken = server.metricsPort!;
    const port = closedPort();
    const log = new Logger("error", () => {});
    await expect(startServer(testConfig(["--port", String(port), "--metrics-port", String(taken)]), "test", log)).rejects.toThrow(
      `cannot serve metrics on 127.0.0.1:${taken}`,
    );
    const refused = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } }).then(
      (socket) => {
        socket.end();
        return null;
      },
      (err: { code?: string }) => err.code,
    );
    expect(refused).toBe("ECONNREFUSED");
    // And the port is free for another listener.
    Bun.listen({ hostname: "127.0.0.1", port, socket: { data() {} } }).stop(true);
  });

  test("--metrics-port in a subprocess prints `metrics on host:port` and reads TXKV_METRICS_PORT", async () => {
    const proc = await spawnServer(["--in-memory"], { env: { TXKV_METRICS_PORT: "0" } });
    try {
      const match = /metrics on 127\.0\.0\.1:(\d+)/.exec(proc.stdout());
      expect(match).not.toBeNull();
      const m = await scrape(Number(match![1]));
      expect(sample(m, "txkv_up")).toBe(1);
      await waitFor(() => proc.stderr().includes('"msg":"ready to accept connections"'), 5000, "the start-up log line");
      const startLine = proc
        .stderr()
        .split("\n")
        .filter((l) => l.includes('"msg":"ready to accept connections"'))
        .map((l) => JSON.parse(l))[0];
      expect(startLine).toMatchObject({ metrics: `127.0.0.1:${match![1]}` });
    } finally {
      expect(await proc.kill("SIGTERM")).toBe(0);
    }
  });

  test("stdout has the `metrics on host:port` line first, then the `listening on host:port` line, and nothing else", async () => {
    const proc = await spawnServer(["--in-memory", "--metrics-port", "0"]);
    try {
      await waitFor(() => /metrics on [^\n]*\n/.test(proc.stdout()) && /listening on [^\n]*\n/.test(proc.stdout()), 5000, "both stdout lines");
      const lines = proc.stdout().split("\n");
      expect(lines).toHaveLength(3);
      expect(lines[0]).toMatch(/^txkv \S+ metrics on 127\.0\.0\.1:\d+$/);
      expect(lines[1]).toBe(`txkv ${lines[0]!.split(" ")[1]} listening on 127.0.0.1:${proc.port}`);
      expect(lines[2]).toBe("");
    } finally {
      expect(await proc.kill("SIGTERM")).toBe(0);
    }
  });
});

/** A commit log whose disk can be made to fail, with numeric and boolean stats fields. */
class FlakyLog implements CommitLog {
  readonly enabled = true;
  unavailableReason: string | null = null;
  onDurable: ((seq: number) => void) | null = null;
  append(_record: CommitRecord): number {
    return 0;
  }
  appendAsciiPuts(): number {
    return 0;
  }
  async save(): Promise<void> {}
  async close(): Promise<void> {}
  stats(): Record<string, unknown> {
    return {
      mode: "everysec",
      available: this.unavailableReason === null,
      journalBytes: 4096,
      compacting: false,
      dataFile: "/tmp/x.json",
      lastCompaction: { ms: 3 },
    };
  }
}

describe("metrics that read distinct counters", () => {
  test("each gauge and counter reads its own figure (uptime in seconds, rejected connections, rollbacks apart from conflicts, open against total, commit seq, buffered bytes); both endpoints say no-store; POST /health is 405", async () => {
    const fresh = await startInProcess(["--metrics-port", "0", "--max-connections", "2", "--max-request-bytes", "65536", "--shutdown-timeout-ms", "0"]);
    try {
      const a = await LineClient.connect(fresh.port);
      await a.pipeline(["PUT big " + "b".repeat(60_000), "PUT k1 1", "PUT k2 2", "START", "PUT x 1", "ROLLBACK", "START", "ROLLBACK"]);
      const reader = await LineClient.connect(fresh.port);
      const refused = await LineClient.connect(fresh.port); // a third connection: BUSY
      expect(await refused.readReply()).toMatchObject({ code: "BUSY" });
      await refused.closed;
      reader.pauseReading();
      reader.write("GET big\n".repeat(200)); // replies it does not read back up in the server
      await waitFor(() => fresh.server.bufferedBytes() > 256 * 1024, 10000, "replies to back up");
      a.close();
      await waitFor(() => fresh.server.connectionCount === 1, 10000, "the first connection to close");
      const m = await scrape(fresh.metricsPort!);
      expect(sample(m, "txkv_uptime_seconds")).toBeLessThan(60);
      expect(sample(m, "txkv_connections_rejected_total")).toBe(1);
      expect(sample(m, "txkv_transactions_total", { outcome: "rolled_back" })).toBe(2);
      expect(sample(m, "txkv_transactions_total", { outcome: "conflicted" })).toBe(0);
      expect(sample(m, "txkv_connections")).toBe(1);
      expect(sample(m, "txkv_connections_total")).toBe(2); // the refused one is counted apart
      expect(sample(m, "txkv_commit_seq")).toBe(3);
      expect(sample(m, "txkv_client_buffer_bytes")).toBeGreaterThan(256 * 1024);
      for (const path of ["/metrics", "/health"]) {
        expect((await fetch(`http://127.0.0.1:${fresh.metricsPort}${path}`)).headers.get("cache-control")).toBe("no-store");
      }
      const post = await fetch(`http://127.0.0.1:${fresh.metricsPort}/health`, { method: "POST" });
      expect(post.status).toBe(405);
      reader.close();
    } finally {
      await fresh.shutdown();
    }
  }, 20000);
});

describe("health and persistence gauges", () => {
  test("/health is 503 with the reason while persistence fails, 200 again once it resumes, 503 while shutting down", async () => {
    const commitLog = new FlakyLog();
    const executor = new Executor(new Store(), commitLog, new ServerStats(), {
      maxTransactionBytes: 1024,
      password: undefined,
      version: "test",
    });
    const metrics = new MetricsServer(executor, "test");
    const port = metrics.start("127.0.0.1", 0);
    try {
      const url = `http://127.0.0.1:${port}/health`;
      expect((await fetch(url)).status).toBe(200);
      commitLog.unavailableReason = "ENOSPC: no space left on device";
      const failing = await fetch(url);
      expect(failing.status).toBe(503);
      expect(await failing.json()).toEqual({ status: "unavailable", reason: "persistence is failing: ENOSPC: no space left on device" });
      const m = await scrape(port);
      expect(sample(m, "txkv_up")).toBe(0);
      expect(sample(m, "txkv_persistence_available")).toBe(0);
      commitLog.unavailableReason = null;
      expect((await fetch(url)).status).toBe(200);
      metrics.shuttingDown = true;
      const stopping = await fetch(url);
      expect(stopping.status).toBe(503);
      expect(await stopping.json()).toEqual({ status: "unavailable", reason: "shutting down" });
    } finally {
      await metrics.stop();
    }
  });

  test("a durable server's journal fsyncs are the counter txkv_persistence_fsyncs_total, equal to STATS persistence.fsyncs", async () => {
    const dir = tempDir();
    const running = await startInProcess(["--metrics-port", "0", "--data", join(dir.path, "data.json"), "--fsync", "always"]);
    try {
      const c = await LineClient.connect(running.port);
      // One at a time: under --fsync always each acknowledged PUT waited for an fsync of its own.
      for (let i = 0; i < 3; i++) expect((await c.request(`PUT k${i} v`)).status).toBe("Ok");
      const fsyncs = ((await c.request("STATS")).result as { persistence: { fsyncs: number } }).persistence.fsyncs;
      expect(fsyncs).toBeGreaterThanOrEqual(3);
      const m = await scrape(running.metricsPort!);
      expect(m.type.get("txkv_persistence_fsyncs_total")).toBe("counter");
      expect(m.type.has("txkv_persistence_fsyncs")).toBe(false);
      expect(sample(m, "txkv_persistence_fsyncs_total")).toBe(fsyncs);
      expect(m.type.get("txkv_persistence_journal_bytes")).toBe("gauge");
      c.close();
    } finally {
      await running.shutdown();
      dir.cleanup();
    }
  });

  test("numeric and boolean persistence fields become txkv_persistence_<snake_case> gauges, once each", () => {
    const commitLog = new FlakyLog();
    const executor = new Executor(new Store(), commitLog, new ServerStats(), {
      maxTransactionBytes: 1024,
      password: undefined,
      version: "test",
    });
    const m = parseExposition(renderMetrics(executor, healthOf(executor, false), "test"));
    expect(sample(m, "txkv_persistence_journal_bytes")).toBe(4096);
    expect(sample(m, "txkv_persistence_compacting")).toBe(0);
    expect(sample(m, "txkv_persistence_available")).toBe(1);
    expect(sample(m, "txkv_persistence_mode", { mode: "everysec" })).toBe(1);
    expect(m.samples.filter((s) => s.name === "txkv_persistence_available")).toHaveLength(1);
    expect(m.samples.some((s) => s.name.includes("data_file") || s.name.includes("last_compaction"))).toBe(false);
  });

  test("txkv_data_growing is 1 while the store moves into a grown arena or index, and 0 again once the move is done", () => {
    const store = new Store();
    const executor = new Executor(store, new FlakyLog(), new ServerStats(), { maxTransactionBytes: 1024, password: undefined, version: "v" });
    const growingSample = () => sample(parseExposition(renderMetrics(executor, healthOf(executor, false), "v")), "txkv_data_growing");
    expect(growingSample()).toBe(0);
    let puts = 0;
    while (!store.growing && puts < 100_000) store.put(`grow:${puts++}`, JSON.stringify("v".repeat(200)));
    expect(store.growing).toBe(true); // some put started a growth
    expect(growingSample()).toBe(1);
    while (store.growing) store.growInBackground(1000);
    expect(growingSample()).toBe(0);
  });

  test("label values are escaped", () => {
    const stats = new ServerStats();
    stats.countCommand('we"ird\\na\nme');
    const executor = new Executor(new Store(), new FlakyLog(), stats, { maxTransactionBytes: 1024, password: undefined, version: "v" });
    const m = parseExposition(renderMetrics(executor, healthOf(executor, false), "v"));
    expect(sample(m, "txkv_commands_total", { command: 'we"ird\\na\nme' })).toBe(1);
  });
});

describe("operational log events", () => {
  async function loggedServer(args: string[]) {
    const lines: string[] = [];
    const log = new Logger("info", (line) => lines.push(line), { windowMs: 60_000, burst: 2 });
    const running = await startServer(testConfig(args), "test", log);
    const entries = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    return { running, log, entries };
  }

  test("refused connections: logged with a reason, a storm is summarised in one line", async () => {
    const { running, log, entries } = await loggedServer(["--max-connections", "1"]);
    const holder = await LineClient.connect(running.port);
    expect(await holder.request("PING")).toMatchObject({ result: "PONG" });
    for (let i = 0; i < 6; i++) {
      const refused = await LineClient.connect(running.port);
      expect(await refused.readReply()).toMatchObject({ code: "BUSY" });
      await refused.closed;
    }
    const refusedLines = entries().filter((e) => e.msg === "connection refused");
    expect(refusedLines).toHaveLength(2);
    expect(refusedLines[0]).toMatchObject({
      level: "warn",
      reason: "too many connections (--max-connections 1)",
      remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/),
    });
    log.flushSuppressed();
    expect(entries().filter((e) => String(e.msg).startsWith("connection refused: "))).toEqual([
      expect.objectContaining({ msg: "connection refused: 4 similar events suppressed", suppressed: 4 }),
    ]);
    holder.close();
    await running.shutdown();
  });

  test("the HTTP guard and a connection reset are logged with a reason", async () => {
    const { running, entries } = await loggedServer([]);
    const http = await LineClient.connect(running.port);
    http.write("POST / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    await http.closed;
    await waitFor(() => entries().some((e) => e.msg === "connection closed by the cross-protocol guard"), 5000, "the guard line");
    expect(entries().find((e) => e.msg === "connection closed by the cross-protocol guard")).toMatchObject({
      level: "warn",
      reason: expect.stringContaining("HTTP"),
    });

    const reset = await Bun.connect({ hostname: "127.0.0.1", port: running.port, socket: { data() {} } });
    await waitFor(() => running.server.connectionCount === 1, 5000, "the connection to open");
    reset.terminate();
    await waitFor(() => entries().some((e) => e.msg === "connection closed by an error"), 5000, "the reset line");
    expect(entries().find((e) => e.msg === "connection closed by an error")).toMatchObject({
      level: "info",
      reason: expect.any(String),
    });
    await running.shutdown();
  });

  test("a client that sends QUIT and closes without reading its replies logs no reset: the server had ended the connection", async () => {
    const { running, entries } = await loggedServer([]);
    for (let i = 0; i < 5; i++) {
      const quits = running.executor.stats.commandsByType.QUIT ?? 0;
      const client = await LineClient.connect(running.port);
      client.pauseReading();
      client.write("PING\nQUIT\n");
      await waitFor(() => (running.executor.stats.commandsByType.QUIT ?? 0) > quits, 5000, "the QUIT to run");
      // Closing with the replies unread makes the client's kernel send a reset.
      client.close();
    }
    await waitFor(() => running.server.connectionCount === 0, 5000, "the connections to close");
    expect(entries().filter((e) => e.msg === "connection closed by an error")).toEqual([]);
    await running.shutdown();
  });
});
