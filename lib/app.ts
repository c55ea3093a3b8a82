/**
 * Assembly and lifecycle of a serving txkv process.
 *
 * Owns: building the store, commit log, executor and server from a Config;
 * protected mode; the start-up and shutdown sequence (signals).
 * Must not: parse arguments (config.ts) or implement commands (execute.ts).
 */
import { MemoryOnlyLog, type CommitLog } from "./commit-log.ts";
import type { Config } from "./config.ts";
import { Executor } from "./execute.ts";
import type { Logger } from "./log.ts";
import { openPersistence } from "./persistence/index.ts";
import { TxkvServer } from "./server.ts";
import { ServerStats } from "./stats.ts";
import { Store } from "./store.ts";

export class StartupError extends Error {}

export interface RunningServer {
  readonly host: string;
  readonly port: number;
  readonly server: TxkvServer;
  readonly executor: Executor;
  /** Graceful stop: stop accepting, close connections, flush and fsync, release the data file. */
  shutdown(): Promise<void>;
}

/** True for addresses only this machine can reach. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase();
  return h === "localhost" || h === "::1" || h === "[::1]" || /^127(\.\d{1,3}){3}$/.test(h);
}

export async function startServer(config: Config, version: string, log: Logger): Promise<RunningServer> {
  if (!isLoopback(config.host) && config.password === undefined) {
    throw new StartupError(
      `refusing to listen on ${config.host} without a password (protected mode): ` +
        `set one with --password <pw> or TXKV_PASSWORD, or bind to 127.0.0.1`,
    );
  }
  const { commitLog, store } = await openState(config, log);
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
      maxConnections: config.maxConnections,
      maxRequestBytes: config.maxRequestBytes,
      maxOutputBytes: config.maxOutputBytes,
      partialRequestMs: config.partialRequestMs,
      password: config.password,
    },
    executor,
    log,
  );
  let address: { host: string; port: number };
  try {
    address = server.start();
  } catch (err) {
    await commitLog.close();
    throw new StartupError(`cannot listen on ${config.host}:${config.port}: ${err instanceof Error ? err.message : err}`);
  }
  let stopping: Promise<void> | null = null;
  return {
    ...address,
    server,
    executor,
    shutdown() {
      stopping ??= (async () => {
        server.stop();
        await commitLog.close();
      })();
      return stopping;
    },
  };
}

async function openState(config: Config, log: Logger): Promise<{ commitLog: CommitLog; store: Store }> {
  if (config.inMemory) return { commitLog: new MemoryOnlyLog(), store: new Store() };
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
    throw new StartupError(err instanceof Error ? err.message : String(err));
  }
  const store = new Store(opened.initial, opened.seq);
  opened.log.attach(store);
  log.info(`loaded ${opened.keysLoaded} keys in ${opened.loadMs} ms`, {
    data: config.dataPath,
    keys: opened.keysLoaded,
    ms: opened.loadMs,
    seq: opened.seq,
  });
  return { commitLog: opened.log, store };
}
