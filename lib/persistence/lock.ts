/**
 * The data-file lock: `<data>.lock`, created exclusively, holding the owner's pid.
 *
 * A second server on the same data file finds a live pid there and refuses to
 * start. A lock left by a killed server names a dead pid (or a zombie, killed
 * and not yet reaped) and is taken over.
 *
 * The lock appears with its pid already in it: the pid is written to a file of
 * this process's own, which is then hard-linked to the lock's name (link fails
 * when the name exists, as an exclusive create does). Created empty and then
 * written, a lock read in between looked stale, and of two servers started at
 * the same moment both took it. An empty lock (a file system without hard
 * links, or a server killed while creating one) counts as a server starting
 * while it is young, and as stale after STARTING_LOCK_MS. A stale lock is
 * removed only under a second lock, so that two servers never both take it
 * over (see takeOverStaleLock).
 *
 * Owns: creating, checking and removing the lock file. Must not: read or
 * write any data file.
 */
import fs from "node:fs";
import { errorMessage } from "../errors.ts";

/** An empty lock younger than this is a server in the middle of creating it (only where hard links fail). */
const STARTING_LOCK_MS = 2000;

/** While another server takes over a stale lock, look again this often, this many times (2 s in all). */
const TAKEOVER_WAIT_MS = 5;
const TAKEOVER_LOOKS = 400;

/** Takes the lock or throws an Error whose message names the file and the owner. */
export function acquireLock(lockPath: string): void {
  for (let look = 0; look < TAKEOVER_LOOKS; look++) {
    if (createLockUnlessLive(lockPath)) return;
    refuseIfLive(lockPath, readLockOwner(lockPath));
    // Stale: its owner is gone (killed), or the file is unreadable or empty and old (killed while creating it).
    // Blocking is fine here: start-up, or a rebuild that holds up writes anyway.
    if (!takeOverStaleLock(lockPath)) Bun.sleepSync(TAKEOVER_WAIT_MS);
  }
  throw new Error(`${lockPath}: could not take the lock (another server keeps taking it)`);
}

/**
 * Another server holds the lock (or takeover lock) at lockPath, which names
 * `owner`: a live process other than this one, or nobody yet while the file
 * is young (being created). Otherwise it is stale: a dead pid, this pid (a
 * former process's), or empty and old.
 */
function heldByAnother(lockPath: string, owner: number | null): boolean {
  return owner === null ? isYoung(lockPath) : owner !== process.pid && isAlive(owner);
}

function refuseIfLive(lockPath: string, owner: number | null): void {
  if (!heldByAnother(lockPath, owner)) return;
  throw new Error(
    owner === null
      ? `${lockPath}: another server may be starting on this data file (its lock file names no process yet; one left like that is taken over after ${STARTING_LOCK_MS / 1000} s)`
      : `${lockPath}: the data file is locked by another running server (pid ${owner}); ` +
          `if no txkv server runs with that pid, remove the lock file`,
  );
}

/** createLock, but a lock held by a live server is named as such even when this process cannot write the directory. */
function createLockUnlessLive(lockPath: string): boolean {
  try {
    return createLock(lockPath);
  } catch (err) {
    refuseIfLive(lockPath, readLockOwner(lockPath));
    throw err;
  }
}

/**
 * Removes the lock if it is still stale, holding the takeover lock
 * (`<lock>.takeover`, made the same way) meanwhile. Under it the lock file
 * cannot change: a new lock is only ever linked where none is, a stale one's
 * owner is gone, and no other server is taking it over. Without it, a server
 * that had seen the lock stale could remove another's fresh one, and both
 * would run. False when another server is taking it over: look again later.
 */
function takeOverStaleLock(lockPath: string): boolean {
  const takeover = `${lockPath}.takeover`;
  if (!createLock(takeover)) {
    if (heldByAnother(takeover, readLockOwner(takeover))) return false;
    // Left by a server killed while taking over (two such servers racing here needs that crash first).
    fs.rmSync(takeover, { force: true });
    return true;
  }
  try {
    if (fs.existsSync(lockPath) && !heldByAnother(lockPath, readLockOwner(lockPath))) fs.rmSync(lockPath, { force: true });
  } finally {
    fs.rmSync(takeover, { force: true });
  }
  return true;
}

/** Errors of link() on file systems that have no hard links. */
const NO_HARD_LINKS = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EXDEV"]);

/** Creates the lock holding this pid; false when a lock file exists already. */
function createLock(lockPath: string): boolean {
  const own = `${lockPath}.${process.pid}`;
  try {
    fs.writeFileSync(own, `${process.pid}\n`);
    fs.linkSync(own, lockPath);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (code === "EEXIST") return false;
    if (NO_HARD_LINKS.has(code)) return createLockInPlace(lockPath);
    throw new Error(`${lockPath}: cannot create the lock file (${errorMessage(err)})`);
  } finally {
    removeQuietly(own);
  }
}

/** Cleans up after an attempt: a failure here (a read-only file system refuses even to remove what is not there) must not hide the attempt's own error. */
function removeQuietly(file: string): void {
  try {
    fs.rmSync(file, { force: true });
  } catch {
    // nothing of ours was left there to remove
  }
}

/** Exclusive create, then the pid: for file systems without hard links (an empty lock may be seen meanwhile). */
function createLockInPlace(lockPath: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(lockPath, "wx");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw new Error(`${lockPath}: cannot create the lock file (${errorMessage(err)})`);
  }
  try {
    fs.writeSync(fd, `${process.pid}\n`);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

/** True when the file was modified less than STARTING_LOCK_MS ago (false when it is gone). */
function isYoung(lockPath: string): boolean {
  try {
    // Either way: a clock that differs from a network file system's must not make an old lock young for hours.
    return Math.abs(Date.now() - fs.statSync(lockPath).mtimeMs) < STARTING_LOCK_MS;
  } catch {
    return false;
  }
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

/** The pid a lock file names: its whole text a positive decimal number (with its line end), else null (`12abc` names no one). */
function readLockOwner(lockPath: string): number | null {
  let text: string;
  try {
    text = fs.readFileSync(lockPath, "utf8").trim();
  } catch {
    return null;
  }
  if (!/^[1-9][0-9]{0,15}$/.test(text)) return null;
  const pid = Number(text);
  return Number.isSafeInteger(pid) ? pid : null;
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
