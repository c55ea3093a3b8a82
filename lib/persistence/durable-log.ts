/**
 * The durable CommitLog: an append-only journal with group commit, fsync
 * policy, incremental compaction into the snapshot, and failure handling.
 *
 * Flow of a commit: `append` encodes the record (cost follows the change, not
 * the data) and queues it; once per event-loop turn the queue is written with
 * one `write`; fsyncs run on the thread pool in "rounds", one at a time, each
 * covering everything written before it started (group commit), and report
 * the highest durable seq through `onDurable`. Under `always`, the common
 * case skips the round: the turn's write is fdatasynced on the loop, after
 * one more pass of the loop has let commits already on their way join it.
 *
 * Failures (disk full, read-only, data directory removed, fsync error) make
 * `unavailableReason` non-null so the executor refuses writes; records already
 * accepted stay queued in order. A timer retries: when the journal file is
 * still trustworthy (a write was refused, nothing else) the queue is simply
 * written again; otherwise a fresh snapshot of memory and a new journal are
 * written, which covers every accepted record.
 *
 * Owns: the journal file handles, when to fsync, when to compact, the
 * persistence state shown by STATS. Must not: touch the store (it only reads
 * the attached view) or sockets.
 */
import fs from "node:fs";
import type { FileHandle } from "node:fs/promises";
import type { CommitLog, CommitRecord } from "../commit-log.ts";
import type { AsciiEntry } from "../compact-map.ts";
import type { Logger } from "../log.ts";
import { fsyncDir, removeFile, removeFileInBackground, stillAtPath, type DataFiles } from "./files.ts";
import { ByteBuffer } from "../byte-buffer.ts";
import { encodeRecord, writeAsciiPutsRecord } from "./journal-format.ts";
import { acquireLock, holdsLock, PID_ONLY_LOCK_WARNING, releaseLock } from "./lock.ts";
import { writeSnapshot } from "./snapshot-writer.ts";
import { errorMessage, asError } from "../errors.ts";

export type FsyncMode = "always" | "everysec" | "no";

/** A read-only view of the live store, used to write snapshots. */
export interface StoreView {
  entries(): IterableIterator<[string, string]>;
  readonly size: number;
  readonly seq: number;
}

export interface DurableLogOptions {
  readonly fsync: FsyncMode;
  /** everysec: fsync period. Also the period of the "is the data directory still there" check. */
  readonly fsyncIntervalMs: number;
  /** Compact when the journal is larger than both this and `compactPercent` % of the snapshot. */
  readonly compactMinBytes: number;
  readonly compactPercent: number;
  /** Delay between attempts to resume after a failure. */
  readonly retryMs: number;
  /** Longest event-loop hold of one snapshot slice. */
  readonly sliceMs: number;
}

/** An open journal file: appended with writeSync on `fd`, fsynced through `handle` on the thread pool. */
interface JournalFile {
  readonly gen: number;
  readonly path: string;
  readonly handle: FileHandle;
  bytes: number;
}

interface InitialDiskState {
  readonly journal: JournalFile;
  /** True when the journal file was just created (its directory entry is not durable yet). */
  readonly journalCreated: boolean;
  readonly seq: number;
  readonly snapshotSeq: number;
  readonly snapshotBytes: number;
}

interface Waiter {
  resolve(): void;
  reject(err: Error): void;
}

interface Failure {
  readonly reason: string;
  /** The journal file is intact and still in place: writing the queue again is enough to resume. */
  readonly journalIntact: boolean;
}

/** An error already described by `fail` (its message is the reason shown to clients). */
class PersistenceFailure extends Error {}

/** Write errors after which the bytes simply were not written: retrying the same file is safe. */
const RETRYABLE_WRITE_ERRORS = new Set(["ENOSPC", "EDQUOT", "EROFS", "EAGAIN", "EINTR"]);

/** While a write error repeats on a journal that looks intact, every Nth retry rebuilds instead. */
const REBUILD_EVERY_ATTEMPTS = 10;

