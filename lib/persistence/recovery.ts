/**
 * Start-up recovery: the snapshot, then every journal record newer than it.
 *
 * Reads only; changes no file. A corrupt or unreadable file throws an Error
 * whose message names the file and the problem. A torn final record is
 * reported (not fixed) so the caller can warn and cut it: in the newest
 * journal, or in the one before newer journals that are all empty (a crash
 * as a compaction or a rebuild switched journals). Records must follow the
 * snapshot with consecutive seqs: a gap (a journal file deleted) is
 * corruption too, and so is a missing snapshot once journals show one was written.
 *
 * Owns: turning the files on disk into the initial key/value map and seq.
 * Must not: write, truncate or delete anything.
 */
import fs from "node:fs";
import { CompactMap } from "../compact-map.ts";
import type { DataFiles } from "./files.ts";
import { JournalFormatError, scanJournal, type JournalScan } from "./journal-format.ts";
import { SnapshotFormatError, decodeSnapshot } from "./snapshot-format.ts";
import { errorMessage } from "../errors.ts";

export interface TornTail {
  readonly file: string;
  readonly reason: string;
  /** Length the file must be cut to so that it ends after its last complete record. */
  readonly validBytes: number;
}

export interface Recovered {
  readonly entries: CompactMap;
  /** The seq of the newest commit recovered (the executor continues after it). */
  readonly seq: number;
  readonly snapshotSeq: number;
  readonly snapshotBytes: number;
  readonly snapshotFormat: "txkv" | "plain-json" | "none";
  /** Journal generations present, ascending. */
  readonly journalGens: readonly number[];
  readonly journalRecordsReplayed: number;
  readonly tornTail: TornTail | null;
}

export function recover(files: DataFiles): Recovered {
  const snapshot = readSnapshot(files.snapshot);
  const entries = snapshot.entries;
  let gens: number[];
  try {
    gens = files.listJournalGens();
  } catch (err) {
    throw new Error(`${files.dir}: cannot list the data directory (${errorMessage(err)})`);
  }
  refuseMissingSnapshot(files, snapshot.format, gens);
  let lastSeq = 0;
  let replayed = 0;
  let tornTail: TornTail | null = null;
  let expectedSeq = snapshot.seq + 1;
  const apply = (seq: number, ops: readonly (readonly [string, string | null])[]) => {
    if (seq <= snapshot.seq) return;
    // Commits are numbered without gaps, so a gap is lost records: replaying past it would not give a prefix.
    if (seq !== expectedSeq) {
      throw new JournalFormatError(
        `seq ${seq} where seq ${expectedSeq} was expected: records are missing (a deleted journal file, or a snapshot older than the journals?)`,
      );
    }
    expectedSeq++;
    for (const [key, value] of ops) {
      if (value === null) entries.delete(key);
      else entries.set(key, value);
    }
    replayed++;
  };
  for (const [index, gen] of gens.entries()) {
    const file = files.journal(gen);
    try {
      const scan = scanJournal(readFile(file), lastSeq, apply);
      lastSeq = scan.lastSeq;
      if (scan.tornTail !== null) {
        checkNothingAfterTornTail(scan, gens.slice(index + 1).map((later) => files.journal(later)));
        tornTail = { file, reason: scan.tornTail, validBytes: scan.validBytes };
        break;
      }
    } catch (err) {
      if (err instanceof JournalFormatError) throw new Error(`${file}: corrupt journal, ${err.message}`);
      if (err instanceof RangeError) throw new Error(`${file}: cannot load the journal (${err.message})`);
      throw err;
    }
  }
  return {
    entries,
    seq: Math.max(snapshot.seq, lastSeq),
    snapshotSeq: snapshot.seq,
    snapshotBytes: snapshot.bytes,
    snapshotFormat: snapshot.format,
    journalGens: gens,
    journalRecordsReplayed: replayed,
    tornTail,
  };
}

/**
 * Journal generations start at 1. A later one is opened by a compaction
 * (whose snapshot is in place before the older journals go) or by a rebuild
 * after a disk failure (which opens it, then writes a snapshot of memory).
 * So with no snapshot beside it, the data before it is not on disk: the
 * snapshot was lost, or a rebuild never finished. Starting empty would
 * serve, and soon save, a store without that data.
 */
function refuseMissingSnapshot(files: DataFiles, snapshotFormat: string, gens: readonly number[]): void {
  if (snapshotFormat !== "none" || gens.length === 0 || gens[0]! <= 1) return;
  throw new Error(
    `${files.snapshot}: no snapshot, but the oldest journal is ${files.journal(gens[0]!)}, which follows one ` +
      `(or a rebuild that was writing one): the data before it is not here. Put the snapshot back, ` +
      `or remove the journal files to start with an empty store`,
  );
}

/**
 * A torn record in a journal that is not the newest is a crash's trace only
 * while every newer journal is still empty: a compaction or a rebuild had
 * just created the next journal (a compaction fsyncs the old one before any
 * record goes to the new one; a rebuild refuses writes until its snapshot
 * covers everything). Records after a torn one are corruption.
 */
function checkNothingAfterTornTail(scan: JournalScan, newerJournals: string[]): void {
  if (newerJournals.some((file) => fileSize(file) > 0)) {
    throw new JournalFormatError(`${scan.tornTail}, before a newer journal file with records`);
  }
}

function fileSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch (err) {
    throw new Error(`${file}: cannot read the journal (${errorMessage(err)})`);
  }
}

function readSnapshot(file: string) {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      return { seq: 0, entries: new CompactMap(), bytes: 0, format: "none" as const };
    }
    throw new Error(`${file}: cannot read the snapshot (${errorMessage(err)})`);
  }
  try {
    const decoded = decodeSnapshot(bytes);
    return { ...decoded, bytes: bytes.length };
  } catch (err) {
    if (err instanceof SnapshotFormatError) throw new Error(`${file}: corrupt snapshot, ${err.message}`);
    throw new Error(`${file}: cannot load the snapshot (${errorMessage(err)})`);
  }
}

function readFile(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`${file}: cannot read the journal (${errorMessage(err)})`);
  }
}
