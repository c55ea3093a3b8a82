/**
 * File names and small durable-file primitives of the persistence layer.
 *
 * Owns: how the snapshot, journal, temp and lock files are named next to the
 * `--data` path (its symbolic links resolved, so two names of one file share
 * one lock), listing the journal generations, directory fsync, the "is this
 * fd still the file at that path" check that detects a removed data
 * directory, and the start-up refusals about the directory itself (missing,
 * or a directory where a file of ours goes).
 * Must not: know the content of any file (see snapshot-format.ts and
 * journal-format.ts) or hold state.
 */
import fs from "node:fs";
import path from "node:path";

export interface DataFiles {
  /** The snapshot: the `--data` path itself (default `data.json`). */
  readonly snapshot: string;
  /** Directory holding every file below (fsynced after renames and creations). */
  readonly dir: string;
  /** Where a snapshot is written before it is renamed over `snapshot`. */
  readonly snapshotTemp: string;
  /** Holds the pid of the server that owns the data files. */
  readonly lock: string;
  /** Journal file of one generation: `<data>.journal.<gen>`. */
  journal(gen: number): string;
  /** The generations of the journal files present in the directory, ascending. */
  listJournalGens(): number[];
  /** A snapshot or a journal file is present. */
  holdsData(): boolean;
}

export function dataFiles(dataPath: string): DataFiles {
  const snapshot = realPath(path.resolve(dataPath));
  const dir = path.dirname(snapshot);
  const base = path.basename(snapshot);
  const journalPrefix = `${base}.journal.`;
  return {
    snapshot,
    dir,
    snapshotTemp: `${snapshot}.tmp`,
    lock: `${snapshot}.lock`,
    journal: (gen) => path.join(dir, journalPrefix + gen),
    listJournalGens() {
      const gens: number[] = [];
      for (const name of fs.readdirSync(dir)) {
        if (!name.startsWith(journalPrefix)) continue;
        const suffix = name.slice(journalPrefix.length);
        if (/^[1-9][0-9]{0,14}$/.test(suffix)) gens.push(Number(suffix));
      }
      return gens.sort((a, b) => a - b);
    },
    holdsData() {
      return fs.existsSync(snapshot) || this.listJournalGens().length > 0;
    },
  };
}

/**
 * The path with symbolic links resolved (the file's own too, even when it
 * does not exist yet: a fresh server writes no snapshot until its first
 * compaction), so that two servers given two names of one data file share
 * one lock, and a snapshot replaces the file rather than the link. (Hard
 * links are not detected: see the README.)
 */
function realPath(absolute: string, linksFollowed = 0): string {
  try {
    return fs.realpathSync(absolute);
  } catch {
    // Absent, or a link to something absent.
  }
  if (linksFollowed < MAX_LINKS_FOLLOWED) {
    let target: string | null = null;
    try {
      target = fs.readlinkSync(absolute);
    } catch {
      // Not a link (or absent): keep the name, resolve its directory.
    }
    // Relative to the link's real directory, as the kernel resolves it ("../x" from a linked directory).
    if (target !== null) return realPath(path.resolve(realDirectory(absolute), target), linksFollowed + 1);
  }
  return path.join(realDirectory(absolute), path.basename(absolute));
}

function realDirectory(file: string): string {
  try {
    return fs.realpathSync(path.dirname(file));
  } catch {
    return path.dirname(file);
  }
}

/** As the kernel's limit on nested links: a loop of links ends here. */
const MAX_LINKS_FOLLOWED = 40;

/** fsync a directory so that renames, creations and removals in it survive a power cut. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fs.promises.open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Removes the file at filePath if there is one. Not `fs.rm`: Bun's reports
 * EPERM (an immutable or append-only file) as EFAULT, "bad address", and an
 * operator reading that would look for the wrong problem.
 */
export function removeFile(filePath: string): void {
  try {
    fs.unlinkSync(filePath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}

/** removeFile off the event loop (a large journal's blocks take a while to free). */
export async function removeFileInBackground(filePath: string): Promise<void> {
  try {
    await fs.promises.unlink(filePath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}

/**
 * True when `filePath` still names the file open on `fd`, and that file holds
 * at least the `written` bytes this server put there. False when the file
 * (or its directory) was removed or replaced: writes to `fd` then "succeed"
 * into a file nobody will ever read. False too when it was cut short (by
 * hand, to free space): appends would then land right after records that
 * are gone, and the next start would refuse the journal.
 */
export function stillAtPath(fd: number, filePath: string, written = 0): boolean {
  try {
    const byPath = fs.statSync(filePath);
    const byFd = fs.fstatSync(fd);
    return byPath.ino === byFd.ino && byPath.dev === byFd.dev && byFd.size >= written;
  } catch {
    return false;
  }
}

/** The data file's directory must exist (as Redis's `dir` must): a missing one is a typo more often than a wish. */
export function refuseMissingDirectory(files: DataFiles): void {
  const stat = fs.statSync(files.dir, { throwIfNoEntry: false });
  if (stat === undefined) {
    throw new Error(`${files.dir}: the data file's directory does not exist; create it, or give --data a path in an existing one`);
  }
  if (!stat.isDirectory()) throw new Error(`${files.dir}: not a directory, so the data file cannot go in it (--data)`);
}

/**
 * Refuses to start when something other than a regular file sits where the
 * server reads or writes a file of its own. A directory in place of the lock
 * or a snapshot's temporary file would fail every lock attempt or compaction
 * with a bare EISDIR; a FIFO or a device as the snapshot, a journal or the
 * lock would hang the start in a read that never ends (/dev/zero: filling
 * memory), deaf to SIGTERM. (A directory as the data file itself is refused
 * where the snapshot is read, naming --data.)
 */
export function refuseSpecialFiles(files: DataFiles): void {
  const ours: [string, string][] = [
    [files.snapshot, "the snapshot"],
    [files.lock, "the lock file"],
    [files.snapshotTemp, "a snapshot's temporary file"],
    ...files.listJournalGens().map((gen): [string, string] => [files.journal(gen), "a journal"]),
  ];
  for (const [file, what] of ours) {
    const stat = fs.statSync(file, { throwIfNoEntry: false });
    if (stat === undefined || stat.isFile() || (file === files.snapshot && stat.isDirectory())) continue;
    const found = stat.isDirectory() ? "a directory" : "a FIFO, socket or device";
    throw new Error(`${file}: ${found} is where ${what} goes; move it away and start again (txkv keeps its data in regular files)`);
  }
}
