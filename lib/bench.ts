/**
 * `txkv bench`: a closed-loop load generator in the manner of redis-benchmark
 * (and of kvload, whose options and key names it shares).
 *
 * Owns: the bench options, the request mix, the per-connection send/receive
 * loop, latency percentiles and the report (text, or one JSON line).
 * Must not: parse replies beyond counting lines, spotting Error statuses
 * and the marks of success it counts (a COMMIT's Ok, a NOT_FOUND answer),
 * and reading the first Error's code, once, to report it: the generator has
 * to stay cheaper than the server it measures.
 *
 * Each connection sends a batch of `--pipeline` requests, waits for all their
 * replies, records the batch's latency and sends the next batch. Requests are
 * plain-form (`GET key:00000042`, `PUT key:00000042 xxx…`); `tx` sends
 * `START`, `GET`, `PUT`, `COMMIT` in one write and counts a transaction as one
 * op: pipelined transactions, which the server runs back to back, so they
 * never conflict; not interactive ones, whose client waits between requests.
 * A run in which no operation succeeded (every reply an Error, NOT_FOUND aside;
 * for tx, no COMMIT Ok) measured nothing: exit status 1.
 */

import { parseArgs } from "node:util";
import * as v from "valibot";
import { formatAddress } from "./address.ts";
import { ErrorReplySchema } from "./client.ts";
import { clientOptionsFrom, CONNECTION_HELP, CONNECTION_OPTIONS } from "./connection-options.ts";
import { optionErrorMessage, positiveNumber, wholeNumber } from "./option-schemas.ts";
import { writeStdout } from "./stdout.ts";
import { errorMessage } from "./errors.ts";
import { LF } from "./ascii.ts";

const BENCH_OPTIONS = {
  ...CONNECTION_OPTIONS,
  conns: { type: "string", short: "c", default: "50" },
  pipeline: { type: "string", short: "P", default: "1" },
  workload: { type: "string", short: "w", default: "mix" },
  keys: { type: "string", default: "10000" },
  vsize: { type: "string", default: "32" },
  secs: { type: "string" },
  requests: { type: "string", short: "n" },
  timeout: { type: "string", default: "10" },
  "no-preload": { type: "boolean" },
  json: { type: "boolean" },
  help: { type: "boolean" },
} as const;

const BENCH_HELP = `Usage: txkv bench [options]

Options:
${CONNECTION_HELP}  -c, --conns <n>          connections (default 50)
  -P, --pipeline <n>       requests in flight per connection (default 1)
  -w, --workload <w>       get | put | mix (80 % GET, 20 % PUT) | tx | ping (default mix)
      --keys <n>           key space: key:00000000 … (default 10000)
      --vsize <n>          value size in bytes (default 32)
      --secs <s>           run this long (default 5)
  -n, --requests <n>       or: stop after this many ops
      --timeout <s>        a batch with no reply for this long ends the run, exit 1 (default 10)
      --no-preload         do not write every key once before a get/mix/tx run
      --json               print one JSON line instead of the text report
      --help               this text
`;

const WORKLOADS = ["get", "put", "mix", "tx", "ping"] as const;
type Workload = (typeof WORKLOADS)[number];

/** The longest --secs: a timer waits at most 2^31 - 1 ms. */
const MAX_SECS = 2_147_483;

const BenchSchema = v.object({
  conns: wholeNumber(1),
  pipeline: wholeNumber(1),
  workload: v.picklist(WORKLOADS, `must be one of ${WORKLOADS.join(", ")}`),
  keys: wholeNumber(1),
  vsize: wholeNumber(1),
  /** At most what a timer can wait (2^31 - 1 ms, about 24.8 days): a longer one fires at once. */
  secs: v.optional(positiveNumber(MAX_SECS)),
  requests: v.optional(wholeNumber(1)),
  /** Seconds without a reply to a waiting batch before the run fails (see LineConnection.checkAnswering). */
  timeout: positiveNumber(MAX_SECS),
});

type BenchConfig = v.InferOutput<typeof BenchSchema> & {
  /** Where and how every connection connects (--host, --port, --password, --tls, --tls-ca). */
  server: ReturnType<typeof clientOptionsFrom>;
  preload: boolean;
  json: boolean;
};

