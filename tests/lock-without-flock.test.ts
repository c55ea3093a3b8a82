/**
 * A data-file lock that no flock holds (NFS mounted nolock, a file system
 * without such locks, a failing flock call) is taken on its pid alone, and
 * the start says so in a warning: an operator running containers on a shared
 * volume must learn that the lock cannot see them.
 *
 * flock(2) is made to fail with ENOLCK by replacing flockNow while
 * `failFlock` is set. mock.module holds for the whole `bun test` process, so
 * the replacement calls the real one otherwise: other files see no change.
 */
import { afterAll, expect, mock, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { Logger } from "../lib/log.ts";
import * as realKernelLock from "../lib/persistence/kernel-lock.ts";
import { openPersistence } from "../lib/persistence/index.ts";
import { tempDir } from "./helpers.ts";

const realFlockNow = realKernelLock.flockNow;
let failFlock = false;
mock.module("../lib/persistence/kernel-lock.ts", () => ({
  flockNow: (fd: number, exclusive: boolean) =>
    failFlock ? { unsupported: "flock(2) failed: ENOLCK" } : realFlockNow(fd, exclusive),
}));

const dir = tempDir();
afterAll(() => {
  failFlock = false;
  dir.cleanup();
});

test("a lock no flock holds is taken on its pid, with a warning naming the file and the reason", async () => {
  const lines: string[] = [];
  failFlock = true;
  const opened = await openPersistence(
    { path: path.join(dir.path, "data.json"), fsync: "everysec", fsyncIntervalMs: 1000 },
    new Logger("info", (line) => lines.push(line)),
  ).finally(() => (failFlock = false));
  try {
    expect(fs.readFileSync(path.join(dir.path, "data.json.lock"), "utf8")).toStartWith(`${process.pid}\n`);
    const warning = lines.map((line) => JSON.parse(line)).find((entry) => entry.msg.startsWith("no kernel lock (flock)"));
    expect(warning).toMatchObject({ level: "warn", file: path.join(dir.path, "data.json.lock"), reason: "flock(2) failed: ENOLCK" });
  } finally {
    await opened.log.close();
  }
});

test("with flock working again, the start warns of nothing", async () => {
  const lines: string[] = [];
  const opened = await openPersistence(
    { path: path.join(dir.path, "data.json"), fsync: "everysec", fsyncIntervalMs: 1000 },
    new Logger("info", (line) => lines.push(line)),
  );
  await opened.log.close();
  expect(lines.join("\n")).not.toContain("no kernel lock (flock)");
});
