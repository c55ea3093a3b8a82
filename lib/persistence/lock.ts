/**
 * The data-file lock: `<data>.lock`, created exclusively, holding the owner's pid.
 *
 * A second server on the same data file finds a live pid there and refuses to
 * start. A lock left by a killed server names a dead pid (or a zombie, killed
 * and not yet reaped) and is taken over.
 *
 * Owns: creating, checking and removing the lock file. Must not: read or
 * write any data file.
 */
import fs from "node:fs";

/** Takes the lock or throws an Error whose message names the file and the owner. */
export function acquireLock(lockPath: string): void {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = fs.openSync(lockPath, "wx");
      try {
        fs.writeSync(fd, `${process.pid}\n`);
      } finally {
        fs.closeSync(fd);
      }
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") {
        throw new Error(`${lockPath}: cannot create the lock file (${(err as Error).message})`);
      }
    }
    const owner = readLockOwner(lockPath);
    if (owner !== null && owner !== process.pid && isAlive(owner)) {
      throw new Error(
        `${lockPath}: the data file is locked by another running server (pid ${owner}); ` +
          `if no txkv server runs with that pid, remove the lock file`,
      );
    }
    // Stale: its owner is gone (killed) or the file is unreadable/empty (killed while creating it).
    try {
      fs.unlinkSync(lockPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") {
        throw new Error(`${lockPath}: cannot remove the stale lock file (${(err as Error).message})`);
      }
    }
  }
  throw new Error(`${lockPath}: could not take the lock (another server keeps taking it)`);
}

/** True when the lock file exists and names this process. */
export function holdsLock(lockPath: string): boolean {
  return readLockOwner(lockPath) === process.pid;
}

/** Removes the lock file if (and only if) this process owns it. */
export function releaseLock(lockPath: string): void {
  if (!holdsLock(lockPath)) return;
  try {
    fs.unlinkSync(lockPath);
  } catch {
    // Already gone (data directory removed): nothing to release.
  }
}

function readLockOwner(lockPath: string): number | null {
  try {
    const pid = Number.parseInt(fs.readFileSync(lockPath, "utf8").trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : null;
  } catch {
    return null;
  }
}

/**
 * True while pid names a running process. A zombie (killed, not yet reaped by
 * its parent, as after `kill -9` of a server started from a script) holds
 * nothing any more, so it counts as gone; `kill(pid, 0)` alone succeeds for it.
 */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  return !isZombie(pid);
}

/** Linux: the state letter in /proc/<pid>/stat (after the command's closing parenthesis) is Z or X. Elsewhere: false. */
function isZombie(pid: number): boolean {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return false;
  }
  const state = stat.charAt(stat.lastIndexOf(")") + 2);
  return state === "Z" || state === "X";
}