/**
 * How long a shutdown keeps retrying a failed disk before it gives up (exit
 * 1): under index.ts's grace of 5 s after the drain, so the reason is ours.
 */
const CLOSE_RETRY_MS = 4000;

/** How long auto-compaction waits after a failed compaction before trying again. */
const COMPACTION_RETRY_MS = 30_000;

export class DurableLog implements CommitLog {
  readonly enabled = true;
  onDurable: ((durableSeq: number) => void) | null = null;

  private view: StoreView | null = null;
  private journal: JournalFile;
  /** Journals replaced by a compaction, fsynced and closed by the next sync round. */
  private retired: JournalFile[] = [];
  /** A journal file was created: the next sync round also fsyncs the directory. */
  private directoryDirty: boolean;

  /** Encoded records not yet written (also the rest of a write that stopped part way), as bytes. */
  private readonly unwritten = new ByteBuffer();
  private lastAppendedSeq: number;
  private writtenSeq: number;
  private durableSeq: number;
  private appendedRecords = 0;
  private writtenRecords = 0;
  private durableRecords = 0;

  private flushScheduled = false;
  /** always: this turn's flush has already let the loop take its one more look at the sockets. */
  private lookedAgain = false;
  private readonly runFlushTurn = () => this.flushTurn();
  /** fdatasyncs of the journal that succeeded (STATS: commits per fsync is the group commit's yield). */
  private fsyncs = 0;
  /** The running loop of fsync rounds, or null when none runs. */
  private syncLoop: Promise<void> | null = null;
  private syncWanted = false;
  private syncWaiters: Waiter[] = [];

  private failure: Failure | null = null;
  private resuming: Promise<void> | null = null;
  private resumeAttempts = 0;
  /** The journal opened by a rebuild that has not completed yet (see rebuild). */
  private failedRebuildJournal: JournalFile | null = null;
  private compaction: Promise<void> | null = null;
  private nextAutoCompactionAt = 0;
  private closing = false;
  private closed = false;

  private snapshotSeq: number;
  private snapshotBytes: number;
  private lastFlushAt: Date | null = null;
  /** Date.now() of the last journal write (a number: this is set once per event-loop turn). */
  private lastWriteAt = 0;
  private lastError: { at: string; message: string } | null = null;
  private lastCompaction: {
    at: string;
    ms: number;
    keys: number;
    bytes: number;
    seq: number;
    slices: number;
    longestSliceMs: number;
  } | null = null;

  private readonly tickTimer: ReturnType<typeof setInterval>;
  private retryTimer: ReturnType<typeof setInterval> | null = null;
  /** The journal this process created at start, when no journal existed (removed at close if it stayed unused). */
  private readonly createdJournal: JournalFile | null;

  constructor(
    private readonly files: DataFiles,
    private readonly opts: DurableLogOptions,
    private readonly log: Logger,
    initial: InitialDiskState,
  ) {
    this.journal = initial.journal;
    this.directoryDirty = initial.journalCreated;
    this.createdJournal = initial.journalCreated ? initial.journal : null;
    this.lastAppendedSeq = this.writtenSeq = this.durableSeq = initial.seq;
    this.snapshotSeq = initial.snapshotSeq;
    this.snapshotBytes = initial.snapshotBytes;
    this.tickTimer = setInterval(() => this.tick(), opts.fsyncIntervalMs);
    this.tickTimer.unref();
  }

  get unavailableReason(): string | null {
    return this.failure?.reason ?? null;
  }

  /** Hands over the live store, read by compactions. */
  attach(view: StoreView): void {
    this.view = view;
  }

  append(record: CommitRecord): number {
    this.unwritten.text(encodeRecord(record));
    return this.appended(record.seq);
  }

  appendAsciiPuts(seq: number, entries: readonly AsciiEntry[], count: number): number {
    writeAsciiPutsRecord(this.unwritten, seq, entries, count);
    return this.appended(seq);
  }

