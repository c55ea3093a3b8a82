/**
 * What SIGINT, SIGTERM and SIGHUP do to a serving process.
 *
 * Owns: the first SIGINT/SIGTERM starting the graceful shutdown (once the
 * server is up, when it came during start-up: the data files are open by
 * then), a second one exiting at once with 128 + the signal number, the
 * hard deadline (the drain timeout plus a flush grace) past which the
 * process exits 1 anyway, and SIGHUP logged and ignored.
 * Must not: shut anything down itself (RunningServer.shutdown does), or
 * exit other than through the `exit` it is given (index.ts passes
 * process.exit; tests pass a recorder).
 */
import { constants } from "node:os";
import type { RunningServer } from "./app.ts";
import type { Logger } from "./log.ts";

/** After the drain timeout, flushing gets this long before the process exits anyway. */
export const FLUSH_GRACE_MS = 5000;

export interface ShutdownTiming {
  readonly shutdownTimeoutMs: number;
  /** FLUSH_GRACE_MS unless a test shortens it. */
  readonly flushGraceMs?: number;
}

export class ShutdownOnSignal {
  private running: RunningServer | null = null;
  private signalWhileStarting: NodeJS.Signals | null = null;
  private signals = 0;

  constructor(
    private readonly timing: ShutdownTiming,
    private readonly log: Logger,
    private readonly exitProcess: (code: number) => void,
  ) {}

  /** Routes the process's signals here: before anything is opened, so that a SIGTERM during start-up is a graceful stop. */
  listen(): void {
    process.on("SIGINT", (signal) => this.onSignal(signal));
    process.on("SIGTERM", (signal) => this.onSignal(signal));
    // As Redis does: there is no configuration to reload, and a closed terminal must not kill the
    // server without its flush (SIGHUP's default action would, losing up to a second under everysec).
    process.on("SIGHUP", () => this.log.warn("SIGHUP ignored: txkv has nothing to reload (SIGTERM stops it)"));
  }

  serverIsUp(running: RunningServer): void {
    this.running = running;
    if (this.signalWhileStarting !== null) this.shutDown(running, this.signalWhileStarting);
  }

  onSignal(signal: NodeJS.Signals): void {
    this.signals++;
    if (this.signals > 1) {
      // Shell convention for "terminated by a signal": the supervisor sees that no clean shutdown happened.
      this.log.warn("second signal: exiting at once, without waiting for the shutdown", { signal });
      this.exit(128 + (constants.signals[signal] ?? 15));
      return;
    }
    if (this.running === null) this.signalWhileStarting = signal;
    else this.shutDown(this.running, signal);
  }

  private shutDown(server: RunningServer, signal: NodeJS.Signals): void {
    const { log } = this;
    const { shutdownTimeoutMs, flushGraceMs = FLUSH_GRACE_MS } = this.timing;
    log.info("shutting down", { signal, timeout_ms: shutdownTimeoutMs });
    setTimeout(() => {
      log.error("shutdown did not finish in time: exiting without it", { deadline_ms: shutdownTimeoutMs + flushGraceMs });
      this.exit(1);
    }, shutdownTimeoutMs + flushGraceMs).unref();
    server.shutdown().then(
      (report) => {
        log.flushSuppressed();
        log.info("stopped", {
          ms: report.ms,
          connections_closed: report.connectionsClosed,
          connections_forced: report.connectionsForced,
          transactions_rolled_back: report.transactionsRolledBack,
        });
        this.exit(0);
      },
      (err) => {
        log.error("shutdown failed", { reason: err });
        this.exit(1);
      },
    );
  }

  private exit(code: number): void {
    this.log.flushSuppressed();
    this.exitProcess(code);
  }
}
