/**
 * Counters behind STATS and the /metrics endpoint.
 *
 * Owns: counting commands, error replies by code, transactions and
 * connections; the ops/s estimate over the last seconds.
 * Must not: know about sockets or the disk; it only counts what it is told.
 */
import type { ErrorCode } from "./replies.ts";

const OPS_WINDOW_SECONDS = 5;

export class ServerStats {
  readonly startedAt = Date.now();
  commands = 0;
  readonly commandsByType: Record<string, number> = Object.create(null);
  readonly errorsByCode: Record<string, number> = Object.create(null);
  connectionsCurrent = 0;
  connectionsTotal = 0;
  connectionsRejected = 0;
  txCommitted = 0;
  txRolledBack = 0;
  txConflicted = 0;
  txAborted = 0;
  txOpen = 0;
  /** Bytes buffered for clients (set by the server, which owns the buffers). */
  clientBufferBytes: () => number = () => 0;
  /** Command counts at each of the last seconds' ticks, newest last. */
  private readonly samples: number[] = [];

  countCommand(type: string): void {
    this.commands++;
    this.commandsByType[type] = (this.commandsByType[type] ?? 0) + 1;
  }

  countError(code: ErrorCode): void {
    this.errorsByCode[code] = (this.errorsByCode[code] ?? 0) + 1;
  }

  /** Called once a second by the server. */
  tick(): void {
    this.samples.push(this.commands);
    if (this.samples.length > OPS_WINDOW_SECONDS + 1) this.samples.shift();
  }

  /** Commands per second over the last OPS_WINDOW_SECONDS ticks (fewer, since the first, until there are that many). */
  opsPerSecond(): number {
    if (this.samples.length < 2) return 0;
    const first = this.samples[0]!;
    const last = this.samples[this.samples.length - 1]!;
    return Math.round((last - first) / (this.samples.length - 1));
  }

  uptimeSeconds(): number {
    return Math.floor((Date.now() - this.startedAt) / 1000);
  }
}