  /** A record was queued: schedules this turn's write; returns the seq the reply must wait for, or 0. */
  private appended(seq: number): number {
    this.lastAppendedSeq = seq;
    this.appendedRecords++;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.runFlushTurn);
    }
    return this.opts.fsync === "always" ? seq : 0;
  }

  save(): Promise<void> {
    return this.compaction ?? this.startCompaction("SAVE");
  }

  async close(finalSnapshotBy?: number): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    clearInterval(this.tickTimer);
    if (this.compaction) await this.compaction.catch(() => {});
    if (this.resuming) await this.resuming;
    if (this.retryTimer) clearInterval(this.retryTimer);
    try {
      await this.flushBeforeExit();
    } catch (err) {
      // Nothing more will be written: let go of the files (the lock stays, a dead pid's, for the next start to take).
      this.closed = true;
      await this.closeJournalHandles();
      throw err;
    }
    if (finalSnapshotBy !== undefined) await this.snapshotAtShutdown(finalSnapshotBy);
    this.closed = true;
    if (this.syncLoop) await this.syncLoop;
    await this.closeJournalHandles();
    // A start that failed (a port in use, say) leaves the directory as it found it.
    if (this.journal === this.createdJournal && this.journal.bytes === 0 && this.appendedRecords === 0) {
      removeFile(this.journal.path);
    }
    releaseLock(this.files.lock);
  }

  /**
   * Closes the current journal and any retired one (a final snapshot that failed after its switch leaves the
   * old journal retired, its records already synced): a handle left to the garbage collector ends the process.
   */
  private async closeJournalHandles(): Promise<void> {
    await this.journal.handle.close().catch(() => {});
    await this.closeRetiredJournals();
  }

  /**
   * Makes every record appended so far durable. A failure, known before the
   * shutdown or met by this last flush, is retried for a while: a disk that
   * was full a moment ago may have room again, a failed fsync is undone by a
   * rebuild, and under everysec and no the records waiting here were already
   * acknowledged. Throws once CLOSE_RETRY_MS have passed without success.
   */
  private async flushBeforeExit(): Promise<void> {
    const giveUpAt = Date.now() + CLOSE_RETRY_MS;
    for (;;) {
      if (this.failure === null) {
        try {
          await this.sync();
          return;
        } catch (err) {
          // A failed round has entered the failed state (fail()): retried below. Anything else is not the disk's.
          if (this.failure === null) throw err;
        }
      }
      if (Date.now() >= giveUpAt) throw new Error(`could not flush the journal before exit: ${this.failure.reason}`);
      await this.tryResume();
      if (this.failure !== null) await Bun.sleep(this.opts.retryMs);
    }
  }

  stats(): Record<string, unknown> {
    return {
      mode: this.opts.fsync,
      fsyncIntervalMs: this.opts.fsyncIntervalMs,
      dataFile: this.files.snapshot,
      available: this.failure === null,
      unavailableReason: this.failure?.reason ?? null,
      lastSuccessfulFlush: this.lastFlushAt?.toISOString() ?? null,
      lastJournalWrite: this.lastWriteAt === 0 ? null : new Date(this.lastWriteAt).toISOString(),
      pendingRecords: this.appendedRecords - this.durableRecords,
      fsyncs: this.fsyncs,
      lastSeq: this.lastAppendedSeq,
      durableSeq: this.durableSeq,
      journalFile: this.journal.path,
      journalBytes: this.journal.bytes,
      snapshotBytes: this.snapshotBytes,
      snapshotSeq: this.snapshotSeq,
      compacting: this.compaction !== null,
      compactMinBytes: this.opts.compactMinBytes,
      compactPercent: this.opts.compactPercent,
      lastCompaction: this.lastCompaction,
      lastError: this.lastError,
    };
  }

  // ---- writing and group commit -------------------------------------------------------------

  /**
   * Once per event-loop turn: one write for every record of the turn, then
   * (always) an fsync round.
   *
   * Under `always` the flush first waits one pass of the loop (a second
   * setImmediate: the loop polls the sockets without blocking in between).
   * With many clients, requests reach other sockets while this turn's are
   * executed; without the extra look they would wait for the next fsync, a
   * whole fsync later. With it they share this one: 33 → 44 commits per
   * fsync for 50 clients sending PUTs, and more throughput (BENCHMARKS item
   * 19). One look only: 2 to 32 looks gathered no more (41-47), and under a
   * steady stream each would add latency. Its cost when idle is one loop
   * pass, a few µs beside a 100-200 µs fsync.
   */
  private flushTurn(): void {
    if (this.opts.fsync === "always" && !this.lookedAgain) {
      this.lookedAgain = true;
      setImmediate(this.runFlushTurn);
      return;
    }
    this.lookedAgain = false;
    this.flushScheduled = false;
    if (this.failure || this.closed) return;
    try {
      this.writeQueue();
    } catch (err) {
      this.fail(err, writeErrorLeavesJournalIntact(err));
      return;
    }
    if (this.opts.fsync === "always" && !this.syncNow()) this.requestSyncRound();
    this.maybeAutoCompact();
  }

  /**
   * --fsync always, in the common case (no round running, nothing retired,
   * the directory clean): fdatasync right here, as Redis does, so the
   * replies leave in this same turn instead of waiting for a thread-pool
   * round to be noticed by a busy event loop. Returns false when the full
   * asynchronous round must do it. A failed fsync is a failure here too: on
   * Linux the next fsync may "succeed" without the lost pages, so retrying
   * it in a round would acknowledge writes that are not on disk.
   */
  private syncNow(): boolean {
    if (this.syncLoop !== null || this.retired.length > 0 || this.directoryDirty || this.failure) return false;
    const journal = this.journal;
    try {
      fs.fdatasyncSync(journal.handle.fd);
    } catch (err) {
      this.fail(err, false);
      return true;
    }
    this.fsyncs++;
    if (!stillAtPath(journal.handle.fd, journal.path, journal.bytes)) return false;
    this.markDurable(this.writtenSeq, this.writtenRecords);
    return true;
  }

  /** Writes queued records to the journal in one go. Throws on a write error, keeping what was not written. */
  private writeQueue(): void {
    const buf = this.unwritten;
    if (buf.length === 0) return;
    const seq = this.lastAppendedSeq;
    const records = this.appendedRecords;
    let offset = 0;
    try {
      while (offset < buf.length) offset += fs.writeSync(this.journal.handle.fd, buf.bytes, offset, buf.length - offset);
    } finally {
      this.journal.bytes += offset;
      buf.dropFront(offset);
    }
    this.writtenSeq = seq;
    this.writtenRecords = records;
    this.lastWriteAt = Date.now();
  }

  /** Everything appended before the call becomes durable (or the promise rejects with the failure). */
  private sync(): Promise<void> {
    const done = new Promise<void>((resolve, reject) => this.syncWaiters.push({ resolve, reject }));
    this.requestSyncRound();
    return done;
  }

  private requestSyncRound(): void {
    this.syncWanted = true;
    // Started from a microtask so that `syncLoop` is set before the loop can end and clear it.
    this.syncLoop ??= Promise.resolve().then(() => this.runSyncRounds());
  }

  /** Runs fsync rounds one after the other while some are wanted; each covers all writes before it. */
  private async runSyncRounds(): Promise<void> {
    while (this.syncWanted) {
      this.syncWanted = false;
      const waiters = this.syncWaiters;
      this.syncWaiters = [];
      try {
        await this.syncRound();
        for (const waiter of waiters) waiter.resolve();
      } catch (err) {
        const error = asError(err);
        for (const waiter of [...waiters, ...this.syncWaiters]) waiter.reject(error);
        this.syncWaiters = [];
        this.syncWanted = false;
      }
    }
    // Same synchronous step as the last check of syncWanted: a later request starts a new loop.
    this.syncLoop = null;
  }

  private async syncRound(): Promise<void> {
    // After an fsync error or a removed file, a later fsync "succeeding" proves nothing.
    if (this.failure && !this.failure.journalIntact) throw new PersistenceFailure(this.failure.reason);
    try {
      this.writeQueue();
    } catch (err) {
      throw this.fail(err, writeErrorLeavesJournalIntact(err));
    }
    const seq = this.writtenSeq;
    const records = this.writtenRecords;
    const journal = this.journal;
    const retired = this.retired;
    this.retired = [];
    const syncDirectory = this.directoryDirty;
    this.directoryDirty = false;
    try {
      for (const old of retired) {
        await old.handle.datasync();
        await old.handle.close();
      }
      await journal.handle.datasync();
      this.fsyncs++;
      if (syncDirectory) await fsyncDir(this.files.dir);
    } catch (err) {
      this.directoryDirty ||= syncDirectory;
      for (const old of retired) await old.handle.close().catch(() => {});
      throw this.fail(err, false);
    }
    if (!stillAtPath(journal.handle.fd, journal.path, journal.bytes)) throw this.fail(journalLost(journal), false);
    this.markDurable(seq, records);
  }

  /** Everything through seq (records appended so far) is on disk: tell the server, whose held replies wait for it. */
  private markDurable(seq: number, records: number): void {
    this.lastFlushAt = new Date();
    if (seq <= this.durableSeq) return;
    this.durableSeq = seq;
    this.durableRecords = records;
    this.onDurable?.(seq);
  }

  /** Periodic: everysec fsync, and in every mode the check that the journal is still on disk. */
  private tick(): void {
    if (this.failure || this.closing) return;
    if (!stillAtPath(this.journal.handle.fd, this.journal.path, this.journal.bytes)) {
      this.fail(journalLost(this.journal), false);
      return;
    }
    if (this.opts.fsync === "everysec" && this.appendedRecords > this.durableRecords) this.requestSyncRound();
  }

  // ---- failure and recovery ------------------------------------------------------------------

  /** Enters (or stays in) the failed state; returns the Error to throw. */
  private fail(err: unknown, journalIntact: boolean): Error {
    const reason = err instanceof PersistenceFailure ? err.message : `persisting to ${this.files.dir} failed: ${errorMessage(err)}`;
    this.lastError = { at: new Date().toISOString(), message: reason };
    const wasFailing = this.failure !== null;
    this.failure = { reason, journalIntact: journalIntact && (this.failure?.journalIntact ?? true) };
    if (!wasFailing) {
      this.log.error("persistence failed: writes are refused until the disk works again", { reason });
      // Once closing, close() retries by itself, for a while; a timer would outlive it and touch the files.
      if (!this.closing) {
        this.retryTimer = setInterval(() => void this.tryResume(), this.opts.retryMs);
        this.retryTimer.unref();
      }
    }
    return new PersistenceFailure(reason);
  }

  private tryResume(): Promise<void> {
    if (this.resuming || this.compaction || !this.failure) return this.resuming ?? Promise.resolve();
    this.resuming = this.resume().finally(() => {
      this.resuming = null;
    });
    return this.resuming;
  }

  private async resume(): Promise<void> {
    const failure = this.failure!;
    // Every few attempts, a rebuild even when the journal looked intact: its file handle may stay broken.
    const rebuildAnyway = ++this.resumeAttempts % REBUILD_EVERY_ATTEMPTS === 0;
    const retryJournal =
      failure.journalIntact && !rebuildAnyway && stillAtPath(this.journal.handle.fd, this.journal.path, this.journal.bytes);
    try {
      if (retryJournal) {
        await this.sync();
      } else {
        await this.rebuild();
      }
      this.resumeAttempts = 0;
      this.failedRebuildJournal = null;
      this.failure = null;
      if (this.retryTimer) clearInterval(this.retryTimer);
      this.retryTimer = null;
      this.log.info("persistence resumed", { journal: this.journal.path });
    } catch (err) {
      // A failed sync round has already classified its error. A failed rebuild
      // leaves the journal untrusted: it switched to a new, empty journal and
      // dropped the queue, so only a rebuild that completes covers the records.
      this.fail(err, retryJournal && (this.failure?.journalIntact ?? false));
    }
  }

  /**
   * After a failure that leaves the journal untrustworthy: a full snapshot of
   * memory (which holds every accepted record) and a brand-new journal. Writes
   * are refused meanwhile, so the snapshot is exact at `lastAppendedSeq`.
   */
  private async rebuild(): Promise<void> {
    // A round still waiting on the old journal's fsync must finish before its handle is closed.
    if (this.syncLoop) await this.syncLoop;
    if (!holdsLock(this.files.lock)) {
      // The lock went with the data directory. If the directory came back holding data files that
      // are not ours (our journal is not among them), another server may have started there since:
      // never overwrite them.
      if (!stillAtPath(this.journal.handle.fd, this.journal.path) && this.files.holdsData()) {
        throw new PersistenceFailure(
          `the data directory ${this.files.dir} came back holding other data files (another server's?); ` +
            `not overwriting them: writes stay refused until this server restarts`,
        );
      }
      const pidOnly = acquireLock(this.files.lock);
      if (pidOnly !== null) this.log.warn(PID_ONLY_LOCK_WARNING, { file: this.files.lock, reason: pidOnly });
    }
    const seq = this.lastAppendedSeq;
    const records = this.appendedRecords;
    // The journal an earlier failed rebuild opened, still empty, serves as well as a new one:
    // while the disk stays full, retries must not leave an empty file each.
    const current = this.journal;
    const reuse =
      current === this.failedRebuildJournal &&
      current.bytes === 0 &&
      this.retired.length === 0 &&
      stillAtPath(current.handle.fd, current.path);
    const fresh = reuse ? current : await createJournal(this.files, this.nextJournalGen());
    this.failedRebuildJournal = fresh;
    for (const old of [current, ...this.retired]) if (old !== fresh) await old.handle.close().catch(() => {});
    this.journal = fresh;
    this.retired = [];
    this.directoryDirty = true;
    this.unwritten.clear();
    this.writtenSeq = seq;
    this.writtenRecords = records;
    await this.writeSnapshotAndDropJournals(seq, async () => {});
    this.markDurable(seq, records);
  }

  /** A generation above every journal file present, so a new journal never appends to an old file. */
  private nextJournalGen(): number {
    return Math.max(this.journal.gen, ...this.files.listJournalGens()) + 1;
  }

  // ---- compaction ----------------------------------------------------------------------------

  /**
   * A graceful stop leaves the whole state in the data file, as Redis saves
   * its RDB at shutdown and PostgreSQL writes a shutdown checkpoint: someone
   * who looks at data.json after a clean stop finds everything there, and the
   * next start reads one file instead of replaying journals. Skipped when the
   * file already holds every commit; given up at `by`, so that a large store
   * cannot hold the exit past the shutdown's deadline. A failure is logged
   * and loses nothing: the journal, already durable, holds every change.
   */
  private async snapshotAtShutdown(by: number): Promise<void> {
    if (!this.view || this.failure) return;
    if (this.lastAppendedSeq === this.snapshotSeq && fs.existsSync(this.files.snapshot)) return;
    try {
      await this.compact("shutdown", by);
    } catch (err) {
      this.log.warn("final snapshot failed; the journal holds every change", { reason: errorMessage(err) });
    }
  }

  private maybeAutoCompact(): void {
    if (this.compaction || this.failure || !this.view || this.closing) return;
    const threshold = Math.max(this.opts.compactMinBytes, (this.snapshotBytes * this.opts.compactPercent) / 100);
    if (this.journal.bytes <= threshold || Date.now() < this.nextAutoCompactionAt) return;
    this.startCompaction("journal size").catch(() => {});
  }

  private startCompaction(trigger: string): Promise<void> {
    const run = this.compact(trigger).finally(() => {
      this.compaction = null;
    });
    this.compaction = run;
    return run;
  }

  /**
   * Switch appends to a new journal at S_start (unless the current one is
   * still empty), write a fuzzy snapshot of the live store, make the journal
   * durable up to the end of the walk, put the snapshot in place, then delete
   * the journals it covers.
   */
  private async compact(trigger: string, finalSnapshotBy?: number): Promise<void> {
    if (!this.view) throw new Error("persistence: no store attached, nothing to save");
    if (this.failure) throw new PersistenceFailure(this.failure.reason);
    // A shutdown cancels compactions, but for its own final one until its deadline.
    const cancelled = () => (finalSnapshotBy === undefined ? this.closing : Date.now() > finalSnapshotBy);
    if (cancelled()) throw new Error("persistence: shutting down");
    const started = performance.now();
    try {
      await this.preFlushJournal();
      let startSeq: number;
      if (this.journal.bytes === 0 && this.unwritten.length === 0) {
        // Nothing written since the last switch (a compaction that failed after it, say): this journal
        // takes the records after the snapshot as well as a new one would, and compactions that fail
        // again and again do not leave an empty journal each.
        this.throwIfInterrupted(cancelled);
        startSeq = this.lastAppendedSeq;
      } else {
        startSeq = await this.switchJournal(cancelled);
      }
      const written = await this.writeSnapshotAndDropJournals(startSeq, () => this.sync(), cancelled);
      const ms = Math.round(performance.now() - started);
      this.lastCompaction = {
        at: new Date().toISOString(),
        ms,
        keys: written.lines,
        bytes: written.bytes,
        seq: startSeq,
        slices: written.slices,
        longestSliceMs: written.longestSliceMs,
      };
      this.log.info("snapshot written", { trigger, ...this.lastCompaction });
    } catch (err) {
      const reason = `snapshot failed: ${errorMessage(err)}`;
      this.lastError = { at: new Date().toISOString(), message: reason };
      this.nextAutoCompactionAt = Date.now() + COMPACTION_RETRY_MS;
      if (!this.closing) this.log.warn("snapshot failed; the journal still holds every change", { trigger, reason });
      await this.closeRetiredJournals();
      throw new Error(reason);
    }
  }

  /**
   * Appends go to a new journal from here; returns the last seq of the old
   * one (the snapshot's start). The old journal is made durable before any
   * record goes to the new one, so a crash (a power cut too) can leave a torn
   * record in it only while the new one is empty.
   */
  private async switchJournal(cancelled: () => boolean): Promise<number> {
    const fresh = await createJournal(this.files, this.nextJournalGen());
    try {
      // The awaits before let the loop run: a sync may have failed, or a shutdown begun.
      this.throwIfInterrupted(cancelled);
      // From here to the switch nothing awaits: no record can fall between the two journals.
      try {
        this.writeQueue();
      } catch (err) {
        throw this.fail(err, writeErrorLeavesJournalIntact(err));
      }
      try {
        fs.fdatasyncSync(this.journal.handle.fd);
        this.fsyncs++;
      } catch (err) {
        throw this.fail(err, false);
      }
    } catch (err) {
      await discardJournal(fresh);
      throw err;
    }
    this.retired.push(this.journal);
    this.journal = fresh;
    this.directoryDirty = true;
    return this.lastAppendedSeq;
  }

  /**
   * Closes the retired journals: made durable at their switch, they take no
   * more records. Called at close() and after a failed compaction (a sync
   * round closes them too, but under --fsync no none runs: each failed
   * compaction kept one more file open until the next one succeeded).
   */
  private async closeRetiredJournals(): Promise<void> {
    const retired = this.retired;
    this.retired = [];
    for (const old of retired) await old.handle.close().catch(() => {});
  }

  /** A compaction stops when persistence failed or a shutdown cancelled it while it awaited. */
  private throwIfInterrupted(cancelled: () => boolean): void {
    const failed = this.unavailableReason;
    if (failed !== null) throw new PersistenceFailure(failed);
    if (cancelled()) throw new Error("persistence: shutting down");
  }

  /**
   * fdatasync of the current journal on the thread pool, ahead of the switch:
   * under `--fsync no` the journal may hold hundreds of MB never synced, and
   * the sync call at the switch (on the event loop, where nothing may await)
   * then stalled every client for as long as the disk took. After this it has
   * only what arrived meanwhile. A failure is a failure as anywhere else:
   * Linux may drop the unwritten pages, so it must not be retried.
   */
  private async preFlushJournal(): Promise<void> {
    try {
      await this.journal.handle.datasync();
    } catch (err) {
      throw this.fail(err, false);
    }
    this.fsyncs++;
  }

  private async writeSnapshotAndDropJournals(
    seq: number,
    beforeRename: () => Promise<void>,
    cancelled = () => this.closing && this.resuming === null,
  ) {
    const view = this.view;
    if (!view) throw new Error("persistence: no store attached");
    const written = await writeSnapshot({
      files: this.files,
      seq,
      entries: view.entries(),
      sliceMs: this.opts.sliceMs,
      checkCancelled: () => {
        if (cancelled()) throw new Error("shutting down");
      },
      beforeRename,
    });
    this.snapshotSeq = seq;
    this.snapshotBytes = written.bytes;
    // On the thread pool: unlinking a large journal frees its blocks, tens of ms.
    for (const gen of this.files.listJournalGens()) {
      if (gen !== this.journal.gen) await this.removeOldJournal(this.files.journal(gen));
    }
    return written;
  }

  /**
   * A journal the new snapshot covers is only in the way: if it cannot be
   * removed (an append-only or immutable file), the snapshot still stands, a
   * start skips the records it holds, and the next compaction tries again.
   */
  private async removeOldJournal(file: string): Promise<void> {
    try {
      await removeFileInBackground(file);
    } catch (err) {
      this.log.warn("an old journal could not be removed; the new snapshot holds its records, and the next compaction tries again", {
        file,
        reason: errorMessage(err),
      });
    }
  }
}

