/**
 * Assembly and lifecycle of a serving txkv process.
 *
 * Owns: building the store, commit log, executor and server from a Config;
 * protected mode; fitting --max-connections to the open-files limit;
 * reading the TLS files; the optional metrics endpoint; the timer that moves
 * a growing store along when traffic does not; the
 * start-up and graceful shutdown sequence (index.ts maps signals to it).
 * Must not: parse arguments (config.ts) or implement commands (execute.ts).
 */
import { readFileSync } from "node:fs";
import { withoutBrackets } from "./address.ts";
import { MemoryOnlyLog, type CommitLog } from "./commit-log.ts";
import type { Config } from "./config.ts";
import { Executor } from "./execute.ts";
import type { Logger } from "./log.ts";
import { MetricsServer } from "./metrics.ts";
import { openPersistence } from "./persistence/index.ts";
import { TxkvServer } from "./server.ts";
import { ServerStats } from "./stats.ts";
import { Store } from "./store.ts";
import { errorMessage } from "./errors.ts";

export class StartupError extends Error {}

export interface RunningServer {
  readonly host: string;
  readonly port: number;
  /** Real port of the HTTP metrics endpoint, or null when --metrics-port is off. */
  readonly metricsPort: number | null;
  /** Keys read from the data file at start (0 for --in-memory), and how long loading took. */
  readonly keysLoaded: number;
  readonly loadMs: number;
  readonly server: TxkvServer;
  readonly executor: Executor;
  /**
   * Graceful stop: refuse new connections, let replies already being
   * produced go out, close connections (open transactions roll back), flush
   * and fsync, release the data file. Idempotent.
   */
  shutdown(): Promise<ShutdownReport>;
}

export interface ShutdownReport {
  /** Connections closed by the shutdown, and how many of them only by force after the timeout. */
  readonly connectionsClosed: number;
  readonly connectionsForced: number;
  readonly transactionsRolledBack: number;
  readonly ms: number;
}

/**
 * True for addresses only this machine can reach: localhost, 127.0.0.0/8 and
 * ::1 (also IPv4-mapped), in any spelling the system takes (127.1,
 * 0x7f.0.0.1, 0:0:0:0:0:0:0:1): the URL parser writes an IP literal the
 * canonical way first, reading IPv4 as inet_aton does. Other names are not.
 */
export function isLoopback(host: string): boolean {
  const bare = withoutBrackets(host);
  let canonical: string;
  try {
    canonical = new URL(`http://${bare.includes(":") ? `[${bare}]` : bare}`).hostname;
  } catch {
    return false;
  }
  return (
    canonical === "localhost" ||
    canonical === "[::1]" ||
    /^127\.\d+\.\d+\.\d+$/.test(canonical) ||
    /^\[::ffff:7f[0-9a-f]{2}:[0-9a-f]{1,4}\]$/.test(canonical)
  );
}

/**
 * File descriptors kept for everything but client connections (Redis keeps
 * 32 too): stdio, the listeners, the data files, metrics scrapes, refused
 * connections on their way out.
 */
const RESERVED_FDS = 32;

/**
 * Like Redis, a --max-connections the process cannot open files for is
 * lowered, with a warning, rather than left to fail at accept(): past the
 * limit Bun neither accepts nor refuses, and spins on the listening socket.
 */
function connectionsThatFit(requested: number, openFiles: number | null, log: Logger): number {
  if (openFiles === null || requested + RESERVED_FDS <= openFiles) return requested;
  const fitted = Math.max(1, openFiles - RESERVED_FDS);
  log.warn("--max-connections lowered to fit the open-files limit", {
    requested,
    max_connections: fitted,
    open_files_limit: openFiles,
    hint: "raise the limit (ulimit -n, or LimitNOFILE= in a systemd unit)",
  });
  return fitted;
}

/** This process's open-files limit (Bun raises the soft limit to the hard one at start), or null where /proc has no answer. */
function openFilesLimit(): number | null {
  try {
    const line = readFileSync("/proc/self/limits", "utf8")
      .split("\n")
      .find((l) => l.startsWith("Max open files"));
    const soft = Number(line?.slice("Max open files".length).trim().split(/\s+/)[0]);
    return Number.isSafeInteger(soft) && soft > 0 ? soft : null;
  } catch {
    return null;
  }
}

