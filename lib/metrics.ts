/**
 * Metrics and health over HTTP (`--metrics-port`).
 *
 * Owns: rendering the executor's counters in the Prometheus text exposition
 * format (version 0.0.4: `# HELP` and `# TYPE` before each family's samples),
 * the health verdict, and the small Bun.serve endpoint that serves
 * `GET /metrics` and `GET /health`. Every scrape reads the live counters;
 * nothing is O(dataset).
 * Must not: touch the TCP protocol port, the store's data or the disk.
 */
import type { Server } from "bun";
import type { Executor } from "./execute.ts";

const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

interface Health {
  readonly ok: boolean;
  /** Why the server is not healthy; null when it is. */
  readonly reason: string | null;
}

/** Healthy = serving (not shutting down) and able to persist writes. */
export function healthOf(executor: Executor, shuttingDown: boolean): Health {
  if (shuttingDown) return { ok: false, reason: "shutting down" };
  const reason = executor.commitLog.unavailableReason;
  return reason === null ? { ok: true, reason: null } : { ok: false, reason: `persistence is failing: ${reason}` };
}

type Labels = Record<string, string>;

/** Builds the exposition text one metric family at a time. */
class Exposition {
  private text = "";
  private readonly names = new Set<string>();

  has(name: string): boolean {
    return this.names.has(name);
  }

  family(name: string, type: "counter" | "gauge", help: string, samples: ReadonlyArray<readonly [Labels, number]>): void {
    this.names.add(name);
    this.text += `# HELP ${name} ${escapeHelp(help)}\n# TYPE ${name} ${type}\n`;
    for (const [labels, value] of samples) this.text += `${name}${formatLabels(labels)} ${formatValue(value)}\n`;
  }

  single(name: string, type: "counter" | "gauge", help: string, value: number): void {
    this.family(name, type, help, [[{}, value]]);
  }

  toString(): string {
    return this.text;
  }
}

/** The whole scrape: every txkv_… family. */
export function renderMetrics(executor: Executor, health: Health, version: string): string {
  const s = executor.stats;
  const memory = process.memoryUsage();
  const out = new Exposition();
  out.single("txkv_up", "gauge", "1 when serving and able to persist (GET /health answers 200), else 0", health.ok ? 1 : 0);
  out.family("txkv_build_info", "gauge", "txkv and Bun versions, as labels; always 1", [[{ version, bun: Bun.version }, 1]]);
  out.single("txkv_uptime_seconds", "gauge", "seconds since the server started", (Date.now() - s.startedAt) / 1000);
  out.single("txkv_connections", "gauge", "client connections open now", s.connectionsCurrent);
  out.single("txkv_connections_total", "counter", "client connections accepted since start", s.connectionsTotal);
  out.single("txkv_connections_rejected_total", "counter", "connections refused with BUSY (over --max-connections)", s.connectionsRejected);
  out.single("txkv_commands_processed_total", "counter", "requests executed, of every command", s.commands);
  out.family("txkv_commands_total", "counter", "requests executed, by command (INVALID: rejected before execution)", countSamples("command", s.commandsByType));
  out.family("txkv_errors_total", "counter", "Error replies sent, by code", countSamples("code", s.errorsByCode));
  out.single("txkv_ops_per_second", "gauge", "requests per second over the last few seconds", s.opsPerSecond());
  out.family("txkv_transactions_total", "counter", "transactions ended, by outcome", [
    [{ outcome: "committed" }, s.txCommitted],
    [{ outcome: "rolled_back" }, s.txRolledBack],
    [{ outcome: "conflicted" }, s.txConflicted],
    [{ outcome: "aborted" }, s.txAborted],
  ]);
  out.single("txkv_transactions_open", "gauge", "transactions open now", s.txOpen);
  out.single("txkv_transactions_read_limit_reached_total", "counter", "transactions that read more than --max-transaction-reads keys and prefixes (and from then on watched the whole store)", executor.store.watchedEverythingTotal);
  out.single("txkv_keys", "gauge", "keys in the store", executor.store.size);
  out.single("txkv_commit_seq", "gauge", "sequence number of the last commit", executor.store.seq);
  out.single("txkv_memory_rss_bytes", "gauge", "resident set size of the process", memory.rss);
  out.single("txkv_memory_heap_used_bytes", "gauge", "JavaScript heap in use", memory.heapUsed);
  out.single("txkv_memory_heap_total_bytes", "gauge", "JavaScript heap reserved", memory.heapTotal);
  out.single("txkv_data_bytes", "gauge", "bytes the stored keys and values take (live records with their headers), as --max-data-bytes counts them", executor.store.dataBytes);
  out.single("txkv_data_limit_bytes", "gauge", "--max-data-bytes: writes that would pass it answer TOO_LARGE", executor.store.dataLimitBytes);
  out.single("txkv_data_allocated_bytes", "gauge", "bytes the store's buffers hold (records, free space, index), the old and new ones both while it grows", executor.store.allocatedBytes);
  out.single("txkv_data_growing", "gauge", "1 while the store moves into a grown arena or index (both held), else 0", executor.store.growing ? 1 : 0);
  out.single("txkv_client_buffer_bytes", "gauge", "bytes buffered for clients: unsent replies and unprocessed requests", s.clientBufferBytes());
  renderPersistence(out, executor);
  return out.toString();
}