/** Opens (creating if needed) the journal of generation `gen` for appending. */
export async function openJournal(files: DataFiles, gen: number): Promise<JournalFile> {
  const path = files.journal(gen);
  const handle = await fs.promises.open(path, "a");
  try {
    return { gen, path, handle, bytes: (await handle.stat()).size };
  } catch (err) {
    // Left open, the handle would be closed by the garbage collector, which Bun reports as an uncaught error: the process exits.
    await handle.close().catch(() => {});
    throw err;
  }
}

/** Creates the journal of a generation above every file present (see nextJournalGen): empty, never an old file appended to. */
function createJournal(files: DataFiles, gen: number): Promise<JournalFile> {
  const path = files.journal(gen);
  return fs.promises.open(path, "ax").then((handle) => ({ gen, path, handle, bytes: 0 }));
}

/** Why stillAtPath said no of the journal: removed or replaced, or cut short. */
function journalLost(journal: JournalFile): Error {
  let size = journal.bytes;
  try {
    size = fs.fstatSync(journal.handle.fd).size; // the file this server writes to, wherever its name went
  } catch {
    // a handle that cannot even be looked at: say removed, the rebuild replaces it either way
  }
  return new Error(
    size < journal.bytes
      ? `${journal.path} was cut short (${size} bytes where this server had written ${journal.bytes}); a new snapshot and journal replace it`
      : `${journal.path} was removed (is the data directory gone?)`,
  );
}

/** Closes and removes a journal that never received a record (a compaction that stopped short). */
async function discardJournal(journal: JournalFile): Promise<void> {
  await journal.handle.close().catch(() => {});
  removeFile(journal.path);
}

function writeErrorLeavesJournalIntact(err: unknown): boolean {
  return RETRYABLE_WRITE_ERRORS.has((err as NodeJS.ErrnoException)?.code ?? "");
}