type BenchResult = {
  workload: Workload;
  conns: number;
  pipeline: number;
  ops: number;
  secs: number;
  ops_per_s: number;
  errors: number;
  p50_us: number;
  p99_us: number;
  p999_us: number;
  max_us: number;
};

/** Runs `txkv bench` with the arguments after `bench`; resolves with the exit status. */
export async function runBench(argv: string[]): Promise<number> {
  let config: BenchConfig;
  try {
    const parsed = parseArgs({ args: argv, options: BENCH_OPTIONS, strict: true, allowPositionals: false });
    if (parsed.values.help) {
      writeStdout(BENCH_HELP);
      return 0;
    }
    config = toConfig(parsed.values);
  } catch (error) {
    process.stderr.write(`txkv bench: ${optionErrorMessage(error)}\n`);
    return 2;
  }
  try {
    const progress = process.stdout.isTTY && !config.json ? new Progress() : null;
    if (!config.json) writeStdout(describe(config) + "\n");
    const { result, firstError, succeeded } = await bench(config, progress);
    progress?.clear();
    writeStdout((config.json ? JSON.stringify(result) : report(result)) + "\n");
    if (result.ops === 0 || succeeded > 0) return 0;
    process.stderr.write(`txkv bench: no operation succeeded, so the run measured nothing${firstError ? ` (the first Error: ${firstError})` : ""}\n`);
    return 1;
  } catch (error) {
    process.stderr.write(`txkv bench: ${errorMessage(error)}\n`);
    return 1;
  }
}

function toConfig(values: Record<string, string | boolean | undefined>): BenchConfig {
  const parsed = v.safeParse(BenchSchema, values);
  if (!parsed.success) {
    const issue = parsed.issues[0];
    const option = v.getDotPath(issue) ?? "option";
    throw new Error(`--${option} ${String(values[option])}: ${issue.message}`);
  }
  if (parsed.output.secs !== undefined && parsed.output.requests !== undefined) {
    throw new Error("--secs and --requests exclude each other");
  }
  return {
    ...parsed.output,
    secs: parsed.output.requests === undefined ? (parsed.output.secs ?? 5) : undefined,
    server: clientOptionsFrom(values),
    preload: values["no-preload"] !== true && parsed.output.workload !== "put" && parsed.output.workload !== "ping",
    json: values.json === true,
  };
}

/** Replies each op gets: tx sends four requests per op. */
function repliesPerOp(workload: Workload): number {
  return workload === "tx" ? 4 : 1;
}

/**
 * The operations of a batch that did their work: for `tx`, those whose COMMIT
 * answered Ok; for the others, those not answered with an Error, NOT_FOUND
 * aside (a GET of an absent key is an answer). `batch.marked` counts the
 * replies with the workload's outcomeMark.
 */
function succeededOps(workload: Workload, ops: number, batch: BatchReplies): number {
  return workload === "tx" ? batch.marked : ops - batch.errors + batch.marked;
}

/** The reply mark succeededOps needs besides the Error status: a COMMIT's Ok for `tx`, a NOT_FOUND for the others. */
function outcomeMark(workload: Workload): Buffer {
  return workload === "tx" ? COMMITTED_MARK : NOT_FOUND_MARK;
}

function describe(config: BenchConfig): string {
  const limit = config.requests !== undefined ? `${config.requests} ops` : `${config.secs} s`;
  return (
    `txkv bench ${formatAddress(config.server.host, config.server.port)}: workload ${config.workload}, ${config.conns} connection${config.conns === 1 ? "" : "s"}, ` +
    `pipeline ${config.pipeline}, ${config.workload === "ping" ? "" : `${config.keys} keys, ${config.vsize}-byte values, `}${limit}`
  );
}

function report(result: BenchResult): string {
  const ms = (us: number) => (us / 1000).toFixed(3);
  const unit = result.pipeline > 1 ? "batch latency" : "latency";
  return [
    `${result.ops} ops in ${result.secs.toFixed(2)} s, ${result.errors} error replies`,
    `throughput: ${Math.round(result.ops_per_s)} ops/s`,
    `${unit} (ms): p50 ${ms(result.p50_us)}  p99 ${ms(result.p99_us)}  p99.9 ${ms(result.p999_us)}  max ${ms(result.max_us)}`,
  ].join("\n");
}

