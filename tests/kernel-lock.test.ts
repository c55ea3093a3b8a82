/** flockNow (lib/persistence/kernel-lock.ts): flock through bun:ffi, as the data-file lock uses it. */
import { afterEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { flockNow } from "../lib/persistence/kernel-lock.ts";
import { tempDir } from "./helpers.ts";

const opened: number[] = [];
const dirs: { cleanup(): void }[] = [];
afterEach(() => {
  for (const fd of opened.splice(0)) fs.closeSync(fd);
  for (const dir of dirs.splice(0)) dir.cleanup();
});

function openFile(file: string): number {
  const fd = fs.openSync(file, "a");
  opened.push(fd);
  return fd;
}

describe("flockNow", () => {
  test("an exclusive lock keeps every other open file out until it is closed; shared looks do not block each other", () => {
    const dir = tempDir();
    dirs.push(dir);
    const file = path.join(dir.path, "lock");
    const owner = openFile(file);
    expect(flockNow(owner, true)).toBe("locked");
    expect(flockNow(openFile(file), false)).toBe("busy");
    expect(flockNow(openFile(file), true)).toBe("busy");
    fs.closeSync(opened.shift()!); // the owner's file: its flock goes with it, as at a process's death
    const look = openFile(file);
    expect(flockNow(look, false)).toBe("locked");
    expect(flockNow(openFile(file), false)).toBe("locked");
    expect(flockNow(openFile(file), true)).toBe("busy");
  });

  test("a file that is not open is no lock, not a busy one", () => {
    expect(flockNow(987_654, true)).toEqual({ unsupported: "flock(2) failed: EBADF" });
  });
});