/**
 * A growing store's move to its new arena or index also runs on a timer, 1 ms
 * of every 100 (Redis's activerehashing): traffic moves it along, but an
 * idle server would otherwise hold the old and the new buffers for good. A
 * look once a second starts that timer; it stops when the move is done, so
 * an idle server does not wake ten times a second for nothing.
 */
const BACKGROUND_GROWTH_EVERY_MS = 100;
const BACKGROUND_GROWTH_MS = 1;
const GROWTH_CHECK_EVERY_MS = 1000;

/** Runs the timer above while the store grows; stop() ends both timers. */
function moveGrowthInBackground(store: Store): { stop(): void } {
  let stepping: Timer | null = null;
  const stopStepping = () => {
    if (stepping !== null) clearInterval(stepping);
    stepping = null;
  };
  const check = setInterval(() => {
    if (stepping !== null || !store.growing) return;
    stepping = setInterval(() => {
      store.growInBackground(BACKGROUND_GROWTH_MS);
      if (!store.growing) stopStepping();
    }, BACKGROUND_GROWTH_EVERY_MS);
    stepping.unref();
  }, GROWTH_CHECK_EVERY_MS);
  check.unref();
  return {
    stop() {
      clearInterval(check);
      stopStepping();
    },
  };
}

export async function startServer(config: Config, version: string, log: Logger): Promise<RunningServer> {
  refuseUnprotected(config);
  const tls = config.tls && { cert: readPem(config.tls.certPath, "--tls-cert"), key: readPem(config.tls.keyPath, "--tls-key") };
  const { commitLog, store, keysLoaded, loadMs } = await openState(config, log);
  // Loading ignores the limit (as Redis loads past maxmemory): a smaller limit refuses writes until keys are deleted.
  store.dataLimitBytes = config.maxDataBytes;
  store.maxWatchesPerTransaction = config.maxTransactionReads;
  const stats = new ServerStats();
  const executor = new Executor(store, commitLog, stats, {
    maxTransactionBytes: config.maxTransactionBytes,
    password: config.password,
    version,
  });
  const server = new TxkvServer(
    {
      host: config.host,
      port: config.port,
      maxConnections: connectionsThatFit(config.maxConnections, openFilesLimit(), log),
      maxRequestBytes: config.maxRequestBytes,
      maxOutputBytes: config.maxOutputBytes,
      partialRequestMs: config.partialRequestMs,
      password: config.password,
      tls,
      idleTimeoutSeconds: config.idleTimeoutSeconds,
    },
    executor,
    log,
  );
  const address = await listenOrClose(server, commitLog, config);
  const metrics = config.metricsPort === null ? null : await startMetricsOrClose(executor, version, config, server, commitLog);
  const backgroundGrowth = moveGrowthInBackground(store);
  let stopping: Promise<ShutdownReport> | null = null;
  return {
    ...address,
    metricsPort: metrics?.port ?? null,
    keysLoaded,
    loadMs,
    server,
    executor,
    shutdown() {
      backgroundGrowth.stop();
      stopping ??= shutDownInOrder(server, commitLog, metrics?.server ?? null, stats, config.shutdownTimeoutMs);
      return stopping;
    },
  };
}

/** Protected mode: a non-loopback address needs a password. */
function refuseUnprotected(config: Config): void {
  if (isLoopback(config.host) || config.password !== undefined) return;
  throw new StartupError(
    `refusing to listen on ${config.host} without a password (protected mode): ` +
      `set one with --password <pw> or TXKV_PASSWORD, or bind to 127.0.0.1`,
  );
}

/** Starts listening; when that fails, closes the data files and says why (the TLS pair, or the address). */
async function listenOrClose(server: TxkvServer, commitLog: CommitLog, config: Config): Promise<{ host: string; port: number }> {
  try {
    return server.start();
  } catch (err) {
    await commitLog.close();
    const reason = errorMessage(err);
    if (config.tls && /PEM|SSL|X509|KEY|CERT/i.test(reason)) {
      throw new StartupError(
        `cannot use the TLS certificate ${config.tls.certPath} with the key ${config.tls.keyPath} (--tls-cert, --tls-key): ${reason}`,
      );
    }
    throw new StartupError(`cannot listen on ${config.host}:${config.port}: ${listenFailure(err)}`);
  }
}

