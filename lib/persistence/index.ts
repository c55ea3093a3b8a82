/**
 * Entry point of the persistence layer: lock, recover, open the journal.
 *
 * Files next to `--data <path>` (default data.json):
 *   <path>             snapshot (JSON, see snapshot-format.ts)
 *   <path>.journal.N   journal generations (JSON lines, see journal-format.ts)
 *   <path>.tmp         snapshot being written (removed at start: an interrupted compaction's)
 *   <path>.lock        pid of the server owning the files (and the boot id, a line each)
 *
 * Owns: start-up order (lock first, read everything, change nothing unless the
 * files are sound, then cut a torn tail). Must not: be imported by anything but
 * lib/app.ts and tests; nothing else touches data files.
 */
import fs from "node:fs";
import path from "node:path";
import type { CompactMap } from "../compact-map.ts";
import type { Logger } from "../log.ts";
import { DurableLog, openJournal, type DurableLogOptions, type FsyncMode } from "./durable-log.ts";
import { dataFiles, refuseSpecialFiles, refuseMissingDirectory, removeFile } from "./files.ts";
import { acquireLock, PID_ONLY_LOCK_WARNING, releaseLock } from "./lock.ts";
import { recover } from "./recovery.ts";
import { errorMessage } from "../errors.ts";

export type { FsyncMode, StoreView } from "./durable-log.ts";
export { DurableLog } from "./durable-log.ts";

export interface PersistenceOptions {
  readonly path: string;
  readonly fsync: FsyncMode;
  readonly fsyncIntervalMs: number;
  /** Compact when the journal exceeds this many bytes and `compactPercent` % of the snapshot. */
  readonly compactMinBytes?: number;
  readonly compactPercent?: number;
  /** Delay between attempts to resume after a disk failure. */
  readonly retryMs?: number;
  /** Longest event-loop hold of one snapshot slice. */
  readonly sliceMs?: number;
}

const PERSISTENCE_DEFAULTS = {
  compactMinBytes: 16 * 1024 * 1024,
  compactPercent: 100,
  retryMs: 500,
  sliceMs: 1,
} as const;

export interface OpenedPersistence {
  readonly log: DurableLog;
  /** The recovered state, for the store to start from. */
  readonly initial: CompactMap;
  /** Seq of the newest recovered commit; the executor continues after it. */
  readonly seq: number;
  readonly keysLoaded: number;
  readonly loadMs: number;
}

/**
 * Takes the lock, loads snapshot + journals, cuts a torn final record, and
 * opens the journal for appending. Rejects, leaving every data file as it
 * was, with an Error naming the file and the problem.
 */
export async function openPersistence(opts: PersistenceOptions, log: Logger): Promise<OpenedPersistence> {
  const started = performance.now();
  const files = dataFiles(opts.path);
  refuseMissingDirectory(files);
  refuseJournalsBesideLink(path.resolve(opts.path), files.snapshot);
  refuseSpecialFiles(files);
  const pidOnly = acquireLock(files.lock);
  if (pidOnly !== null) log.warn(PID_ONLY_LOCK_WARNING, { file: files.lock, reason: pidOnly });
  try {
    const recovered = recover(files);
    const torn = recovered.tornTail;
    if (torn !== null) {
      log.warn("dropping a torn final journal record (the server stopped in the middle of writing it)", {
        file: torn.file,
        problem: torn.reason,
        keptBytes: torn.validBytes,
      });
      cutFile(torn.file, torn.validBytes);
    }
    // Left by a compaction that was interrupted; the next one would overwrite it anyway.
    removeFile(files.snapshotTemp);
    const lastGen = recovered.journalGens.at(-1);
    const journal = await openJournal(files, lastGen ?? 1);
    const settings: DurableLogOptions = {
      fsync: opts.fsync,
      fsyncIntervalMs: opts.fsyncIntervalMs,
      compactMinBytes: opts.compactMinBytes ?? PERSISTENCE_DEFAULTS.compactMinBytes,
      compactPercent: opts.compactPercent ?? PERSISTENCE_DEFAULTS.compactPercent,
      retryMs: opts.retryMs ?? PERSISTENCE_DEFAULTS.retryMs,
      sliceMs: opts.sliceMs ?? PERSISTENCE_DEFAULTS.sliceMs,
    };
    const durable = new DurableLog(files, settings, log, {
      journal,
      journalCreated: lastGen === undefined,
      seq: recovered.seq,
      snapshotSeq: recovered.snapshotSeq,
      snapshotBytes: recovered.snapshotBytes,
    });
    return {
      log: durable,
      initial: recovered.entries,
      seq: recovered.seq,
      keysLoaded: recovered.entries.size,
      loadMs: Math.round(performance.now() - started),
    };
  } catch (err) {
    releaseLock(files.lock);
    throw err;
  }
}

/**
 * The data path is a symbolic link: the files live beside its target. A
 * journal beside the link itself (written by a version that did not resolve
 * links) would be silently ignored, losing its records: refuse instead.
 */
function refuseJournalsBesideLink(given: string, resolved: string): void {
  let link: string;
  try {
    if (!fs.lstatSync(given).isSymbolicLink()) return; // a linked directory moves nothing apart
    link = path.join(fs.realpathSync(path.dirname(given)), path.basename(given));
  } catch {
    return;
  }
  if (link === resolved) return;
  const prefix = `${path.basename(link)}.journal.`;
  let names: string[];
  try {
    names = fs.readdirSync(path.dirname(link)).filter((name) => name.startsWith(prefix));
  } catch {
    return;
  }
  if (names.length > 0) {
    throw new Error(
      `${given}: is a link to ${resolved}, and journal files sit beside the link (${names.join(", ")}); ` +
        `move them beside ${resolved}, renamed to ${path.basename(resolved)}.journal.<n>`,
    );
  }
}

/** Truncates a journal to its complete records and makes that durable. */
function cutFile(file: string, length: number): void {
  try {
    const fd = fs.openSync(file, "r+");
    try {
      fs.ftruncateSync(fd, length);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    throw new Error(`${file}: cannot cut off the torn final record (${errorMessage(err)})`);
  }
}