// ---- the load loop ----------------------------------------------------------

/** Latencies in microseconds, one per batch, in a growable typed array. Exported for tests. */
export class Latencies {
  private values = new Uint32Array(1 << 16);
  length = 0;

  add(us: number): void {
    if (this.length === this.values.length) {
      const grown = new Uint32Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.length++] = us;
  }

  /** The report's percentiles (nearest rank, rounding down) and the largest; all 0 when there are none. */
  summary(): { p50_us: number; p99_us: number; p999_us: number; max_us: number } {
    const sorted = this.values.subarray(0, this.length).sort();
    const pct = (p: number) => (sorted.length === 0 ? 0 : sorted[Math.floor((sorted.length - 1) * p)]!);
    return { p50_us: pct(0.5), p99_us: pct(0.99), p999_us: pct(0.999), max_us: pct(1) };
  }
}

/** succeeded: operations that did their work (see succeededOps). */
type Totals = { ops: number; errors: number; succeeded: number; latencies: Latencies; stop: boolean; issued: number };

/** Runs the load and resolves with the measurements, and the first Error reply seen (`CODE: message`), if any. */
async function bench(
  config: BenchConfig,
  progress: Progress | null = null,
): Promise<{ result: BenchResult; firstError: string | null; succeeded: number }> {
  const value = "x".repeat(config.vsize);
  if (config.preload) await preload(config, value);
  const connections = await openAll(config);
  const totals: Totals = { ops: 0, errors: 0, succeeded: 0, latencies: new Latencies(), stop: false, issued: 0 };
  const started = performance.now();
  const ticker = progress ? setInterval(() => progress.show(totals, performance.now() - started), 250) : null;
  const timer = config.secs !== undefined ? setTimeout(() => (totals.stop = true), config.secs * 1000) : null;
  try {
    await Promise.all(connections.map((connection, i) => drive(connection, config, value, totals, i + 1)));
  } finally {
    totals.stop = true;
    if (timer) clearTimeout(timer);
    if (ticker) clearInterval(ticker);
    for (const connection of connections) connection.close();
  }
  const secs = (performance.now() - started) / 1000;
  const result = {
    workload: config.workload,
    conns: config.conns,
    pipeline: config.pipeline,
    ops: totals.ops,
    secs,
    ops_per_s: totals.ops / secs,
    errors: totals.errors,
    ...totals.latencies.summary(),
  };
  const firstError = connections.map((connection) => connection.firstError).find((error) => error !== null) ?? null;
  return { result, firstError, succeeded: totals.succeeded };
}

/** Opens every connection, or none: a failure closes the ones already open. */
async function openAll(config: BenchConfig): Promise<LineConnection[]> {
  const settled = await Promise.allSettled(Array.from({ length: config.conns }, () => LineConnection.open(config)));
  const opened = settled.flatMap((outcome) => (outcome.status === "fulfilled" ? [outcome.value] : []));
  const failure = settled.find((outcome) => outcome.status === "rejected");
  if (failure) {
    for (const connection of opened) connection.close();
    throw failure.reason;
  }
  return opened;
}

/** One connection's closed loop: send a batch, wait for all its replies, record, repeat. */
function drive(connection: LineConnection, config: BenchConfig, value: string, totals: Totals, seed: number): Promise<void> {
  const next = rng(seed);
  const replies = repliesPerOp(config.workload);
  const request = (): string => {
    const key = keyName(next() % config.keys);
    const kind = config.workload === "mix" ? (next() % 10 < 8 ? "get" : "put") : config.workload;
    switch (kind) {
      case "get":
        return `GET ${key}\n`;
      case "put":
        return `PUT ${key} ${value}\n`;
      case "ping":
        return "PING\n";
      default:
        return `START\nGET ${key}\nPUT ${keyName(next() % config.keys)} ${value}\nCOMMIT\n`;
    }
  };
  return new Promise((resolve, reject) => {
    let batchOps = 0;
    let batchStart = 0;
    const batchDone = (batch: BatchReplies) => {
      totals.latencies.add(Math.round((performance.now() - batchStart) * 1000));
      totals.ops += batchOps;
      totals.errors += batch.errors;
      totals.succeeded += succeededOps(config.workload, batchOps, batch);
      sendBatch();
    };
    const sendBatch = () => {
      const left = config.requests === undefined ? config.pipeline : config.requests - totals.issued;
      if (totals.stop || left <= 0) return resolve();
      batchOps = Math.min(config.pipeline, left);
      totals.issued += batchOps;
      let text = "";
      for (let i = 0; i < batchOps; i++) text += request();
      batchStart = performance.now();
      connection.send(text, batchOps * replies, batchDone);
    };
    connection.onLost = reject;
    sendBatch();
  });
}

