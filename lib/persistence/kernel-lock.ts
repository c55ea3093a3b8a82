/**
 * Kernel advisory locks (flock(2)) on an open file: what tells a live lock
 * owner from a dead one, whatever PID namespace (container) it runs in.
 *
 * A pid means nothing across PID namespaces: a server in a container is
 * pid 1, so a second container on the same volume read the first one's
 * lock as its own former process's, took it over, and both served. A flock
 * belongs to an open file, the kernel drops it when its process dies
 * (`kill -9` included), and every process on the same kernel sees it
 * (on NFS, Linux maps it to a lock the server sees, across hosts).
 *
 * Owns: calling flock through the C library (lib/libc.ts; Node has no binding for it). Where
 * the C library cannot be loaded, or the file system has no such locks,
 * the answer is "unsupported" and the caller goes by pids alone.
 * Must not: open, create or remove files.
 */
import { FFIType } from "bun:ffi";
import os from "node:os";
import { openLibc, type Libc } from "../libc.ts";

/** "unsupported": no lock was taken, and why (the caller goes by pids alone). */
export type FlockResult = "locked" | "busy" | { readonly unsupported: string };

const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = os.constants.errno.EWOULDBLOCK;
const EINTR = os.constants.errno.EINTR;
const NO_LIBC = { unsupported: "no C library with flock(2) could be loaded" } as const;

const FLOCK = { flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 } } as const;

/** Loaded on first use; null where no C library with flock loads. */
let libc: Libc<typeof FLOCK> | null | undefined;

/**
 * Takes a lock on the open file `fd` without waiting: exclusive (the
 * owner's) or shared (a look: many may look at once, none while an owner
 * holds it). "busy": another open file holds a conflicting lock.
 */
export function flockNow(fd: number, exclusive: boolean): FlockResult {
  const c = (libc ??= openLibc(FLOCK));
  if (c === null) return NO_LIBC;
  for (;;) {
    if (c.symbols.flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) === 0) return "locked";
    const errno = c.errno();
    if (errno === EINTR) continue; // a signal arrived during the call: it took nothing, ask again
    if (errno === EWOULDBLOCK) return "busy";
    // ENOLCK (NFS mounted nolock), EINVAL/EOPNOTSUPP (a file system without such locks), EIO ...
    return { unsupported: `flock(2) failed: ${errnoName(errno)}` };
  }
}

function errnoName(errno: number): string {
  const name = Object.entries(os.constants.errno).find(([, value]) => value === errno)?.[0];
  return name ?? `errno ${errno}`;
}
