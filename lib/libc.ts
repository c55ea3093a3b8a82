/**
 * The platform's C library, opened through `bun:ffi`, for the few system
 * calls Node and Bun have no binding for (`flock`, `setsockopt`).
 *
 * Owns: which C library to try on which platform (glibc, then musl on
 * Linux; libSystem on macOS) and reading `errno` after a failed call.
 * Must not: call anything itself; its users decide what to call and what
 * a failure means.
 */
import { dlopen, FFIType, read, type ConvertFns, type Symbols } from "bun:ffi";

export interface Libc<Fns extends Symbols> {
  readonly symbols: ConvertFns<Fns>;
  /** errno of the last failed call: read it right after, before anything else runs on this thread. */
  errno(): number;
}

/** glibc, then musl (Alpine); macOS keeps both in libSystem, errno behind `__error`. */
function candidates(): Array<[library: string, errnoSymbol: string]> {
  if (process.platform === "darwin") return [["libSystem.B.dylib", "__error"]];
  return [
    ["libc.so.6", "__errno_location"],
    [`libc.musl-${process.arch === "arm64" ? "aarch64" : "x86_64"}.so.1`, "__errno_location"],
  ];
}

/** The first C library that loads with all of `functions`, or null where none does. */
export function openLibc<Fns extends Symbols>(functions: Fns): Libc<Fns> | null {
  for (const [library, errnoSymbol] of candidates()) {
    try {
      const { symbols } = dlopen(library, functions);
      const errnoAt = dlopen(library, { [errnoSymbol]: { args: [], returns: FFIType.ptr } }).symbols[errnoSymbol] as () => number | null;
      return { symbols, errno: () => read.i32(errnoAt()!, 0) };
    } catch {
      // not this C library
    }
  }
  return null;
}