/**
 * STATS persistence fields that count events since start: exported as
 * counters named `_total`, as Prometheus expects (rate() over a restart).
 */
const PERSISTENCE_COUNTERS: ReadonlySet<string> = new Set(["fsyncs"]);

/**
 * Persistence metrics: availability, the mode as a label, then every numeric
 * or boolean field of the commit log's STATS (`journalBytes` becomes the
 * gauge `txkv_persistence_journal_bytes`, `fsyncs` the counter
 * `txkv_persistence_fsyncs_total`), so new fields show up by themselves.
 */
function renderPersistence(out: Exposition, executor: Executor): void {
  const fields = executor.commitLog.stats();
  out.single(
    "txkv_persistence_available",
    "gauge",
    "1 when writes can be persisted, 0 while they are refused with PERSISTENCE",
    executor.commitLog.unavailableReason === null ? 1 : 0,
  );
  if (typeof fields.mode === "string") {
    out.family("txkv_persistence_mode", "gauge", "durability mode, as a label; always 1", [[{ mode: fields.mode }, 1]]);
  }
  for (const [field, value] of Object.entries(fields)) {
    if (typeof value !== "number" && typeof value !== "boolean") continue;
    if (typeof value === "number" && !Number.isFinite(value)) continue;
    const counter = PERSISTENCE_COUNTERS.has(field);
    const name = `txkv_persistence_${snakeCase(field)}${counter ? "_total" : ""}`;
    if (out.has(name)) continue;
    const help = `persistence field "${field}" of STATS${typeof value === "boolean" ? " (1: true, 0: false)" : ""}`;
    out.single(name, counter ? "counter" : "gauge", help, Number(value));
  }
}

function countSamples(label: string, counts: Record<string, number>): Array<[Labels, number]> {
  return Object.keys(counts)
    .sort()
    .map((key) => [{ [label]: key }, counts[key]!]);
}

/** journalBytes → journal_bytes; anything outside [a-z0-9_] becomes `_`. */
function snakeCase(field: string): string {
  return field
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .toLowerCase()
    .replace(/[^a-z0-9_]/g, "_");
}

function formatLabels(labels: Labels): string {
  const keys = Object.keys(labels);
  if (keys.length === 0) return "";
  return "{" + keys.map((k) => `${k}="${escapeLabelValue(labels[k]!)}"`).join(",") + "}";
}

function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function escapeHelp(text: string): string {
  return text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return "NaN";
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  return String(value);
}

/** The HTTP endpoint: GET /metrics, GET /health. */
export class MetricsServer {
  private server: Server<undefined> | null = null;
  /** Set when shutdown begins: /health answers 503 from then on. */
  shuttingDown = false;

  constructor(
    private readonly executor: Executor,
    private readonly version: string,
  ) {}

  /** Starts serving; returns the real port (also when 0 was asked). Throws when the port cannot be bound. */
  start(host: string, port: number): number {
    this.server = Bun.serve({
      hostname: host,
      port,
      // Bun answers HEAD from the GET handler; every other method and path comes to fetch.
      routes: {
        "/metrics": { GET: () => this.metrics() },
        "/health": { GET: () => this.health() },
      },
      fetch: (request) => this.notRouted(request),
      error: () => new Response("internal error\n", { status: 500 }),
    });
    return this.server.port!;
  }

  async stop(): Promise<void> {
    await this.server?.stop(true);
    this.server = null;
  }

  private health(): Response {
    const health = healthOf(this.executor, this.shuttingDown);
    const body = health.ok ? { status: "ok" } : { status: "unavailable", reason: health.reason };
    return Response.json(body, { status: health.ok ? 200 : 503, headers: { "cache-control": "no-store" } });
  }

  private metrics(): Response {
    const health = healthOf(this.executor, this.shuttingDown);
    return new Response(renderMetrics(this.executor, health, this.version), {
      headers: { "content-type": METRICS_CONTENT_TYPE, "cache-control": "no-store" },
    });
  }

  /** What the routes did not take: another method on a known path (405), or an unknown path (404). */
  private notRouted(request: Request): Response {
    const path = new URL(request.url).pathname;
    if (path === "/metrics" || path === "/health") {
      return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    return new Response("not found: try /metrics or /health\n", { status: 404 });
  }
}
