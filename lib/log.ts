/**
 * Structured logging: one JSON object per line on stderr.
 *
 * Owns: the log format (`{"time","level","msg",...fields}`), the level filter,
 * and storm suppression: events that can repeat without bound (refused
 * connections, connection errors, the HTTP guard) go through `limited()`,
 * which logs the first few of a kind per window and summarises the rest in
 * one line when the window ends.
 * Must not: write to stdout (stdout carries only the `listening on` line), or
 * throw — logging never takes the server down.
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogFields = Record<string, unknown>;

/** How many events of one kind are logged per window before the rest are only counted. */
export interface StormLimits {
  readonly windowMs: number;
  readonly burst: number;
}

const DEFAULT_STORM_LIMITS: StormLimits = { windowMs: 10_000, burst: 3 };

/** One kind of event inside its current window. */
interface Storm {
  readonly level: LogLevel;
  readonly msg: string;
  logged: number;
  suppressed: number;
  readonly timer: Timer;
}

export class Logger {
  private readonly minRank: number;
  private readonly storms = new Map<string, Storm>();

  constructor(
    level: LogLevel = "info",
    private readonly sink: (line: string) => void = (line) => process.stderr.write(line),
    private readonly stormLimits: StormLimits = DEFAULT_STORM_LIMITS,
  ) {
    this.minRank = RANK[level];
  }

  enabled(level: LogLevel): boolean {
    return RANK[level] >= this.minRank;
  }

  debug(msg: string, fields?: LogFields): void {
    this.write("debug", msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.write("info", msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.write("warn", msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.write("error", msg, fields);
  }

  /**
   * Logs an event that may come in a storm. Events with the same `key` are
   * one kind: the first `burst` of a window are logged as usual, the rest
   * only counted; when the window ends, one line says how many were
   * suppressed. The window starts with the first event of its kind.
   */
  limited(level: LogLevel, key: string, msg: string, fields?: LogFields): void {
    if (!this.enabled(level)) return;
    let storm = this.storms.get(key);
    if (storm === undefined) {
      const timer = setTimeout(() => this.endStorm(key), this.stormLimits.windowMs);
      timer.unref();
      storm = { level, msg, logged: 0, suppressed: 0, timer };
      this.storms.set(key, storm);
    }
    if (storm.logged < this.stormLimits.burst) {
      storm.logged++;
      this.write(level, msg, fields);
    } else {
      storm.suppressed++;
    }
  }

  /** Ends every open storm window now, writing its summary line (at shutdown). */
  flushSuppressed(): void {
    for (const key of [...this.storms.keys()]) this.endStorm(key);
  }

  private endStorm(key: string): void {
    const storm = this.storms.get(key);
    if (storm === undefined) return;
    clearTimeout(storm.timer);
    this.storms.delete(key);
    if (storm.suppressed === 0) return;
    this.write(storm.level, `${storm.msg}: ${storm.suppressed} similar events suppressed`, {
      event: key,
      suppressed: storm.suppressed,
      window_ms: this.stormLimits.windowMs,
    });
  }

  private write(level: LogLevel, msg: string, fields?: LogFields): void {
    if (RANK[level] < this.minRank) return;
    try {
      // time, level and msg come first in every line, and a field of the same name cannot replace them.
      const head = { time: new Date().toISOString(), level, msg };
      const entry = { ...head, ...fields, ...head };
      this.sink(JSON.stringify(entry, errorReplacer) + "\n");
    } catch {
      // A log line that cannot be written or encoded is dropped, never thrown.
    }
  }
}

/** Errors serialise as their message (JSON.stringify would give `{}`). */
function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) return value.message;
  if (typeof value === "bigint") return value.toString();
  return value;
}
