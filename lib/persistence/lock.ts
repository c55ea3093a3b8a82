/**
 * The data-file lock: `<data>.lock`, created exclusively, holding the owner's pid.
 *
 * A second server on the same data file finds the lock held and refuses to
 * start. The owner holds a kernel lock (flock, kernel-lock.ts) on the lock
 * file for as long as it runs: that is what tells a live owner in another
 * PID namespace (another container on the same volume, where the pid means
 * nothing) from a dead one. The pid is the check where flock is missing, and
 * what the messages name. A lock left by a killed server is free and names a
 * dead pid (or a zombie, killed and not yet reaped), or this process's own
 * pid (a container restarted: pid 1 again), or names an earlier boot of
 * this machine (a power cut: its pid may name another process now), and is
 * taken over. The lock holds the pid and, where the system has one, the
 * boot id, a line each.
 *
 * The lock appears with its pid already in it: the pid is written to a file of
 * this process's own (`<lock>.<pid>.<random>`), flocked, which is then hard-linked to the lock's name
 * (link fails when the name exists, as an exclusive create does). Created empty and then
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
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import { errorMessage } from "../errors.ts";
import { flockNow } from "./kernel-lock.ts";
import { removeFile } from "./files.ts";

/** An empty lock younger than this is a server in the middle of creating it (only where hard links fail). */
const STARTING_LOCK_MS = 2000;

const UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
const BOOT_ID = new RegExp(`^${UUID}$`);
/** A pid (a positive decimal number), then optionally a boot id on its own line. */
const LOCK_TEXT = new RegExp(`^([1-9][0-9]{0,15})(?:\\n(${UUID}))?$`);

/**
 * This boot's id (Linux: a random UUID the kernel makes at each boot), written
 * into the lock after the pid; null where the system has none.
 */
const THIS_BOOT = readBootId();

/** While another server takes over a stale lock, look again this often, this many times (2 s in all). */
const TAKEOVER_WAIT_MS = 5;
const TAKEOVER_LOOKS = 400;

/** Each lock this process holds: its path, and the open file that holds the flock on it. */
const held = new Map<string, number>();

/** Logged (with the file and the reason) when acquireLock returns a reason. */
export const PID_ONLY_LOCK_WARNING =
  "no kernel lock (flock) holds the data file's lock: it stands on its pid alone, which a server in another PID namespace (container) or on another host sharing this directory cannot judge";

/**
 * Takes the lock (if this process does not hold it already) or throws an
 * Error whose message names the file and the owner. Returns null, or why the
 * lock stands on its pid alone (no flock holds it), for the caller to warn:
 * then a server in another PID namespace or on another host cannot see it.
 */
export function acquireLock(lockPath: string): string | null {
  if (holdsLock(lockPath)) return null;
  forgetHeld(lockPath); // a lock file of ours that is gone (its directory was removed)
  for (let look = 0; look < TAKEOVER_LOOKS; look++) {
    const fd = createLockUnlessLive(lockPath);
    if (fd !== null) {
      held.set(lockPath, fd);
      return withoutFlock(fd);
    }
    refuseIfLive(lockPath, readLock(lockPath));
    // Stale: its owner is gone (killed), or the file is unreadable or empty and old (killed while creating it).
    // Blocking is fine here: start-up, or a rebuild that holds up writes anyway.
    if (!takeOverStaleLock(lockPath)) Bun.sleepSync(TAKEOVER_WAIT_MS);
  }
  throw new Error(`${lockPath}: could not take the lock (another server keeps taking it)`);
}

/**
 * What holds the lock (or takeover lock) at lockPath, whose text is `lock`:
 * another process's flock; else a live process other than this one (the
 * pid's word alone: a file system without flock); else nobody yet, while
 * the file is young (being created). null: it is stale, free and naming a
 * dead pid, this pid (a former process's), an earlier boot, or nobody and
 * old. The flock comes first: a live owner is never judged by its text.
 */
function holderOf(lockPath: string, lock: LockText | null): "flock" | "pid" | "starting" | null {
  if (flockedElsewhere(lockPath)) return "flock";
  if (lock === null) return isYoung(lockPath) ? "starting" : null;
  // Its pid was given out by an earlier boot: whatever runs under that number now is not the owner.
  if (fromAnotherBoot(lock)) return null;
  return lock.pid !== process.pid && isAlive(lock.pid) ? "pid" : null;
}

