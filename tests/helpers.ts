/**
 * Test helpers: real txkv servers on port 0, in this process or as a
 * subprocess, and a raw line client for byte-level tests.
 * Must not: be imported by lib/ code.
 */
import { afterAll, beforeAll } from "bun:test";
import type { Socket, Subprocess } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, type RunningServer } from "../lib/app.ts";
import { parseConfig, type Config } from "../lib/config.ts";
import { Logger, type LogLevel } from "../lib/log.ts";

export const ROOT = join(import.meta.dir, "..");
export const INDEX = join(ROOT, "index.ts");
/** The bun binary running these tests (the project's pinned copy). */
export const BUN = process.execPath;

export interface Reply {
  status: "Ok" | "Error";
  result?: unknown;
  code?: string;
  message?: string;
}

/** A fresh temporary directory, removed by the returned cleanup. */
export function tempDir(): { path: string; cleanup(): void } {
  const path = mkdtempSync(join(tmpdir(), "txkv-test-"));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

/** Config for an in-process server on port 0: --in-memory, unless args give a --data (a server on disk). */
export function testConfig(args: string[] = []): Config {
  const storage = args.includes("--data") ? [] : ["--in-memory"];
  const parsed = parseConfig(["--port", "0", ...storage, ...args], {});
  if (parsed.kind !== "serve") throw new Error("unexpected --help/--version");
  return parsed.config;
}

/** Starts a server inside the test process (fast). Log lines are collected in `logs`. */
export async function startInProcess(
  args: string[] = [],
  level: LogLevel = "warn",
): Promise<RunningServer & { logs: string[] }> {
  const logs: string[] = [];
  const log = new Logger(level, (line) => logs.push(line));
  const running = await startServer(testConfig(args), "test", log);
  return Object.assign(running, { logs });
}

/** Subprocesses of this run still alive: tests/leftovers.ts (preloaded) kills them when the run ends. */
export const liveSubprocesses = new Set<Subprocess>();

/**
 * Registers a long-lived subprocess (a server, a cli waiting on its input):
 * a test that fails before it stops its processes leaves none running after
 * the run.
 */
export function tracked<P extends Subprocess>(proc: P): P {
  liveSubprocesses.add(proc);
  void proc.exited.then(() => liveSubprocesses.delete(proc));
  return proc;
}

export interface ServerProcess {
  readonly proc: ReturnType<typeof Bun.spawn>;
  readonly port: number;
  /** Everything the process printed on stderr so far. */
  stderr(): string;
  /** Everything the process printed on stdout so far. */
  stdout(): string;
  /** Sends a signal and resolves with the exit code. */
  kill(signal?: NodeJS.Signals | number): Promise<number>;
  readonly exited: Promise<number>;
}

/** Spawns `bun run index.ts --port 0 ...args` and resolves once it prints `listening on`. */
export async function spawnServer(
  args: string[],
  /** portFromEnv: no `--port 0` on the command line (the env must then give TXKV_PORT=0). */
  /** openFiles: run it under `ulimit -n <openFiles>` (soft and hard). */
  options: { env?: Record<string, string>; cwd?: string; timeoutMs?: number; portFromEnv?: boolean; openFiles?: number } = {},
): Promise<ServerProcess> {
  const command = [BUN, "run", INDEX, ...(options.portFromEnv ? [] : ["--port", "0"]), ...args];
  const limited = options.openFiles === undefined ? command : ["bash", "-c", 'ulimit -n "$0" && exec "$@"', String(options.openFiles), ...command];
  const proc = tracked(
    Bun.spawn(limited, {
      cwd: options.cwd ?? ROOT,
      env: { ...process.env, ...options.env },
      stdout: "pipe",
      stderr: "pipe",
      stdin: "ignore",
    }),
  );
  let stderrText = "";
  void (async () => {
    // One decoder per stream, streaming: a character split between two chunks stays whole.
    const decoder = new TextDecoder();
    for await (const chunk of proc.stderr as ReadableStream<Uint8Array>) stderrText += decoder.decode(chunk, { stream: true });
  })();
  let stdoutText = "";
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start: ${stderrText}`)), options.timeoutMs ?? 15000);
    void (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of proc.stdout as ReadableStream<Uint8Array>) {
        stdoutText += decoder.decode(chunk, { stream: true });
        const match = /listening on [^\s]*:(\d+)/.exec(stdoutText);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      }
      clearTimeout(timer);
      reject(new Error(`server exited before listening (code ${await proc.exited}): ${stderrText}`));
    })();
  });
  return {
    proc,
    port,
    stderr: () => stderrText,
    stdout: () => stdoutText,
    exited: proc.exited,
    kill(signal = "SIGTERM") {
      proc.kill(signal);
      return proc.exited;
    },
  };
}

/** Runs `bun run index.ts ...args` to completion (for --help, bad options, start-up failures). */
export async function runIndex(
  args: string[],
  options: { env?: Record<string, string>; cwd?: string; stdin?: string | Uint8Array } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const proc = Bun.spawn([BUN, "run", INDEX, ...args], {
    cwd: options.cwd ?? ROOT,
    env: { ...process.env, ...options.env },
    stdout: "pipe",
    stderr: "pipe",
    stdin: options.stdin === undefined ? "ignore" : new Blob([options.stdin]),
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, stdout, stderr };
}

/** The client tools' environment in tests: no history file, no colours. */
export const TOOL_ENV = { TXKV_HISTFILE: "", NO_COLOR: "1" } as const;

/** Runs `index.ts` (e.g. `cli ...`, `bench ...`) with stdin from a string or bytes, in TOOL_ENV. */
export function runTxkv(args: string[], stdin: string | Uint8Array = "", env: Record<string, string> = {}) {
  return runIndex(args, { stdin, env: { ...TOOL_ENV, ...env } });
}

/** Starts `txkv cli ...args` in TOOL_ENV with its stdin left open (a producer that may never end), stdout and stderr piped. */
export function spawnCli(args: string[]) {
  return tracked(Bun.spawn([BUN, "run", INDEX, "cli", ...args], { stdin: "pipe", stdout: "pipe", stderr: "pipe", env: { ...process.env, ...TOOL_ENV } }));
}

/** One in-memory server subprocess for a whole test file: port as a string, for command lines. */
export function sharedServer(): { readonly port: string; readonly server: ServerProcess } {
  const shared = { port: "", server: undefined as unknown as ServerProcess };
  beforeAll(async () => {
    shared.server = await spawnServer(["--in-memory"]);
    shared.port = String(shared.server.port);
  });
  afterAll(async () => {
    await shared.server.kill();
  });
  return shared;
}

/** A raw TCP client that reads reply lines: for tests where the bytes are the point. */
export class LineClient {
  private received = "";
  private readPos = 0;
  private readonly waiters: Array<() => void> = [];
  private closedResolve!: () => void;
  /** Resolves when the server closes the connection. */
  readonly closed = new Promise<void>((resolve) => (this.closedResolve = resolve));
  isClosed = false;
  private socket!: Socket<undefined>;
  private readonly decoder = new TextDecoder();
  /** Bytes the kernel did not take yet (socket.write may accept only part). */
  private pendingOut: Uint8Array[] = [];

  /** With `tls`, speaks TLS trusting `ca` (writes made before the handshake go out on its drain). */
  static async connect(port: number, host = "127.0.0.1", tls?: { ca?: string; serverName?: string }): Promise<LineClient> {
    const client = new LineClient();
    client.socket = await Bun.connect({
      hostname: host,
      port,
      ...(tls ? { tls } : {}),
      socket: {
        data: (_s, chunk) => {
          client.received += client.decoder.decode(chunk, { stream: true });
          client.wake();
        },
        drain: () => client.flush(),
        close: () => {
          client.isClosed = true;
          client.closedResolve();
          client.wake();
        },
        error: () => {},
      },
    });
    return client;
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  /** Writes raw bytes (no LF added), all of them: what the kernel does not take now is sent on drain. */
  write(data: string | Uint8Array): void {
    this.pendingOut.push(typeof data === "string" ? Buffer.from(data) : data);
    this.flush();
  }

  private flush(): void {
    while (this.pendingOut.length > 0) {
      const bytes = this.pendingOut[0]!;
      const written = this.socket.write(bytes);
      if (written < 0) return;
      if (written < bytes.length) {
        this.pendingOut[0] = bytes.subarray(written);
        return;
      }
      this.pendingOut.shift();
    }
  }

  /** True once everything written has been handed to the kernel. */
  get allWritten(): boolean {
    return this.pendingOut.length === 0;
  }

  /**
   * Turns Nagle's algorithm on, as a Python or Node socket has it by default
   * (Bun's sockets start with TCP_NODELAY): a write waits while an earlier
   * one is unacknowledged.
   */
  useNagle(): void {
    this.socket.setNoDelay(false);
  }

  /** Stops reading replies (the server's writes back up); resumeReading() starts again. */
  pauseReading(): void {
    this.socket.pause();
  }

  resumeReading(): void {
    this.socket.resume();
  }

  /** Sends one request line and returns its parsed reply. */
  async request(line: string): Promise<Reply> {
    this.write(line + "\n");
    return this.readReply();
  }

  /** Sends several lines in one write and returns their replies. */
  async pipeline(lines: string[]): Promise<Reply[]> {
    this.write(lines.map((l) => l + "\n").join(""));
    const replies: Reply[] = [];
    for (let i = 0; i < lines.length; i++) replies.push(await this.readReply());
    return replies;
  }

  async readReply(timeoutMs = 5000): Promise<Reply> {
    const line = await this.readLine(timeoutMs);
    return JSON.parse(line) as Reply;
  }

  /** The next line the server sent (without LF). Rejects when the connection closes first. */
  async readLine(timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lf = this.received.indexOf("\n", this.readPos);
      if (lf !== -1) {
        const line = this.received.slice(this.readPos, lf);
        this.readPos = lf + 1;
        // Drop what was read now and then, not on every line (that would copy the buffer each time).
        if (this.readPos > 65536) {
          this.received = this.received.slice(this.readPos);
          this.readPos = 0;
        }
        return line;
      }
      if (this.isClosed) throw new Error(`connection closed; unread: ${JSON.stringify(this.unread)}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no reply within ${timeoutMs} ms; unread: ${JSON.stringify(this.unread)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Bytes received but not yet read as lines. */
  get unread(): string {
    return this.received.slice(this.readPos);
  }

  /** Half-closes: the server sees end of input. */
  shutdownWrite(): void {
    this.socket.shutdown();
  }

  close(): void {
    this.socket.end();
  }
}

/**
 * A raw client that does not close its side at the server's FIN
 * (allowHalfOpen): it can go on sending after it, as a client that has not
 * read the FIN yet does. It keeps everything it receives, as text, and how
 * the connection ended. open and drain, when given, are its socket's.
 */
export interface HalfOpenClient {
  readonly socket: Socket<undefined>;
  /** Everything received so far. */
  received(): string;
  readonly isClosed: boolean;
  /** Resolves at the close: "closed", or "error: <message>" (a reset, say). */
  readonly closed: Promise<string>;
}

export async function connectHalfOpen(
  port: number,
  handlers: { open?: (socket: Socket<undefined>) => void; drain?: (socket: Socket<undefined>) => void } = {},
): Promise<HalfOpenClient> {
  let received = "";
  let isClosed = false;
  const closed = Promise.withResolvers<string>();
  const ended = (outcome: string) => {
    isClosed = true;
    closed.resolve(outcome);
  };
  const socket = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    allowHalfOpen: true,
    socket: {
      ...handlers,
      data: (_socket, chunk) => void (received += Buffer.from(chunk).toString()),
      end: () => {},
      close: (_socket, err) => ended(err ? `error: ${err.message}` : "closed"),
      error: (_socket, err) => ended(`error: ${err.message}`),
    },
  });
  return {
    socket,
    received: () => received,
    get isClosed() {
      return isClosed;
    },
    closed: closed.promise,
  };
}

