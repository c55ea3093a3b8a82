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

export type FlockResult = "locked" | "busy" | "unsupported";

const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = os.constants.errno.EWOULDBLOCK;

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
  if (c === null) return "unsupported";
  if (c.symbols.flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) === 0) return "locked";
  return c.errno() === EWOULDBLOCK ? "busy" : "unsupported";
}
