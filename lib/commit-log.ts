/**
 * The seam between the executor and durability.
 *
 * Owns: the `CommitLog` interface that every commit goes through, the
 * shapes of what it carries (EncodedValue, CommitOp, CommitRecord, and
 * asciiPutsRecord for PUTs given as bytes), and the no-op log used by
 * `--in-memory`. The journal/snapshot implementation lives
 * in `lib/persistence/`; the executor only ever sees this interface.
 * Must not: touch sockets or the disk.
 */
import type { AsciiEntry } from "./compact-map.ts";
import { latin1Text } from "./text.ts";

/** A stored value: the JSON text of the value (already encoded once, at write time). */
export type EncodedValue = string;

/** One change of a commit: `[key, encodedValue]` for a put, `[key, null]` for a delete. */
export type CommitOp = readonly [key: string, value: EncodedValue | null];

/** One committed transaction (or one auto-committed PUT/DEL): all or nothing, in commit order. */
export interface CommitRecord {
  readonly seq: number;
  readonly ops: readonly CommitOp[];
}

export interface CommitLog {
  /** False for `--in-memory`: the executor may skip building records. */
  readonly enabled: boolean;
  /**
   * Why writes must be refused right now (disk full, directory gone, ...),
   * or null when the log accepts writes. Writes then answer `PERSISTENCE`.
   */
  readonly unavailableReason: string | null;
  /**
   * Record one commit. Called synchronously, in commit order, right after the
   * store applied it. Returns the seq the Ok reply must wait for (fsync
   * `always`), or 0 when the reply may leave at once.
   */
  append(record: CommitRecord): number;
  /**
   * append() of a commit whose changes are all PUTs given as bytes,
   * entries[0, count) (the server's fast path: an auto-committed PUT, or a
   * transaction of them): keys and encoded values that need no JSON escaping.
   */
  appendAsciiPuts(seq: number, entries: readonly AsciiEntry[], count: number): number;
  /** The server subscribes here: called with the highest seq now durable. */
  onDurable: ((durableSeq: number) => void) | null;
  /** SAVE: compact now; resolves when the snapshot is durable. Rejects with the reason on failure. */
  save(): Promise<void>;
  /**
   * Flushes and fsyncs everything, releases the lock. finalSnapshotBy: the
   * server's graceful stop, which also writes a final snapshot when the data
   * file is behind the journal, given up at this time (ms since the epoch).
   */
  close(finalSnapshotBy?: number): Promise<void>;
  /** Persistence fields for STATS. */
  stats(): Record<string, unknown>;
}

/** The CommitRecord of an appendAsciiPuts() call, for logs that work with records. */
export function asciiPutsRecord(seq: number, entries: readonly AsciiEntry[], count: number): CommitRecord {
  const ops: CommitOp[] = [];
  for (let i = 0; i < count; i++) {
    const entry = entries[i]!;
    ops.push([latin1Text(entry.keySrc, entry.keyStart, entry.keyEnd), latin1Text(entry.valueSrc, entry.valueStart, entry.valueEnd)]);
  }
  return { seq, ops };
}

/** `--in-memory`: nothing is written, every reply may leave at once. */
export class MemoryOnlyLog implements CommitLog {
  readonly enabled: boolean = false;
  readonly unavailableReason = null;
  onDurable: ((durableSeq: number) => void) | null = null;
  append(_record: CommitRecord): number {
    return 0;
  }
  /** Through append(), so that a subclass recording append() sees these too. */
  appendAsciiPuts(seq: number, entries: readonly AsciiEntry[], count: number): number {
    return this.append(asciiPutsRecord(seq, entries, count));
  }
  save(): Promise<void> {
    return Promise.reject(new Error("persistence is off (--in-memory): nothing to save"));
  }
  async close(): Promise<void> {}
  stats(): Record<string, unknown> {
    return { mode: "in-memory" };
  }
}