/** A local port nothing listens on now (one just listened on and closed); free for a test's own server, or refused. */
export function closedPort(): number {
  const listener = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = listener.port;
  listener.stop(true);
  return port;
}

/** Polls cond until true or the deadline passes: for states with no event to wait on. */
export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

/** bytes cut into chunks at the given positions (taken modulo the length, deduplicated, in order). */
export function splitAt(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => (bytes.length === 0 ? 0 : c % (bytes.length + 1))))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let start = 0;
  for (const p of [...points, bytes.length]) {
    chunks.push(bytes.slice(start, p));
    start = p;
  }
  return chunks;
}

/** mulberry32: a small seeded generator, so a failing sequence can be replayed. */
export function seededRandom(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One of items, chosen by rng (a seededRandom). */
export function pick<T>(rng: () => number, items: readonly T[]): T {
  return items[Math.floor(rng() * items.length)]!;
}

/** What tests/quit-pipeliner.py saw: its replies, the last one, and how the connection ended ("eof" when cleanly). */
export interface QuitPipelinerReport {
  replies: number;
  last: string | null;
  endedBy: string;
  sendError: string | null;
}

/**
 * Runs tests/quit-pipeliner.py against an in-process server: it pipelines
 * `gets` GETs of a 900-byte value, QUIT, and junkBytes of PINGs, and starts
 * reading only once it has sent everything and the server has run the QUIT.
 * caFile makes it speak TLS.
 */
export async function pipelineAfterQuit(
  server: RunningServer,
  caFile: string | null,
  gets: number,
  junkBytes: number,
): Promise<QuitPipelinerReport> {
  const quitsBefore = server.executor.stats.commandsByType.QUIT ?? 0;
  const script = join(import.meta.dir, "quit-pipeliner.py");
  const args = [String(server.port), caFile ?? "-", String(gets), String(junkBytes)];
  const proc = Bun.spawn(["python3", script, ...args], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  let out = "";
  const reading = (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout) out += decoder.decode(chunk, { stream: true });
  })();
  await waitFor(
    () => out.startsWith("sent\n") && (server.executor.stats.commandsByType.QUIT ?? 0) > quitsBefore,
    10000,
    "the client to send everything and the server to run its QUIT",
  );
  proc.stdin.write("go\n");
  proc.stdin.end();
  const [code, stderr] = await Promise.all([proc.exited, new Response(proc.stderr).text(), reading]);
  if (code !== 0) throw new Error(`quit-pipeliner.py failed: ${stderr}`);
  return JSON.parse(out.slice("sent\n".length)) as QuitPipelinerReport;
}