function heldByAnother(lockPath: string, lock: LockText | null): boolean {
  return holderOf(lockPath, lock) !== null;
}

/**
 * Throws, naming the owner and what to do, unless the lock is stale. Only a
 * lock held by its pid alone may be a leftover whose pid was reused, so only
 * then is removing it the advice; a flock proves a live holder, whatever the
 * pid names here.
 */
function refuseIfLive(lockPath: string, lock: LockText | null): void {
  const holder = holderOf(lockPath, lock);
  if (holder === null) return;
  if (lock === null) {
    throw new Error(
      unreadableLock(lockPath) ??
        `${lockPath}: another server may be starting on this data file (its lock file names no process yet; one left like that is taken over after ${STARTING_LOCK_MS / 1000} s)`,
    );
  }
  const owner = lock.pid;
  const refused = `${lockPath}: the data file is locked by another running server`;
  if (holder === "pid") throw new Error(`${refused} (pid ${owner}); if no txkv server runs with that pid, remove the lock file`);
  if (owner !== process.pid && isAlive(owner)) throw new Error(`${refused} (pid ${owner}); stop that server first`);
  throw new Error(
    `${refused} (pid ${owner} in its own PID namespace: another container, or another host on this file system); stop that server first`,
  );
}

/** True when a process other than this one holds a flock on the file at lockPath (any PID namespace). */
function flockedElsewhere(lockPath: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(lockPath, "r");
  } catch {
    return false; // gone, or unreadable: the pid decides
  }
  try {
    // A shared lock is a look: two servers looking at once do not see each other as the owner.
    return flockNow(fd, false) === "busy";
  } finally {
    fs.closeSync(fd);
  }
}