/** Writes every key once over one connection, 1,000 requests per round trip. */
async function preload(config: BenchConfig, value: string): Promise<void> {
  const loader = await LineConnection.open(config);
  try {
    for (let first = 0; first < config.keys; first += 1000) {
      const last = Math.min(config.keys, first + 1000);
      let text = "";
      for (let n = first; n < last; n++) text += `PUT ${keyName(n)} ${value}\n`;
      const errors = await loader.roundTrip(text, last - first);
      if (errors > 0) throw new Error(`preload: ${errors} PUT requests failed${loader.firstError ? ` (the first Error: ${loader.firstError})` : ""}`);
    }
  } finally {
    loader.close();
  }
}

/** A small xorshift generator per connection: cheap, and repeatable runs. */
function rng(seed: number): () => number {
  let state = Math.imul(seed, 0x9e3779b1) || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return state >>> 0;
  };
}

function keyName(n: number): string {
  return `key:${String(n).padStart(8, "0")}`;
}

const encoder = new TextEncoder();

/** How often each connection looks whether its waiting batch got a reply (--timeout's granularity). */
const WATCHDOG_MS = 250;
const ERROR_MARK = Buffer.from('"status":"Error"');

/** A NOT_FOUND reply: an answer (the key is absent), not a failed operation. */
const NOT_FOUND_MARK = Buffer.from('"code":"NOT_FOUND"');
/** COMMIT's Ok reply: a `tx` operation that succeeded. */
const COMMITTED_MARK = Buffer.from('"result":"Transaction committed"');

/**
 * Counts the replies holding a mark, in reply bytes that arrive in pieces
 * cut anywhere, found natively. A mark cannot match inside a JSON string
 * (its quotes would be escaped there). Exported for tests.
 */
export class MarkCounter {
  /** The end of the bytes scanned so far, when it may hold the start of a mark. */
  private carry: Buffer | null = null;

  constructor(private readonly mark: Buffer) {}

  /** The marks that end in this piece; onMark gets each one's position in `scanned` (the carry, then the piece). */
  count(piece: Buffer, onMark?: (scanned: Buffer, at: number, linesStart: boolean) => void): number {
    // Without a carry the bytes begin a line: the piece before ended with LF (or this is the first).
    const linesStart = this.carry === null;
    const scanned = linesStart ? piece : Buffer.concat([this.carry!, piece]);
    const mark = this.mark;
    let marks = 0;
    for (let at = scanned.indexOf(mark); at !== -1; at = scanned.indexOf(mark, at + mark.length)) {
      marks++;
      onMark?.(scanned, at, linesStart);
    }
    // From what was scanned, the carry included, not from this piece alone: a mark may span three pieces or more.
    this.carry = piece[piece.length - 1] === LF ? null : Buffer.from(scanned.subarray(-(mark.length - 1)));
    return marks;
  }
}

/**
 * Counts Error replies (see MarkCounter); only the first one seen whole is
 * parsed, once, for the `CODE: message` that says why a run failed.
 * Exported for tests.
 */
export class ErrorCounter {
  /** `CODE: message` of the first Error reply seen whole, or null. */
  firstError: string | null = null;
  private readonly marks = new MarkCounter(ERROR_MARK);

  /** The Error replies whose mark ends in this piece. */
  count(piece: Buffer): number {
    return this.marks.count(piece, (scanned, at, linesStart) => {
      if (this.firstError === null) this.firstError = errorAt(scanned, at, linesStart);
    });
  }
}

