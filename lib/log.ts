/**
 * Structured logging: one JSON object per line on stderr.
 *
 * Owns: the log format (`{"time","level","msg",...fields}`), the level filter.
 * Must not: write to stdout (stdout carries only the `listening on` line), or
 * throw — logging never takes the server down.
 */

export type LogLevel = "debug" | "info" | "warn" | "error";
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogFields = Record<string, unknown>;

export class Logger {
  private minRank: number;

  constructor(
    level: LogLevel = "info",
    private readonly sink: (line: string) => void = (line) => process.stderr.write(line),
  ) {
    this.minRank = RANK[level];
  }

  setLevel(level: LogLevel): void {
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

  private write(level: LogLevel, msg: string, fields?: LogFields): void {
    if (RANK[level] < this.minRank) return;
    try {
      const entry = { time: new Date().toISOString(), level, msg, ...fields };
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
