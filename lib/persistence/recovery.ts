/**
 * Start-up recovery: the snapshot, then every journal record newer than it.
 *
 * Reads only; changes no file. A corrupt or unreadable file throws an Error
 * whose message names the file and the problem. A torn final record is
 * reported (not fixed) so the caller can warn and cut it. It ends the log,
 * as the first invalid record ends PostgreSQL's WAL: a crash while writing
 * it can leave it in a journal that is not the newest (a compaction had just
 * created the next, still empty, journal), and after a power cut a later
 * journal may hold records written after it. Those were never acknowledged
 * as durable (under `always` a later journal's records wait for the fsync of
 * the earlier ones), and replaying them past the hole would not give a prefix
 * of the commits, so they are reported as unreplayed.
 *
 * Owns: turning the files on disk into the initial key/value map and seq.
 * Must not: write, truncate or delete anything.
 */
import fs from "node:fs";
import { CompactMap } from "../compact-map.ts";
import type { DataFiles } from "./files.ts";
import { JournalFormatError, scanJournal } from "./journal-format.ts";
import { SnapshotFormatError, decodeSnapshot } from "./snapshot-format.ts";

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
  /** Non-empty journals after the torn tail, not replayed (the caller sets them aside). Their gens are not in journalGens. */
  readonly unreplayedJournals: readonly string[];
}

export function recover(files: DataFiles): Recovered {
  const snapshot = readSnapshot(files.snapshot);
  const entries = snapshot.entries;
  let gens: number[];
  try {
    gens = files.listJournalGens();
  } catch (err) {
    throw new Error(`${files.dir}: cannot list the data directory (${(err as Error).message})`);
  }
  let lastSeq = 0;
  let replayed = 0;
  let tornTail: TornTail | null = null;
  const apply = (seq: number, ops: readonly (readonly [string, string | null])[]) => {
    if (seq <= snapshot.seq) return;
    for (const [key, value] of ops) {
      if (value === null) entries.delete(key);
      else entries.set(key, value);
    }
    replayed++;
  };
  const journalGens: number[] = [];
  const unreplayedJournals: string[] = [];
  for (const gen of gens) {
    const file = files.journal(gen);
    const bytes = readFile(file);
    if (tornTail !== null) {
      // After the end of the log: an empty journal stays (appends may go there), records are set aside.
      if (bytes.length === 0) journalGens.push(gen);
      else unreplayedJournals.push(file);
      continue;
    }
    journalGens.push(gen);
    try {
      const scan = scanJournal(bytes, lastSeq, apply);
      lastSeq = scan.lastSeq;
      if (scan.tornTail !== null) tornTail = { file, reason: scan.tornTail, validBytes: scan.validBytes };
    } catch (err) {
      if (err instanceof JournalFormatError) throw new Error(`${file}: corrupt journal, ${err.message}`);
      throw err;
    }
  }
  return {
    entries,
    seq: Math.max(snapshot.seq, lastSeq),
    snapshotSeq: snapshot.seq,
    snapshotBytes: snapshot.bytes,
    snapshotFormat: snapshot.format,
    journalGens,
    journalRecordsReplayed: replayed,
    tornTail,
    unreplayedJournals,
  };
}

function readSnapshot(file: string) {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") {
      return { seq: 0, entries: new CompactMap(), bytes: 0, format: "none" as const };
    }
    throw new Error(`${file}: cannot read the snapshot (${(err as Error).message})`);
  }
  try {
    const decoded = decodeSnapshot(bytes);
    return { ...decoded, bytes: bytes.length };
  } catch (err) {
    if (err instanceof SnapshotFormatError) throw new Error(`${file}: corrupt snapshot, ${err.message}`);
    throw new Error(`${file}: cannot load the snapshot (${(err as Error).message})`);
  }
}

function readFile(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`${file}: cannot read the journal (${(err as Error).message})`);
  }
}