/** What one batch's replies held. */
type BatchReplies = { errors: number; marked: number };

/** The code and message of an Error reply line; null when the line is not JSON or no Error reply. */
function errorReply(line: string): { code: string; message: string } | null {
  let json: unknown;
  try {
    json = JSON.parse(line);
  } catch {
    return null;
  }
  const parsed = v.safeParse(ErrorReplySchema, json);
  return parsed.success ? parsed.output : null;
}

/**
 * `CODE: message` of the Error reply whose mark is at `at`, when its line is
 * whole in `bytes` and not a NOT_FOUND (an answer, not a failure); else null:
 * a later one is taken.
 */
function errorAt(bytes: Buffer, at: number, linesStart: boolean): string | null {
  const start = bytes.lastIndexOf(LF, at) + 1;
  const end = bytes.indexOf(LF, at);
  if ((start === 0 && !linesStart) || end === -1) return null; // cut: the line began in an earlier piece, or ends in a later one
  const notFound = bytes.indexOf(NOT_FOUND_MARK, at);
  if (notFound !== -1 && notFound < end) return null;
  const reply = errorReply(bytes.subarray(start, end).toString());
  return reply === null ? null : `${reply.code}: ${reply.message}`;
}

/**
 * A connection that sends a batch of request lines and reports when the same
 * number of reply lines came back, with how many were Error replies and how
 * many held the workload's outcome mark (see succeededOps). Replies are
 * searched natively for newlines and these marks, never decoded or parsed.
 */
class LineConnection {
  /** Called when the connection closes while a batch waits for replies. */
  onLost: (error: Error) => void = () => {};
  private socket!: Bun.Socket<undefined>;
  private expected = 0;
  private batch: BatchReplies = { errors: 0, marked: 0 };
  private readonly errors = new ErrorCounter();
  private readonly outcomes: MarkCounter;
  /** While not null, the replies' text is kept here (checkedRoundTrip reads the Error it got). */
  private transcript: string | null = null;
  private outQueue: Uint8Array | null = null;
  private done: ((replies: BatchReplies) => void) | null = null;
  private closing = false;
  /** Why the TLS handshake refused the server (its certificate), reported instead of a bare "closed". */
  private tlsError: Error | null = null;
  /** Reply chunks received, and their count at the last check: no change while a batch waits is silence. */
  private chunks = 0;
  private chunksAtCheck = 0;
  private silentMs = 0;
  private watchdog: Timer | null = null;

  /**
   * `silenceLimitSecs`: a batch whose replies stop coming for this long fails
   * the run. A server that stopped answering (stopped with SIGSTOP, its disk
   * hung) would otherwise hold the run, even one of `--secs`, for ever.
   */
  private constructor(
    workload: Workload,
    private readonly silenceLimitSecs: number,
  ) {
    this.outcomes = new MarkCounter(outcomeMark(workload));
  }

  static async open(config: BenchConfig): Promise<LineConnection> {
    const connection = new LineConnection(config.workload, config.timeout);
    const { host, port, password, tls } = config.server;
    const where = formatAddress(host, port);
    connection.socket = await Bun.connect({
      hostname: host,
      port,
      tls: tls || undefined,
      socket: {
        data: (_socket, chunk) => connection.onData(chunk),
        drain: () => connection.flush(),
        handshake: (_socket, _success, authorizationError) => {
          if (authorizationError) connection.tlsError = new Error(`TLS with ${where}: ${authorizationError.message}`);
        },
        close: () => connection.onClose(connection.tlsError ?? new Error(`connection to ${where} closed during the run`)),
        error: (_socket, error) => connection.onClose(error),
        connectError: () => {},
      },
    }).catch((error: Error) => {
      throw new Error(`cannot connect to ${where}: ${error.message}`);
    });
    connection.watchdog = setInterval(() => connection.checkAnswering(where), WATCHDOG_MS);
    // The JSON form, as the client library sends it: any password, "{" or spaces first included.
    const refused = `${where} refused the run`;
    if (password !== undefined) await connection.checkedRoundTrip(`AUTH ${JSON.stringify({ password })}\n`, `AUTH to ${where} failed`, refused);
    // A run whose every reply is an Error measures nothing: a server that wants a password, or is full (BUSY), is told here.
    await connection.checkedRoundTrip("PING\n", refused, refused);
    return connection;
  }