/** createLock, but a lock held by a live server is named as such even when this process cannot write the directory. */
function createLockUnlessLive(lockPath: string): number | null {
  try {
    return createLock(lockPath);
  } catch (err) {
    refuseIfLive(lockPath, readLock(lockPath));
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
  const fd = createLock(takeover);
  if (fd === null) {
    if (heldByAnother(takeover, readLock(takeover))) return false;
    // Left by a server killed while taking over (two such servers racing here needs that crash first).
    removeFile(takeover);
    return true;
  }
  try {
    if (fs.existsSync(lockPath) && !heldByAnother(lockPath, readLock(lockPath))) removeFile(lockPath);
  } finally {
    removeFile(takeover);
    fs.closeSync(fd);
  }
  return true;
}

/** Why no flock holds the lock open as fd, or null when one does (asking again on the owning file changes nothing). */
function withoutFlock(fd: number): string | null {
  const flock = flockNow(fd, true);
  return typeof flock === "object" ? flock.unsupported : null;
}

/** Errors of link() on file systems that have no hard links. */
const NO_HARD_LINKS = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EXDEV"]);

/**
 * Creates the lock holding this pid, flocked before it appears under its
 * name; returns the open file that holds the flock (closing it lets the
 * lock go), or null when a lock file exists already.
 */
function createLock(lockPath: string): number | null {
  // Not the pid alone: servers in two containers are both pid 1, and sharing this file they linked a lock
  // neither held a flock on (and one removed it under the other).
  const own = `${lockPath}.${process.pid}.${randomBytes(4).toString("hex")}`;
  let fd: number | null = null;
  try {
    fd = fs.openSync(own, "wx");
    fs.writeSync(fd, lockText());
    // A file nobody else has seen yet: "locked", or "unsupported" where flock is missing; never "busy".
    if (flockNow(fd, true) === "busy") throw new Error(`${own} is flocked by another process`);
    fs.linkSync(own, lockPath);
    const linked = fd;
    fd = null;
    return linked;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "";
    if (code === "EEXIST") return null;
    if (NO_HARD_LINKS.has(code)) return createLockInPlace(lockPath);
    throw new Error(`${lockPath}: cannot create the lock file (${errorMessage(err)})`);
  } finally {
    if (fd !== null) fs.closeSync(fd);
    removeQuietly(own);
  }
}

/** Cleans up after an attempt: a failure here (a read-only file system refuses even to remove what is not there) must not hide the attempt's own error. */
function removeQuietly(file: string): void {
  try {
    removeFile(file);
  } catch {
    // nothing of ours was left there to remove
  }
}

/** Exclusive create, flock, then the pid: for file systems without hard links (an empty lock may be seen meanwhile). */
function createLockInPlace(lockPath: string): number | null {
  let fd: number;
  try {
    fd = fs.openSync(lockPath, "wx");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return null;
    throw new Error(`${lockPath}: cannot create the lock file (${errorMessage(err)})`);
  }
  try {
    if (flockNow(fd, true) === "busy") throw new Error(`${lockPath}: another process holds a flock on the lock file just created`);
    fs.writeSync(fd, lockText());
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return fd;
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

/**
 * True when the lock names a boot of this machine other than the current one.
 * A lock left by a power cut or a reboot names a pid of the boot before,
 * which the new boot's services (started in much the same order) often
 * reuse: without this, a server started at boot refused to start until
 * someone removed the lock. A boot id, not the clock: a clock stepped at boot
 * (no real-time clock, a restored VM) would make a live owner's lock look
 * older than the boot. A lock without one (written where there is no boot
 * id, or by an older txkv) keeps the pid rule. A live owner of this version
 * holds its flock, which is checked first.
 */
function fromAnotherBoot(lock: LockText): boolean {
  return lock.boot !== null && THIS_BOOT !== null && lock.boot !== THIS_BOOT;
}

/** The kernel's id of this boot, or null (not Linux, or unreadable). */
function readBootId(): string | null {
  try {
    const id = fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    return BOOT_ID.test(id) ? id : null;
  } catch {
    return null;
  }
}

/**
 * True when the lock file at lockPath is the one this process created and
 * still holds open. Not its pid: a server in another container can be this
 * same pid.
 */
export function holdsLock(lockPath: string): boolean {
  const fd = held.get(lockPath);
  if (fd === undefined) return false;
  try {
    const ours = fs.fstatSync(fd);
    const there = fs.statSync(lockPath);
    return ours.ino === there.ino && ours.dev === there.dev;
  } catch {
    return false;
  }
}

/** Removes the lock file if (and only if) this process owns it, and lets its flock go. */
export function releaseLock(lockPath: string): void {
  if (holdsLock(lockPath)) {
    try {
      fs.unlinkSync(lockPath);
    } catch {
      // Already gone (data directory removed): nothing to release.
    }
  }
  forgetHeld(lockPath);
}

/** Closes the open file that held the lock at lockPath, if any (the flock goes with it). */
function forgetHeld(lockPath: string): void {
  const fd = held.get(lockPath);
  if (fd === undefined) return;
  held.delete(lockPath);
  try {
    fs.closeSync(fd);
  } catch {
    // closed already
  }
}

/** Why the lock file cannot be read (an I/O error, say), or null when it can or is gone: not to be mistaken for an empty one. */
function unreadableLock(lockPath: string): string | null {
  try {
    fs.readFileSync(lockPath);
    return null;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ENOENT" ? null : `${lockPath}: cannot read the lock file (${errorMessage(err)})`;
  }
}

/** What this process writes into its lock: its pid, then this boot's id (when there is one), a line each. */
function lockText(): string {
  return THIS_BOOT === null ? `${process.pid}\n` : `${process.pid}\n${THIS_BOOT}\n`;
}

/** What a lock file says: the owner's pid, and the boot it was written in (null: not given). */
interface LockText {
  readonly pid: number;
  readonly boot: string | null;
}

/** A lock file's pid and boot id; null when it names no process (`12abc` names no one), or is gone. */
function readLock(lockPath: string): LockText | null {
  let text: string;
  try {
    text = fs.readFileSync(lockPath, "utf8").trim();
  } catch {
    return null;
  }
  const match = LOCK_TEXT.exec(text);
  if (match === null) return null;
  const pid = Number(match[1]);
  return Number.isSafeInteger(pid) ? { pid, boot: match[2] ?? null } : null;
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
