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
 * Owns: calling flock through bun:ffi (Node has no binding for it). Where
 * the C library cannot be loaded, or the file system has no such locks,
 * the answer is "unsupported" and the caller goes by pids alone.
 * Must not: open, create or remove files.
 */
import { dlopen, FFIType, read } from "bun:ffi";
import os from "node:os";

export type FlockResult = "locked" | "busy" | "unsupported";

const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = os.constants.errno.EWOULDBLOCK;

type Libc = { flock(fd: number, operation: number): number; errno(): number };

/** Loaded on first use; null where no C library with flock loads. */
let libc: Libc | null | undefined;

/**
 * Takes a lock on the open file `fd` without waiting: exclusive (the
 * owner's) or shared (a look: many may look at once, none while an owner
 * holds it). "busy": another open file holds a conflicting lock.
 */
export function flockNow(fd: number, exclusive: boolean): FlockResult {
  const c = (libc ??= loadLibc());
  if (c === null) return "unsupported";
  if (c.flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) === 0) return "locked";
  return c.errno() === EWOULDBLOCK ? "busy" : "unsupported";
}

/** glibc, then musl (Alpine); macOS keeps both calls in libSystem, errno behind `__error`. */
function loadLibc(): Libc | null {
  const candidates: Array<[string, string]> =
    process.platform === "darwin"
      ? [["libSystem.B.dylib", "__error"]]
      : [
          ["libc.so.6", "__errno_location"],
          [`libc.musl-${process.arch === "arm64" ? "aarch64" : "x86_64"}.so.1`, "__errno_location"],
        ];
  for (const [name, errnoSymbol] of candidates) {
    try {
      const { symbols } = dlopen(name, {
        flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
        [errnoSymbol]: { args: [], returns: FFIType.ptr },
      });
      const errnoAt = symbols[errnoSymbol] as () => number | null;
      return {
        flock: (fd, operation) => symbols.flock(fd, operation) as number,
        // Read right after the failed call, before anything else can run on this thread.
        errno: () => read.i32(errnoAt()!, 0),
      };
    } catch {
      // not this C library
    }
  }
  return null;
}