/** Why a listen failed, in words, for the errors a user can fix (Bun's own message names neither cause nor fix). */
function listenFailure(err: unknown): string {
  const reason = errorMessage(err);
  switch ((err as NodeJS.ErrnoException | null)?.code) {
    case "EADDRINUSE":
      return `the address is already in use (another server on that port?) (${reason})`;
    case "EADDRNOTAVAIL":
      return `no network interface of this machine has that address (${reason})`;
    case "EACCES":
      return `permission denied (ports below 1024 need privileges) (${reason})`;
    default:
      return reason;
  }
}

/** The metrics endpoint (--metrics-port); when it cannot listen, stops the server and closes the data files. */
async function startMetricsOrClose(
  executor: Executor,
  version: string,
  config: Config,
  server: TxkvServer,
  commitLog: CommitLog,
): Promise<{ server: MetricsServer; port: number }> {
  const metrics = new MetricsServer(executor, version);
  try {
    return { server: metrics, port: metrics.start(config.host, config.metricsPort!) };
  } catch (err) {
    server.stop();
    await commitLog.close();
    throw new StartupError(`cannot serve metrics on ${config.host}:${config.metricsPort}: ${listenFailure(err)}`);
  }
}

/** How long after the drain's timeout the final snapshot may still run. */
const FINAL_SNAPSHOT_GRACE_MS = 3000;

/**
 * The graceful shutdown: /health says so, open connections drain (their
 * transactions roll back) for up to timeoutMs, then the listener stops, the
 * data files are flushed, a final snapshot is written (when the data file is
 * behind) and they are closed, and the metrics endpoint goes last.
 */
async function shutDownInOrder(
  server: TxkvServer,
  commitLog: CommitLog,
  metrics: MetricsServer | null,
  stats: ServerStats,
  timeoutMs: number,
): Promise<ShutdownReport> {
  const startedAt = performance.now();
  // Before index.ts's own deadline (the timeout plus 5 s), so a long final snapshot is given up, not cut off.
  const finalSnapshotBy = Date.now() + timeoutMs + FINAL_SNAPSHOT_GRACE_MS;
  if (metrics) metrics.shuttingDown = true;
  const connectionsClosed = server.connectionCount;
  const rolledBackBefore = stats.txRolledBack;
  const connectionsForced = await server.drain(timeoutMs);
  server.stop();
  await commitLog.close(finalSnapshotBy);
  await metrics?.stop();
  return {
    connectionsClosed,
    connectionsForced,
    transactionsRolledBack: stats.txRolledBack - rolledBackBefore,
    ms: Math.round(performance.now() - startedAt),
  };
}

/** Reads a PEM file for TLS; a missing or unreadable file stops start-up with its name. */
function readPem(path: string, option: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    const reason = errorMessage(err);
    throw new StartupError(`cannot read the ${option} file ${path}: ${reason}`);
  }
}

interface OpenedState {
  commitLog: CommitLog;
  store: Store;
  keysLoaded: number;
  loadMs: number;
}

async function openState(config: Config, log: Logger): Promise<OpenedState> {
  if (config.inMemory) return { commitLog: new MemoryOnlyLog(), store: new Store(), keysLoaded: 0, loadMs: 0 };
  let opened;
  try {
    opened = await openPersistence(
      {
        path: config.dataPath,
        fsync: config.fsync,
        fsyncIntervalMs: config.fsyncIntervalMs,
        compactMinBytes: config.compactMinBytes,
        compactPercent: config.compactPercent,
      },
      log,
    );
  } catch (err) {
    throw new StartupError(errorMessage(err));
  }
  const store = new Store(opened.initial, opened.seq);
  opened.log.attach(store);
  log.info(`loaded ${opened.keysLoaded} keys in ${opened.loadMs} ms`, {
    data: config.dataPath,
    keys: opened.keysLoaded,
    ms: opened.loadMs,
    seq: opened.seq,
  });
  return { commitLog: opened.log, store, keysLoaded: opened.keysLoaded, loadMs: opened.loadMs };
}