  /**
   * One request whose reply must not be an Error; else the connection closes
   * and this throws, naming the reply's code. A full server's BUSY comes
   * first whatever was sent: it is said as a refusal (`refused`), not as the request's failure.
   */
  private async checkedRoundTrip(line: string, failure: string, refused: string): Promise<void> {
    this.transcript = "";
    const errors = await this.roundTrip(line, 1);
    const reply = this.transcript;
    this.transcript = null;
    if (errors === 0) return;
    this.close();
    const replyLine = reply.slice(0, reply.indexOf("\n"));
    const error = errorReply(replyLine);
    if (error === null) throw new Error(`${failure}: an unreadable reply ${JSON.stringify(replyLine)}`);
    const { code, message } = error;
    const hint = code === "AUTH_REQUIRED" ? " (give --password, or set TXKV_PASSWORD)" : "";
    throw new Error(`${code === "BUSY" ? refused : failure}: ${code}: ${message}${hint}`);
  }

  send(text: string, replies: number, done: (replies: BatchReplies) => void): void {
    this.expected = replies;
    this.batch = { errors: 0, marked: 0 };
    this.done = done;
    const bytes = encoder.encode(text);
    if (this.outQueue !== null) {
      const joined = new Uint8Array(this.outQueue.length + bytes.length);
      joined.set(this.outQueue);
      joined.set(bytes, this.outQueue.length);
      this.outQueue = joined;
    } else {
      this.outQueue = bytes;
      this.flush();
    }
  }

  /** Sends text and resolves with how many of its replies were Errors. */
  roundTrip(text: string, replies: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.onLost = reject;
      this.send(text, replies, (batch) => resolve(batch.errors));
    });
  }

  /** `CODE: message` of the first Error reply this connection got, or null. */
  get firstError(): string | null {
    return this.errors.firstError;
  }

  close(): void {
    this.closing = true;
    this.stopWatchdog();
    this.socket.end();
  }

  /** Every WATCHDOG_MS: a batch that got no reply chunk for silenceLimitSecs fails, and the connection is dropped. */
  private checkAnswering(where: string): void {
    if (this.done === null || this.chunks !== this.chunksAtCheck) {
      this.chunksAtCheck = this.chunks;
      this.silentMs = 0;
      return;
    }
    this.silentMs += WATCHDOG_MS;
    if (this.silentMs < this.silenceLimitSecs * 1000) return;
    this.onClose(new Error(`${where} stopped answering: no reply for ${this.silenceLimitSecs} s (--timeout)`));
    this.closing = true;
    this.socket.terminate();
  }

  private stopWatchdog(): void {
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.watchdog = null;
  }

  private flush(): void {
    if (this.outQueue === null) return;
    const written = this.socket.write(this.outQueue);
    this.outQueue = written >= 0 && written < this.outQueue.length ? this.outQueue.subarray(written) : null;
  }

  /** One chunk holds replies of the current batch only (the next is sent after it completes). */
  private onData(chunk: Buffer): void {
    this.chunks++;
    if (this.transcript !== null) this.transcript += chunk.toString();
    this.batch.errors += this.errors.count(chunk);
    this.batch.marked += this.outcomes.count(chunk);
    for (let at = chunk.indexOf(LF); at !== -1; at = chunk.indexOf(LF, at + 1)) {
      if (--this.expected === 0) {
        const done = this.done!;
        this.done = null;
        done(this.batch);
      }
    }
  }

  private onClose(error: Error): void {
    this.stopWatchdog();
    if (this.closing || this.done === null) return;
    this.done = null;
    this.onLost(error);
  }
}

/** Live progress on a terminal: one line, rewritten in place. */
class Progress {
  show(totals: Totals, elapsedMs: number): void {
    const rate = Math.round(totals.ops / (elapsedMs / 1000));
    writeStdout(`\r\x1b[K${(elapsedMs / 1000).toFixed(1)} s: ${totals.ops} ops, ${rate} ops/s, ${totals.errors} errors`);
  }

  clear(): void {
    writeStdout("\r\x1b[K");
  }
}
