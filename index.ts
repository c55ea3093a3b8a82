/**
 * txkv's entry point: `txkv` serves, `txkv cli` and `txkv bench` are the
 * client tools. Parses the configuration, starts the server, prints the
 * `listening on host:port` line, and handles SIGINT/SIGTERM.
 * Must not: hold protocol or storage logic (lib/ does).
 */
import pkg from "./package.json" with { type: "json" };
import { startServer, StartupError } from "./lib/app.ts";
import { ConfigError, parseConfig } from "./lib/config.ts";
import { Logger } from "./lib/log.ts";

async function serve(argv: string[]): Promise<void> {
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
    return;
  }
  if (parsed.kind === "version") {
    process.stdout.write(`txkv ${pkg.version}\n`);
    return;
  }
  const config = parsed.config;
  const log = new Logger(config.logLevel);
  let running;
  try {
    running = await startServer(config, pkg.version, log);
  } catch (err) {
    if (err instanceof StartupError) {
      log.error(err.message);
      process.stderr.write(`txkv: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const address = `${running.host}:${running.port}`;
  log.info(`listening on ${address}`, {
    version: pkg.version,
    durability: config.inMemory ? "in-memory" : config.fsync,
    data: config.inMemory ? null : config.dataPath,
    tls: config.tls !== undefined,
  });
  process.stdout.write(`txkv ${pkg.version} listening on ${address}\n`);

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals++;
    if (signals > 1) {
      log.warn("second signal: exiting at once", { signal });
      process.exit(1);
    }
    log.info("shutting down", { signal });
    running.shutdown().then(
      () => {
        log.info("stopped");
        process.exit(0);
      },
      (err) => {
        log.error("shutdown failed", { error: err });
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
}

await serve(process.argv.slice(2));
