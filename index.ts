#!/usr/bin/env bun
/**
 * txkv's entry point: `txkv` serves, `txkv cli` and `txkv bench` are the
 * client tools. Parses the configuration, starts the server, prints the
 * `listening on host:port` line (and `metrics on host:port` before it when
 * the metrics endpoint is on), and maps SIGINT/SIGTERM to the graceful
 * shutdown (lib/signals.ts: exit 0 when it completes, 128+signal on a
 * second signal, 1 when it fails or overruns its hard deadline; SIGHUP
 * logged and ignored).
 * Must not: hold protocol or storage logic (lib/ does).
 */
import pkg from "./package.json" with { type: "json" };
import { startServer, StartupError, type RunningServer } from "./lib/app.ts";
import { ConfigError, parseConfig, type Config } from "./lib/config.ts";
import { formatAddress } from "./lib/address.ts";
import { Logger } from "./lib/log.ts";
import { ShutdownOnSignal } from "./lib/signals.ts";

/**
 * The log's sink: stderr, until a write there fails (its reader went away:
 * `| head`, a log shipper restarting). The EPIPE comes as an 'error' event
 * that would end the process, dropping every connection; the server goes on
 * without its log instead, as Redis does.
 */
function stderrUntilItsReaderLeaves(): (line: string) => void {
  let readerGone = false;
  process.stderr.on("error", () => {
    readerGone = true;
  });
  return (line) => {
    if (!readerGone) process.stderr.write(line);
  };
}

async function serve(argv: string[]): Promise<void> {
  const config = configOrExit(argv);
  if (config === null) return;
  const log = new Logger(config.logLevel, stderrUntilItsReaderLeaves());
  // Before anything is opened, so that a SIGTERM during start-up (or right after
  // the listening line) is a graceful stop, not Bun's default of dying at once.
  const signals = new ShutdownOnSignal(config, log, (code) => process.exit(code));
  signals.listen();
  const running = await startOrExit(config, log);
  announce(running, config, log);
  signals.serverIsUp(running);
}

/** The configuration to serve with; null when --help or --version was answered. Exits 2 on a bad option. */
function configOrExit(argv: string[]): Config | null {
  let parsed;
  try {
    parsed = parseConfig(argv, process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`txkv: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  if (parsed.kind === "help") {
    process.stdout.write(parsed.text);
    return null;
  }
  if (parsed.kind === "version") {
    process.stdout.write(`txkv ${pkg.version}\n`);
    return null;
  }
  return parsed.config;
}

/** The running server; exits 1 with the reason when it cannot start (data files, lock, port). */
async function startOrExit(config: Config, log: Logger): Promise<RunningServer> {
  try {
    return await startServer(config, pkg.version, log);
  } catch (err) {
    if (err instanceof StartupError) {
      log.error(err.message);
      process.stderr.write(`txkv: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
}

/**
 * The stdout lines (`metrics on`, then `listening on`) and the log line that
 * say the server is up. The stdout line comes first, and the log line does
 * not repeat its words: the contract's "one line containing `listening on
 * <host>:<port>`" is then the only one, also for a reader of stdout and
 * stderr together (a greedy `listening on (\S+):(\d+)` over the JSON log
 * line read its "pid" as the port).
 */
function announce(running: RunningServer, config: Config, log: Logger): void {
  // An IPv6 address in brackets ([::1]:8080), as URLs and the cli write it: the port stays the text after the last colon.
  const address = formatAddress(running.host, running.port);
  const metricsAddress = running.metricsPort === null ? null : formatAddress(running.host, running.metricsPort);
  // A reader that already went away (`| head -0`) makes these writes fail with EPIPE, reported as an
  // 'error' event that would otherwise end the process: the server goes on (the log line below still
  // says it is up), as it does when the reader leaves after reading.
  process.stdout.on("error", (err: Error) => log.warn("stdout is closed: the start-up line was not written", { reason: err.message }));
  if (metricsAddress !== null) process.stdout.write(`txkv ${pkg.version} metrics on ${metricsAddress}\n`);
  process.stdout.write(`txkv ${pkg.version} listening on ${address}\n`);
  log.info("ready to accept connections", {
    version: pkg.version,
    address,
    data: config.inMemory ? null : config.dataPath,
    durability: config.inMemory ? "in-memory" : config.fsync,
    keys_loaded: running.keysLoaded,
    load_ms: running.loadMs,
    metrics: metricsAddress,
    pid: process.pid,
    tls: config.tls !== undefined,
  });
}

/**
 * A client tool is done: exit once stdout has taken its output. Not by
 * letting the loop run dry: a connect abandoned at its timeout or by Ctrl-C
 * cannot be cancelled (Bun.connect) and would hold the process until the
 * kernel gives up on it, minutes later against a host that drops packets.
 */
async function exitWhenFlushed(code: number): Promise<never> {
  const { stdoutFlushed } = await import("./lib/stdout.ts");
  await stdoutFlushed();
  process.exit(code);
}

/** `txkv cli …` and `txkv bench …` are the client tools; anything else serves. */
async function main(argv: string[]): Promise<void> {
  const [job, ...rest] = argv;
  if (job === "cli") {
    const { runCli } = await import("./lib/cli.ts");
    await exitWhenFlushed(await runCli(rest));
  } else if (job === "bench") {
    const { runBench } = await import("./lib/bench.ts");
    await exitWhenFlushed(await runBench(rest));
  } else {
    await serve(argv);
  }
}

await main(process.argv.slice(2));
