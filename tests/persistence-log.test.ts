/**
 * Unit tests of lib/persistence against temporary directories, no server:
 * restart round trips, group commit, SAVE under concurrent writes, automatic
 * compaction, corrupt and torn files, the lock, and disk failures (data
 * directory removed, disk full) with automatic resumption.
 */
import { afterEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import type { CommitOp } from "../lib/commit-log.ts";
import { Logger } from "../lib/log.ts";
import { DurableLog, openPersistence, type FsyncMode } from "../lib/persistence/index.ts";
import { dataFiles } from "../lib/persistence/files.ts";
import { acquireLock } from "../lib/persistence/lock.ts";
import { Store } from "../lib/store.ts";
import { tempDir as newTempDir, waitFor } from "./helpers.ts";

const dirs: string[] = [];
const openLogs: DurableLog[] = [];

afterEach(async () => {
  for (const log of openLogs.splice(0)) await log.close().catch(() => {});
  // Collect now: a file handle a log failed to close then fails the test that leaked it (Bun reports
  // one closed by the collector as an error), not whichever test runs when the collector gets to it.
  Bun.gc(true);
  await Bun.sleep(20);
  Bun.gc(true);
  for (const dir of dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
});

/** A temporary directory, removed after the test. */
function tempDir(): string {
  const dir = newTempDir();
  dirs.push(dir.path);
  return dir.path;
}

interface Opened {
  log: DurableLog;
  store: Store;
  logLines: string[];
  keysLoaded: number;
  put(key: string, value: unknown): number;
  del(key: string): number;
  tx(ops: [string, unknown | undefined][]): number;
}

async function open(
  dir: string,
  opts: { fsync?: FsyncMode; compactMinBytes?: number; compactPercent?: number } = {},
): Promise<Opened> {
  const logLines: string[] = [];
  const logger = new Logger("debug", (line) => logLines.push(line));
  const opened = await openPersistence(
    {
      path: path.join(dir, "data.json"),
      fsync: opts.fsync ?? "everysec",
      fsyncIntervalMs: 20,
      retryMs: 20,
      compactMinBytes: opts.compactMinBytes,
      compactPercent: opts.compactPercent,
    },
    logger,
  );
  const store = new Store(opened.initial, opened.seq);
  opened.log.attach(store);
  openLogs.push(opened.log);
  const commit = (ops: CommitOp[]) => opened.log.append({ seq: store.apply(ops), ops });
  return {
    log: opened.log,
    store,
    logLines,
    keysLoaded: opened.keysLoaded,
    put: (key, value) => commit([[key, JSON.stringify(value)]]),
    del: (key) => commit([[key, null]]),
    tx: (ops) => commit(ops.map(([k, v]) => [k, v === undefined ? null : JSON.stringify(v)])),
  };
}

async function closeLog(o: Opened): Promise<void> {
  await o.log.close();
  openLogs.splice(openLogs.indexOf(o.log), 1);
}

function contents(store: Store): [string, string][] {
  return [...store.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Every file of the directory with its bytes, to prove nothing was touched. */
function dirBytes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(dir).sort()) out[name] = fs.readFileSync(path.join(dir, name)).toString("base64");
  return out;
}

/**
 * An `always` log whose first write is durable, so that its first round
 * (which also fsyncs the new journal's directory, on the thread pool) is
 * past; durable() is the last seq reported durable.
 */
async function openAlwaysPastFirstRound(dir: string): Promise<Opened & { durable: () => number }> {
  const a = await open(dir, { fsync: "always" });
  let durable = 0;
  a.log.onDurable = (seq) => (durable = seq);
  const first = a.put("first", 1);
  await waitFor(() => durable >= first, 5000, "the first round");
  return { ...a, durable: () => durable };
}

function nextImmediate(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

describe("restart", () => {
  test("puts, deletes and transactions come back after close and reopen", async () => {
    const dir = tempDir();
    const a = await open(dir);
    a.put("k1", "value1");
    a.put("k2", { nested: [1, 2, null] });
    a.put("nullish", null);
    a.put("gone", 1);
    a.del("gone");
    a.tx([
      ["t1", "x"],
      ["t2", 2],
      ["k1", undefined],
    ]);
    const expected = contents(a.store);
    const seq = a.store.seq;
    await closeLog(a);
    expect(fs.existsSync(path.join(dir, "data.json.lock"))).toBe(false);
    const b = await open(dir);
    expect(contents(b.store)).toEqual(expected);
    expect(b.store.seq).toBe(seq);
    expect(b.store.get("nullish")).toBe("null");
  });

  test("a snapshot plus a journal after it come back", async () => {
    const dir = tempDir();
    const a = await open(dir);
    for (let i = 0; i < 100; i++) a.put(`k${i}`, i);
    await a.log.save();
    for (let i = 50; i < 150; i++) a.put(`k${i}`, `v${i}`);
    a.del("k0");
    const expected = contents(a.store);
    await closeLog(a);
    const b = await open(dir);
    expect(contents(b.store)).toEqual(expected);
    expect(b.keysLoaded).toBe(expected.length);
  });

  test("a data.json written by the original server (a plain JSON object) is loaded", async () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, "data.json"), '{"key1": "value1", "key2": {"a": 1}}');
    const a = await open(dir);
    expect(contents(a.store)).toEqual([
      ["key1", '"value1"'],
      ["key2", '{"a":1}'],
    ]);
    a.put("key3", 3);
    await a.log.save();
    await closeLog(a);
    const b = await open(dir);
    expect(b.store.get("key3")).toBe("3");
    expect(b.store.get("key1")).toBe('"value1"');
  });
});

describe("durability", () => {
  test("always: append returns the seq to wait for and onDurable reaches it", async () => {
    const a = await open(tempDir(), { fsync: "always" });
    let durable = 0;
    a.log.onDurable = (seq) => (durable = seq);
    const wait = a.put("k", "v");
    expect(wait).toBe(a.store.seq);
    await waitFor(() => durable >= wait, 5000, "onDurable");
    expect(a.log.stats().pendingRecords).toBe(0);
  });

  test("always: records of one event-loop turn share one fsync (group commit)", async () => {
    const a = await open(tempDir(), { fsync: "always" });
    const calls: number[] = [];
    a.log.onDurable = (seq) => calls.push(seq);
    let last = 0;
    for (let i = 0; i < 500; i++) last = a.put(`k${i}`, i);
    await waitFor(() => calls.at(-1) === last, 5000, "the last seq to be durable");
    expect(calls.length).toBe(1);
  });

  test("always: in the common case the records are durable one loop pass later (fsync on the loop, no thread-pool round)", async () => {
    const a = await openAlwaysPastFirstRound(tempDir());
    const wait = a.put("k", "v");
    // put() scheduled the flush before these immediates; it takes one more look at the loop, then fsyncs.
    await nextImmediate();
    expect(a.durable()).toBeLessThan(wait);
    await nextImmediate();
    expect(a.durable()).toBe(wait);
  });

  test("always: commits made during the flush's extra loop pass share its fsync", async () => {
    const a = await openAlwaysPastFirstRound(tempDir());
    const fsyncsBefore = a.log.stats().fsyncs as number;
    const durableCalls: number[] = [];
    a.log.onDurable = (seq) => durableCalls.push(seq);
    a.put("early", 1);
    // Runs after the flush's first look, as a request read in the next loop pass would.
    let late = 0;
    setImmediate(() => (late = a.put("late", 2)));
    await nextImmediate();
    await nextImmediate();
    expect(late).toBeGreaterThan(0);
    expect(durableCalls).toEqual([late]);
    expect(a.log.stats().fsyncs).toBe(fsyncsBefore + 1);
  });

  test("a journal write that fails with EIO (a failing disk, not a full one) is not retried into that journal: recovery rebuilds (a snapshot, a new journal), then the write is durable", async () => {
    const dir = tempDir();
    const a = await openAlwaysPastFirstRound(dir);
    const original = fs.writeSync;
    let failures = 0;
    fs.writeSync = ((...args: unknown[]) => {
      if (failures++ === 0) throw Object.assign(new Error("EIO: i/o error, write"), { code: "EIO" });
      return (original as (...rest: unknown[]) => number)(...args);
    }) as typeof fs.writeSync;
    try {
      const wait = a.put("k", "v");
      await waitFor(() => a.durable() >= wait && a.log.unavailableReason === null, 5000, "durable after the recovery");
    } finally {
      fs.writeSync = original;
    }
    expect(JSON.stringify(a.log.stats().lastError)).toContain("EIO");
    // What the failed write left in journal 1 is not trusted: the whole state went to a snapshot instead.
    expect(JSON.parse(fs.readFileSync(path.join(dir, "data.json"), "utf8")).data).toEqual({ first: 1, k: "v" });
    expect(fs.readdirSync(dir).filter((name) => name.includes(".journal."))).toEqual(["data.json.journal.2"]);
    await closeLog(a);
    expect(contents((await open(dir)).store)).toEqual([["first", "1"], ["k", '"v"']]);
  });

  test("the directory is fsynced after a new journal's first write and after a snapshot's rename, so neither can be lost in a power cut", async () => {
    const dir = tempDir();
    const realDir = fs.realpathSync(dir);
    const events: string[] = [];
    const probe = await fs.promises.open(dir, "r");
    const handleProto = Object.getPrototypeOf(probe) as { sync(this: { fd: number }): Promise<void> };
    await probe.close();
    const [realSync, realRename] = [handleProto.sync, fs.promises.rename];
    handleProto.sync = function () {
      if (fs.readlinkSync(`/proc/self/fd/${this.fd}`) === realDir) events.push("sync the directory");
      return realSync.call(this);
    };
    fs.promises.rename = (from: fs.PathLike, to: fs.PathLike) => {
      events.push(`rename to ${path.basename(String(to))}`);
      return realRename(from, to);
    };
    try {
      const a = await open(dir, { fsync: "always" });
      let durable = 0;
      a.log.onDurable = (seq) => (durable = seq);
      expect(events).toEqual([]); // the new journal is empty: nothing to lose yet
      const first = a.put("k", 1);
      await waitFor(() => durable >= first, 5000, "the first write");
      expect(events).toEqual(["sync the directory"]);
      await a.log.save();
      // The new journal SAVE switched to (its records are the snapshot's followers), before the snapshot's rename.
      expect(events.slice(1).indexOf("sync the directory")).toBeLessThan(events.slice(1).indexOf("rename to data.json"));
      expect(events.slice(-2)).toEqual(["rename to data.json", "sync the directory"]);
      await closeLog(a);
    } finally {
      handleProto.sync = realSync;
      fs.promises.rename = realRename;
    }
  });

  test("always: a failed on-loop fsync is a persistence failure, and the write is acknowledged only once a rebuild made it durable", async () => {
    const dir = tempDir();
    const a = await openAlwaysPastFirstRound(dir);
    const original = fs.fdatasyncSync;
    let calls = 0;
    // One fsync error (EIO), as a failing disk gives: on Linux the next fsync may "succeed" without the lost pages.
    fs.fdatasyncSync = ((fd: number) => {
      if (calls++ === 0) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
      return original(fd);
    }) as typeof fs.fdatasyncSync;
    try {
      const wait = a.put("k", "v");
      await nextImmediate(); // the flush's extra look
      await nextImmediate(); // the flush, with its fsync
      expect(calls).toBe(1);
      expect(a.durable()).toBeLessThan(wait);
      expect(a.log.unavailableReason).toContain("EIO");
      await waitFor(() => a.durable() >= wait && a.log.unavailableReason === null, 5000, "durable after the rebuild");
    } finally {
      fs.fdatasyncSync = original;
    }
    await a.log.close();
    expect((await open(dir, { fsync: "always" })).store.get("k")).toBe('"v"');
  });

  test("everysec and no: the reply does not wait, the record still reaches the file", async () => {
    for (const fsync of ["everysec", "no"] as const) {
      const dir = tempDir();
      const a = await open(dir, { fsync });
      expect(a.put("k", "v")).toBe(0);
      const journal = String(a.log.stats().journalFile);
      await waitFor(() => fs.readFileSync(journal, "utf8").includes('"k"'), 5000, `the ${fsync} journal write`);
    }
  });
});

describe("compaction", () => {
  test("SAVE writes a valid JSON snapshot and removes the journals it covers", async () => {
    const dir = tempDir();
    const a = await open(dir);
    for (let i = 0; i < 10; i++) a.put(`k${i}`, { i });
    await a.log.save();
    const snapshot = JSON.parse(fs.readFileSync(path.join(dir, "data.json"), "utf8"));
    expect(snapshot.data.k3).toEqual({ i: 3 });
    expect(snapshot.end.keys).toBe(10);
    expect(dataFiles(path.join(dir, "data.json")).listJournalGens()).toEqual([2]);
    expect(fs.existsSync(path.join(dir, "data.json.tmp"))).toBe(false);
  });

  test("SAVE while writes keep coming: the reopened state equals memory", async () => {
    const dir = tempDir();
    const a = await open(dir);
    for (let i = 0; i < 40_000; i++) a.put(`key${i}`, `initial value ${i}`);
    let saving = true;
    let writesDuringSave = 0;
    const saved = a.log.save().finally(() => (saving = false));
    while (saving) {
      const i = writesDuringSave++;
      a.put(`key${(i * 7919) % 45_000}`, `changed ${i}`);
      if (i % 3 === 0) a.del(`key${(i * 104_729) % 40_000}`);
      if (i % 5 === 0) a.tx([[`new${i}`, i], [`key${i % 100}`, undefined]]);
      await nextImmediate();
    }
    await saved;
    expect(writesDuringSave).toBeGreaterThan(1);
    for (let i = 0; i < 100; i++) a.put(`after${i}`, i);
    const expected = contents(a.store);
    await closeLog(a);
    const b = await open(dir);
    expect(contents(b.store)).toEqual(expected);
  });

  test("crash states of a compaction load the same data: before the rename, and after it but before the old journal is deleted", async () => {
    const dir = tempDir();
    const a = await open(dir);
    for (let i = 0; i < 50; i++) a.put(`k${i}`, i);
    await a.log.save(); // data.json at seq 50, journal.2 current
    for (let i = 0; i < 30; i++) a.put(`k${i}`, `second ${i}`);
    a.del("k49");
    await nextImmediate();
    const oldSnapshot = fs.readFileSync(path.join(dir, "data.json"));
    const oldJournal = fs.readFileSync(path.join(dir, "data.json.journal.2"));
    await a.log.save(); // data.json at seq 81, journal.3 current, journal.2 deleted
    a.put("after", "x");
    const expected = contents(a.store);
    await closeLog(a);
    const newSnapshot = fs.readFileSync(path.join(dir, "data.json"));

    // After the rename, before the old journal was deleted: its records are all covered by the snapshot.
    fs.writeFileSync(path.join(dir, "data.json.journal.2"), oldJournal);
    const b = await open(dir);
    expect(contents(b.store)).toEqual(expected);
    await closeLog(b);

    // Before the rename: the old snapshot, the old journal and the new one (and a half-written temp file).
    fs.writeFileSync(path.join(dir, "data.json"), oldSnapshot);
    fs.writeFileSync(path.join(dir, "data.json.journal.2"), oldJournal);
    fs.writeFileSync(path.join(dir, "data.json.tmp"), newSnapshot.subarray(0, 100));
    const c = await open(dir);
    expect(contents(c.store)).toEqual(expected);
    expect(fs.existsSync(path.join(dir, "data.json.tmp"))).toBe(false);
  });

  test("a compaction makes the old journal durable after its last record and before any record goes to the new one (what a power cut needs)", async () => {
    const dir = tempDir();
    const a = await open(dir);
    a.put("k0", 0);
    await nextImmediate();
    // Every journal write and fdatasync, by file name, in order.
    const events: string[] = [];
    const nameOf = (fd: number) => path.basename(fs.readlinkSync(`/proc/self/fd/${fd}`));
    const probe = await fs.promises.open(dir, "r");
    const handleProto = Object.getPrototypeOf(probe) as { datasync(this: { fd: number }): Promise<void> };
    await probe.close();
    const [realWrite, realFdatasync, realDatasync] = [fs.writeSync, fs.fdatasyncSync, handleProto.datasync];
    fs.writeSync = ((fd: number, ...rest: unknown[]) => {
      events.push(`write ${nameOf(fd)}`);
      return (realWrite as (...args: unknown[]) => number)(fd, ...rest);
    }) as typeof fs.writeSync;
    fs.fdatasyncSync = (fd: number) => {
      events.push(`sync ${nameOf(fd)}`);
      realFdatasync(fd);
    };
    handleProto.datasync = function () {
      events.push(`sync ${nameOf(this.fd)}`);
      return realDatasync.call(this);
    };
    try {
      const saving = a.log.save();
      // Writes all along: before the switch (into journal 1) and during the snapshot (into journal 2).
      let writing = true;
      const writer = (async () => {
        for (let i = 0; writing; i++) {
          a.put(`w${i}`, i);
          await nextImmediate();
        }
      })();
      await saving;
      writing = false;
      await writer;
    } finally {
      fs.writeSync = realWrite;
      fs.fdatasyncSync = realFdatasync;
      handleProto.datasync = realDatasync;
    }
    const lastToOld = events.lastIndexOf("write data.json.journal.1");
    const firstToNew = events.indexOf("write data.json.journal.2");
    expect(lastToOld).toBeGreaterThan(-1);
    expect(firstToNew).toBeGreaterThan(lastToOld);
    expect(events.slice(lastToOld, firstToNew)).toContain("sync data.json.journal.1");
    await closeLog(a);
  });

  test("a journal failure while SAVE flushes the old journal stops that SAVE before it writes a snapshot, and the rebuild then makes the write durable", async () => {
    const dir = tempDir();
    const a = await openAlwaysPastFirstRound(dir);
    let storeWalks = 0;
    a.log.attach({
      entries: () => (storeWalks++, a.store.entries()),
      get size() { return a.store.size; },
      get seq() { return a.store.seq; },
    });
    // Hold SAVE inside its thread-pool flush of the old journal, as a slow disk does.
    const journal = (a.log as unknown as { journal: { handle: { datasync: () => Promise<void> } } }).journal;
    const realDatasync = journal.handle.datasync.bind(journal.handle);
    let releaseFlush!: () => void;
    const flushHeld = new Promise<void>((resolve) => (releaseFlush = resolve));
    let flushStarted = false;
    journal.handle.datasync = async () => {
      flushStarted = true;
      await flushHeld;
      return realDatasync();
    };
    const original = fs.fdatasyncSync;
    let failedOnce = false;
    fs.fdatasyncSync = ((fd: number) => {
      if (!failedOnce) {
        failedOnce = true;
        throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
      }
      return original(fd);
    }) as typeof fs.fdatasyncSync;
    try {
      const save = a.log.save();
      await waitFor(() => flushStarted, 5000, "SAVE's flush of the old journal");
      const wait = a.put("k", "v"); // its on-loop fsync fails meanwhile
      await waitFor(() => a.log.unavailableReason !== null, 5000, "the journal failure");
      releaseFlush();
      await expect(save).rejects.toThrow("EIO");
      expect(storeWalks).toBe(0); // it stopped before writing a snapshot the failure would void
      await waitFor(() => a.durable() >= wait && a.log.unavailableReason === null, 5000, "durable after the rebuild");
    } finally {
      fs.fdatasyncSync = original;
      releaseFlush();
    }
    await closeLog(a);
    const reopened = await open(dir, { fsync: "always" });
    expect(reopened.store.get("k")).toBe('"v"');
    expect(reopened.store.get("first")).toBe("1");
  });

  test("a journal fsync that fails while SAVE walks the store voids that SAVE: its last flush does not report the failed write durable, the rebuild does", async () => {
    const dir = tempDir();
    const a = await openAlwaysPastFirstRound(dir);
    // A walk that goes on (filler entries, a slice at a time) until the test has seen the failure.
    let walking = false;
    let released = false;
    a.log.attach({
      *entries() {
        yield* a.store.entries();
        for (let i = 0; !released; i++) {
          walking = true;
          yield [`filler${i}`, "0"];
        }
      },
      get size() { return a.store.size; },
      get seq() { return a.store.seq; },
    });
    // The new journal's first fsync fails (EIO), as a failing disk gives; later ones "succeed", proving nothing.
    const probe = await fs.promises.open(dir, "r");
    const handleProto = Object.getPrototypeOf(probe) as { datasync(this: { fd: number }): Promise<void> };
    await probe.close();
    const realDatasync = handleProto.datasync;
    let failedOnce = false;
    handleProto.datasync = function () {
      if (!failedOnce && fs.readlinkSync(`/proc/self/fd/${this.fd}`).endsWith("data.json.journal.2")) {
        failedOnce = true;
        return Promise.reject(Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" }));
      }
      return realDatasync.call(this);
    };
    try {
      const save = a.log.save();
      await waitFor(() => walking, 5000, "SAVE's walk of the store");
      const wait = a.put("k", "v"); // into the new journal, whose fsync fails
      await waitFor(() => a.log.unavailableReason !== null, 5000, "the journal failure");
      released = true;
      await expect(save).rejects.toThrow("EIO");
      expect(a.durable()).toBeLessThan(wait);
      await waitFor(() => a.durable() >= wait && a.log.unavailableReason === null, 5000, "durable after the rebuild");
    } finally {
      handleProto.datasync = realDatasync;
      released = true;
    }
    await closeLog(a);
    expect(contents((await open(dir, { fsync: "always" })).store)).toEqual([["first", "1"], ["k", '"v"']]);
  });

  test("a graceful close writes a final snapshot with every commit, unless its deadline has passed (then the journal keeps them)", async () => {
    for (const deadlinePassed of [false, true]) {
      const dir = tempDir();
      const a = await open(dir);
      a.put("k", 1);
      a.tx([["t", "x"], ["u", undefined]]);
      await a.log.close(deadlinePassed ? Date.now() - 1 : Date.now() + 60_000);
      openLogs.splice(openLogs.indexOf(a.log), 1);
      const file = path.join(dir, "data.json");
      const journalBytes = dataFiles(file)
        .listJournalGens()
        .map((gen) => fs.statSync(dataFiles(file).journal(gen)).size);
      if (deadlinePassed) {
        expect(fs.existsSync(file)).toBe(false);
        expect(journalBytes.reduce((x, y) => x + y, 0)).toBeGreaterThan(0);
        expect(a.logLines.join("\n")).toContain("final snapshot failed; the journal holds every change");
      } else {
        expect(JSON.parse(fs.readFileSync(file, "utf8")).data).toEqual({ k: 1, t: "x" });
        expect(journalBytes).toEqual([0]);
      }
      const reopened = await open(dir);
      expect(contents(reopened.store)).toEqual([["k", "1"], ["t", '"x"']]);
    }
  });

  test("a final snapshot that fails on the disk is logged, and nothing retries or touches the files after close", async () => {
    const dir = tempDir();
    const a = await open(dir);
    a.put("k", 1);
    const journal = (a.log as unknown as { journal: { handle: { datasync: () => Promise<void> } } }).journal;
    const realDatasync = journal.handle.datasync.bind(journal.handle);
    let calls = 0;
    // close() syncs the journal first (call 1); the final snapshot's flush of it (call 2) fails.
    journal.handle.datasync = async () => {
      if (++calls === 2) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
      return realDatasync();
    };
    await a.log.close(Date.now() + 60_000);
    openLogs.splice(openLogs.indexOf(a.log), 1);
    expect(a.logLines.join("\n")).toContain("final snapshot failed; the journal holds every change");
    expect(fs.readdirSync(dir)).not.toContain("data.json.lock");
    // An operator moves the stopped server's files away (a backup, say): nothing may write new ones.
    const moved = tempDir();
    for (const name of fs.readdirSync(dir)) fs.renameSync(path.join(dir, name), path.join(moved, name));
    await Bun.sleep(150); // several of the failing disk's 20 ms retries, were one still armed
    expect(fs.readdirSync(dir)).toEqual([]);
    expect(contents((await open(moved)).store)).toEqual([["k", "1"]]);
  });

  test("SAVEs that fail while the journal is still empty reuse it: failures over and over add no journal file each", async () => {
    const dir = tempDir();
    const a = await open(dir);
    a.put("k", 1);
    // The snapshot's temp file cannot be created (a directory holds its name): every SAVE fails after the switch.
    fs.mkdirSync(path.join(dir, "data.json.tmp"));
    const files = dataFiles(path.join(dir, "data.json"));
    for (let i = 0; i < 3; i++) await expect(a.log.save()).rejects.toThrow(/snapshot failed/);
    // The first SAVE moved appends to journal 2; the next two found it empty and kept it.
    expect(files.listJournalGens()).toEqual([1, 2]);
    a.put("later", 2);
    fs.rmdirSync(path.join(dir, "data.json.tmp"));
    await a.log.save();
    expect(files.listJournalGens()).toEqual([3]);
    await closeLog(a);
    expect(contents((await open(dir)).store)).toEqual([
      ["k", "1"],
      ["later", "2"],
    ]);
  });

  test("a SAVE with nothing written since the last one keeps the empty journal, and writes after it come back", async () => {
    const dir = tempDir();
    const a = await open(dir);
    a.put("k", 1);
    await a.log.save();
    await a.log.save();
    const files = dataFiles(path.join(dir, "data.json"));
    expect(files.listJournalGens()).toEqual([2]);
    a.put("after", 2);
    await closeLog(a);
    expect(contents((await open(dir)).store)).toEqual([
      ["after", "2"],
      ["k", "1"],
    ]);
  });

  test("a final snapshot that fails after switching journals leaves no journal open: close lets go of the old one too", async () => {
    const dir = tempDir();
    const a = await open(dir);
    a.put("k", 1);
    fs.mkdirSync(path.join(dir, "data.json.tmp")); // the snapshot's temp file cannot be created
    await a.log.close(Date.now() + 60_000);
    openLogs.splice(openLogs.indexOf(a.log), 1);
    expect(a.logLines.join("\n")).toContain("final snapshot failed; the journal holds every change");
    expect(dataFiles(path.join(dir, "data.json")).listJournalGens()).toEqual([1, 2]);
    const openFiles = fs.readdirSync("/proc/self/fd").map((fd) => {
      try {
        return fs.readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return ""; // the listing's own descriptor, closed by now
      }
    });
    expect(openFiles.filter((file) => file.startsWith(dir))).toEqual([]);
    fs.rmdirSync(path.join(dir, "data.json.tmp"));
    expect(contents((await open(dir)).store)).toEqual([["k", "1"]]);
  });

  test("the journal is compacted automatically past its size threshold", async () => {
    const dir = tempDir();
    const a = await open(dir, { compactMinBytes: 2000, compactPercent: 100 });
    for (let i = 0; i < 200; i++) {
      a.put(`k${i % 20}`, "x".repeat(50));
      await nextImmediate();
    }
    await waitFor(() => a.log.stats().lastCompaction !== null, 5000, "an automatic compaction");
    expect(fs.existsSync(path.join(dir, "data.json"))).toBe(true);
    const expected = contents(a.store);
    await closeLog(a);
    expect(contents((await open(dir)).store)).toEqual(expected);
  });
});

describe("start-up with damaged files", () => {
  async function prepare(): Promise<string> {
    const dir = tempDir();
    const a = await open(dir);
    for (let i = 0; i < 20; i++) a.put(`k${i}`, i);
    await a.log.save();
    for (let i = 0; i < 5; i++) a.put(`j${i}`, i);
    await closeLog(a);
    return dir;
  }

  test("a corrupt snapshot is refused, naming the file, and nothing is changed", async () => {
    const dir = await prepare();
    const file = path.join(dir, "data.json");
    const bytes = fs.readFileSync(file);
    bytes[bytes.indexOf('"k5"') + 1] = "X".charCodeAt(0);
    fs.writeFileSync(file, bytes);
    const before = dirBytes(dir);
    await expect(open(dir)).rejects.toThrow(`${file}: corrupt snapshot, checksum mismatch`);
    expect(dirBytes(dir)).toEqual(before);
  });

  test("a snapshot that is not JSON is refused", async () => {
    const dir = tempDir();
    const file = path.join(dir, "data.json");
    fs.writeFileSync(file, "this is not json");
    await expect(open(dir)).rejects.toThrow(`${file}: corrupt snapshot, not valid JSON`);
    expect(fs.readFileSync(file, "utf8")).toBe("this is not json");
  });

  test("an unreadable snapshot is refused", async () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, "data.json"));
    await expect(open(dir)).rejects.toThrow(/data\.json: cannot read the snapshot/);
  });

  test("a damaged journal line before the end is refused and nothing is changed", async () => {
    const dir = await prepare();
    const journal = path.join(dir, "data.json.journal.2");
    const lines = fs.readFileSync(journal, "utf8").split("\n");
    lines[1] = lines[1]!.replace('"seq"', '"seq');
    fs.writeFileSync(journal, lines.join("\n"));
    const before = dirBytes(dir);
    await expect(open(dir)).rejects.toThrow(`${journal}: corrupt journal, line 2: not valid JSON`);
    expect(dirBytes(dir)).toEqual(before);
  });

  test("a torn final record is dropped with a warning and cut off; later appends follow clean", async () => {
    const dir = await prepare();
    const journal = path.join(dir, "data.json.journal.2");
    const clean = fs.readFileSync(journal);
    fs.appendFileSync(journal, '{"seq":99,"ops":[["torn","val');
    const a = await open(dir);
    expect(a.store.get("torn")).toBeUndefined();
    expect(a.store.get("j4")).toBe("4");
    expect(a.logLines.some((l) => l.includes('"level":"warn"') && l.includes("torn final journal record"))).toBe(true);
    expect(fs.readFileSync(journal)).toEqual(clean);
    a.put("after", "ok");
    const expected = contents(a.store);
    await closeLog(a);
    expect(contents((await open(dir)).store)).toEqual(expected);
  });
});

describe("a torn record in a journal that is not the newest", () => {
  async function prepareTorn() {
    const dir = tempDir();
    const a = await open(dir);
    for (let i = 0; i < 5; i++) a.put(`k${i}`, i);
    await closeLog(a);
    const journal = path.join(dir, "data.json.journal.1");
    const clean = fs.readFileSync(journal);
    fs.appendFileSync(journal, '{"seq":6,"ops":[["torn","val');
    return { dir, journal, clean };
  }

  test("in a journal followed by a newer, empty one (kill -9 as a compaction switched journals): cut; appends go to the newest", async () => {
    const { dir, journal, clean } = await prepareTorn();
    const newer = path.join(dir, "data.json.journal.2");
    fs.writeFileSync(newer, "");
    const a = await open(dir);
    expect(a.store.get("torn")).toBeUndefined();
    expect(a.store.get("k4")).toBe("4");
    expect(a.logLines.some((l) => l.includes("torn final journal record"))).toBe(true);
    expect(fs.readFileSync(journal)).toEqual(clean);
    a.put("after", "ok");
    const expected = contents(a.store);
    await closeLog(a);
    expect(fs.readFileSync(newer, "utf8")).toContain('"after"');
    expect(contents((await open(dir)).store)).toEqual(expected);
  });

  test("before a newer journal with records (no crash leaves that): corruption, refused, nothing changed", async () => {
    const { dir, journal } = await prepareTorn();
    fs.writeFileSync(path.join(dir, "data.json.journal.2"), '{"seq":7,"ops":[["late","1"]]}\n');
    const before = dirBytes(dir);
    await expect(open(dir)).rejects.toThrow(`${journal}: corrupt journal, line 6:`);
    await expect(open(dir)).rejects.toThrow("before a newer journal file with records");
    expect(dirBytes(dir)).toEqual(before);
  });

  test("an unreadable last line with its line end, before an empty newer journal (a power cut as a rebuild switched journals): cut too", async () => {
    const { dir, journal, clean } = await prepareTorn();
    fs.appendFileSync(journal, "\u0000\u0000\n");
    fs.writeFileSync(path.join(dir, "data.json.journal.2"), "");
    const a = await open(dir);
    expect(a.store.get("k4")).toBe("4");
    expect(fs.readFileSync(journal)).toEqual(clean);
  });
});

describe("records follow the snapshot without gaps", () => {
  test("a deleted journal file or a snapshot older than the journals is refused, naming the missing seq", async () => {
    const dir = tempDir();
    const a = await open(dir);
    for (let i = 0; i < 3; i++) a.put(`k${i}`, i);
    await a.log.save(); // snapshot at seq 3, a new journal
    for (let i = 3; i < 6; i++) a.put(`k${i}`, i);
    const snapshotAt3 = fs.readFileSync(path.join(dir, "data.json"));
    await a.log.save(); // snapshot at seq 6
    for (let i = 6; i < 8; i++) a.put(`k${i}`, i);
    await closeLog(a);
    // The snapshot of seq 3 put back in place: the records 4-6 are in no file left.
    fs.writeFileSync(path.join(dir, "data.json"), snapshotAt3);
    const before = dirBytes(dir);
    await expect(open(dir)).rejects.toThrow("seq 7 where seq 4 was expected: records are missing");
    expect(dirBytes(dir)).toEqual(before);
  });
});

describe("a data path that is a symbolic link", () => {
  test("the files live beside the target; journal files beside the link itself are refused, not ignored", async () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, "real"));
    const a = await open(path.join(dir, "real"));
    a.put("k", 1);
    await closeLog(a);
    const link = path.join(dir, "link.json");
    fs.symlinkSync(path.join(dir, "real", "data.json"), link);
    const logger = new Logger("error", () => {});
    const options = { path: link, fsync: "everysec", fsyncIntervalMs: 20 } as const;
    const opened = await openPersistence(options, logger);
    expect(opened.initial.get("k")).toBe("1");
    await opened.log.close();
    fs.writeFileSync(path.join(dir, "link.json.journal.1"), '{"seq":2,"ops":[["lost","1"]]}\n');
    await expect(openPersistence(options, logger)).rejects.toThrow("journal files sit beside the link (link.json.journal.1)");
  });

  test("a path through a linked directory is no link to the file: it restarts as often as you like", async () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, "real"));
    fs.symlinkSync(path.join(dir, "real"), path.join(dir, "alias"));
    for (let run = 0; run < 3; run++) {
      const a = await open(path.join(dir, "alias"));
      a.put(`run${run}`, run);
      await closeLog(a);
    }
    expect(contents((await open(path.join(dir, "real"))).store).map(([k]) => k)).toEqual(["run0", "run1", "run2"]);
  });

  test("a relative link with .. inside a linked directory is followed as the kernel follows it, also before the file exists", async () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, "x", "y"), { recursive: true });
    fs.symlinkSync(path.join(dir, "x", "y"), path.join(dir, "a"));
    fs.symlinkSync("../data.json", path.join(dir, "x", "y", "link.json")); // from x/y: x/data.json
    expect(dataFiles(path.join(dir, "a", "link.json")).snapshot).toBe(path.join(fs.realpathSync(dir), "x", "data.json"));
  });
});

describe("lock", () => {
  test("a lock held by a live process refuses the start and changes nothing", async () => {
    const dir = tempDir();
    const owner = Bun.spawn(["sleep", "30"]);
    try {
      fs.writeFileSync(path.join(dir, "data.json.lock"), `${owner.pid}\n`);
      const before = dirBytes(dir);
      await expect(open(dir)).rejects.toThrow(`locked by another running server (pid ${owner.pid})`);
      expect(dirBytes(dir)).toEqual(before);
    } finally {
      owner.kill("SIGKILL");
      await owner.exited;
    }
    const a = await open(dir);
    expect(a.store.size).toBe(0);
  });

  test("a lock held by a live process is named as such even when this process cannot write its own lock file there", async () => {
    const dir = tempDir();
    const owner = Bun.spawn(["sleep", "30"]);
    try {
      // A lock whose name leaves no room for the file this process writes its pid to first (`<lock>.<pid>.<random>`):
      // creating that fails (ENAMETOOLONG), as in a directory this process may not write.
      const lock = path.join(dir, "l".repeat(250));
      fs.writeFileSync(lock, `${owner.pid}\n`);
      expect(() => acquireLock(lock)).toThrow(`locked by another running server (pid ${owner.pid})`);
    } finally {
      owner.kill("SIGKILL");
      await owner.exited;
    }
  });

  test("a directory where the lock file goes refuses the start, saying so, and is left where it is", async () => {
    const dir = tempDir();
    fs.mkdirSync(path.join(dir, "data.json.lock"));
    const old = new Date(Date.now() - 60_000);
    fs.utimesSync(path.join(dir, "data.json.lock"), old, old);
    await expect(open(dir)).rejects.toThrow("data.json.lock: a directory is where the lock file goes");
    expect(fs.readdirSync(dir)).toEqual(["data.json.lock"]);
  });

  test("a lock file that cannot be read (here a directory; on a failing disk, EIO) is named as such, not as a server starting", () => {
    const lock = path.join(tempDir(), "data.json.lock");
    fs.mkdirSync(lock); // young: its read error is what must be said
    expect(() => acquireLock(lock)).toThrow(`${lock}: cannot read the lock file (EISDIR`);
  });

  test("a lock left by a dead process does not block the next start", async () => {
    const dir = tempDir();
    const dead = Bun.spawn(["true"]);
    await dead.exited;
    fs.writeFileSync(path.join(dir, "data.json.lock"), `${dead.pid}\n`);
    const a = await open(dir);
    expect(fs.readFileSync(path.join(dir, "data.json.lock"), "utf8").split("\n")[0]).toBe(String(process.pid));
    await closeLog(a);
  });

  test.each([
    ["no lock there before", false],
    ["a stale lock (a dead pid) there before", true],
  ])("three processes trying to take the same lock at the same moment, %s: exactly one gets it, every time", async (_name, stale) => {
    const dir = tempDir();
    const count = 1000;
    if (stale) {
      const dead = Bun.spawn(["true"]);
      await dead.exited;
      for (let i = 0; i < count; i++) fs.writeFileSync(path.join(dir, `lock${i}`), `${dead.pid}\n`);
    }
    const startAt = Date.now() + 700;
    const racers = [0, 1, 2].map(() =>
      Bun.spawn([process.execPath, path.join(import.meta.dir, "lock-racer.ts"), dir, String(count), String(startAt)], { stdout: "pipe" }),
    );
    const taken = await Promise.all(racers.map(async (racer) => JSON.parse(await firstLine(racer.stdout)) as number[]));
    await Promise.all(racers.map((racer) => racer.exited));
    const takers = new Map<number, number>();
    for (const indexes of taken) for (const i of indexes) takers.set(i, (takers.get(i) ?? 0) + 1);
    expect([...takers].filter(([, n]) => n > 1)).toEqual([]);
    expect(takers.size).toBe(count);
    // Nothing but the locks is left behind (the files the pids were written to first, the takeover locks).
    expect(fs.readdirSync(dir).filter((name) => !/^lock\d+$/.test(name))).toEqual([]);
  }, 30000);

  test("an empty lock file counts as a server starting while it is young (refused) and as stale once older (taken over)", async () => {
    const dir = tempDir();
    const lock = path.join(dir, "data.json.lock");
    fs.writeFileSync(lock, "");
    await expect(open(dir)).rejects.toThrow("another server may be starting on this data file (its lock file names no process yet");
    expect(fs.readFileSync(lock, "utf8")).toBe("");
    const old = new Date(Date.now() - 60_000);
    fs.utimesSync(lock, old, old);
    const a = await open(dir);
    expect(fs.readFileSync(lock, "utf8").split("\n")[0]).toBe(String(process.pid));
    await closeLog(a);
  });

  test("an unheld lock naming this very pid (a container restarted after kill -9 is pid 1 again) is a former process's: taken over", async () => {
    const dir = tempDir();
    const lock = path.join(dir, "data.json.lock");
    const boot = fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    fs.writeFileSync(lock, `${process.pid}\n${boot}\n`);
    const old = new Date(Date.now() - 60_000);
    fs.utimesSync(lock, old, old);
    const a = await open(dir);
    expect(fs.readFileSync(lock, "utf8").split("\n")[0]).toBe(String(process.pid));
    await closeLog(a);
  });

  test("a lock naming no process whose time is in the future (a clock that differs from a file server's) is not young: taken over", async () => {
    const dir = tempDir();
    const lock = path.join(dir, "data.json.lock");
    fs.writeFileSync(lock, "");
    const future = new Date(Date.now() + 3_600_000);
    fs.utimesSync(lock, future, future);
    const a = await open(dir);
    expect(fs.readFileSync(lock, "utf8").split("\n")[0]).toBe(String(process.pid));
    await closeLog(a);
  });

  test("a lock holding anything but a pid (`1 hello`: not pid 1, which is alive; `12abc`) names no process: refused while young, taken over once old", async () => {
    for (const text of ["1 hello\n", "12abc", "-5", "0"]) {
      const dir = tempDir();
      const lock = path.join(dir, "data.json.lock");
      fs.writeFileSync(lock, text);
      await expect(open(dir)).rejects.toThrow("its lock file names no process yet");
      const old = new Date(Date.now() - 60_000);
      fs.utimesSync(lock, old, old);
      const a = await open(dir);
      expect(fs.readFileSync(lock, "utf8").split("\n")[0]).toBe(String(process.pid));
      await closeLog(a);
    }
  });

  test("a lock left by a killed process that its parent has not reaped yet (a zombie) does not block the next start", async () => {
    const dir = tempDir();
    // The shell starts a child, prints its pid and becomes `sleep`, which never
    // reaps: the child stays a zombie after it exits, as a killed server does
    // until a slow parent collects it.
    const parent = Bun.spawn(["bash", "-c", "sleep 0.01 & echo $!; exec sleep 30"], { stdout: "pipe" });
    try {
      const zombie = Number(await firstLine(parent.stdout));
      await waitFor(() => fs.readFileSync(`/proc/${zombie}/stat`, "utf8").split(") ")[1]!.startsWith("Z"), 5000, "the child to become a zombie");
      fs.writeFileSync(path.join(dir, "data.json.lock"), `${zombie}\n`);
      const a = await open(dir);
      expect(fs.readFileSync(path.join(dir, "data.json.lock"), "utf8").split("\n")[0]).toBe(String(process.pid));
      await closeLog(a);
    } finally {
      parent.kill("SIGKILL");
      await parent.exited;
    }
  });
});

/** The first line a process prints (its stdout stays open after it). */
async function firstLine(stdout: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of stdout) {
    text += decoder.decode(chunk, { stream: true });
    if (text.includes("\n")) break;
  }
  return text.slice(0, text.indexOf("\n"));
}

/**
 * A log (`always` unless told) whose journal is a "disk" that is always full
 * (/dev/full: every write fails with ENOSPC), and with fullSnapshot its
 * snapshot's temp file too; put() commits one key through it.
 */
async function logOnFullDisk(dir: string, opts: { retryMs: number; fullSnapshot?: boolean; fsync?: FsyncMode }) {
  const files = dataFiles(path.join(dir, "data.json"));
  fs.symlinkSync("/dev/full", files.journal(1));
  if (opts.fullSnapshot) fs.symlinkSync("/dev/full", files.snapshotTemp);
  acquireLock(files.lock);
  const handle = await fs.promises.open(files.journal(1), "a");
  const settings = { fsync: opts.fsync ?? "always", fsyncIntervalMs: 20, retryMs: opts.retryMs, compactMinBytes: 1e9, compactPercent: 100, sliceMs: 1 } as const;
  const log = new DurableLog(files, settings, new Logger("error", () => {}), {
    journal: { gen: 1, path: files.journal(1), handle, bytes: 0 },
    journalCreated: false,
    seq: 0,
    snapshotSeq: 0,
    snapshotBytes: 0,
  });
  openLogs.push(log);
  const store = new Store();
  log.attach(store);
  const put = (key: string, value: string) => log.append({ seq: store.apply([[key, value]]), ops: [[key, value]] });
  return { files, log, put };
}

describe("failures while running", () => {
  test("data directory removed: writes refused with the reason, then resumed when it is back", async () => {
    const dir = tempDir();
    const a = await openAlwaysPastFirstRound(dir);
    fs.rmSync(dir, { recursive: true });
    await waitFor(() => a.log.unavailableReason !== null, 5000, "the removal to be noticed");
    expect(a.log.unavailableReason).toMatch(/removed|ENOENT/);
    expect(a.log.stats().available).toBe(false);
    expect(a.store.get("first")).toBe("1");
    fs.mkdirSync(dir);
    await waitFor(() => a.log.unavailableReason === null, 5000, "persistence to resume");
    const second = a.put("after", 2);
    await waitFor(() => a.durable() >= second, 5000, "the write after resuming to be durable");
    expect(fs.readFileSync(path.join(dir, "data.json.lock"), "utf8").split("\n")[0]).toBe(String(process.pid));
    const expected = contents(a.store);
    await closeLog(a);
    expect(contents((await open(dir)).store)).toEqual(expected);
  });

  test("data directory removed, then recreated and used by another server: this one never overwrites it", async () => {
    const dir = tempDir();
    const a = await openAlwaysPastFirstRound(dir);
    fs.rmSync(dir, { recursive: true });
    await waitFor(() => a.log.unavailableReason !== null, 5000, "the removal to be noticed");
    fs.mkdirSync(dir);
    const b = await open(dir); // the lock went with the old directory: a second server starts there
    b.put("from-b", 1);
    await closeLog(b); // and stops cleanly, releasing the lock
    await waitFor(() => JSON.stringify(a.log.stats().lastError).includes("came back holding other data files"), 5000, "a refusal to take over");
    expect(a.log.unavailableReason).toContain("not overwriting them");
    expect(contents((await open(dir)).store)).toEqual([["from-b", "1"]]);
  });

  test("disk full: records are kept in order, writes refused, then everything lands once the disk works", async () => {
    const dir = tempDir();
    const { files, log, put } = await logOnFullDisk(dir, { retryMs: 20 });
    let durable = 0;
    log.onDurable = (seq) => (durable = seq);
    put("k1", "1");
    const held = put("k2", "2");
    await waitFor(() => log.unavailableReason !== null, 5000, "the write error");
    expect(log.unavailableReason).toMatch(/ENOSPC|no space left/i);
    // Several retries, all failing: each failure records a new lastError.
    const failures = new Set<unknown>();
    await waitFor(() => failures.add(log.stats().lastError).size >= 3, 5000, "three failed retries");
    expect(log.unavailableReason).not.toBeNull();
    expect(durable).toBe(0);
    expect(log.stats().pendingRecords).toBe(2);
    // The disk "works again": the full file is replaced by a real directory entry.
    fs.rmSync(files.journal(1));
    await waitFor(() => log.unavailableReason === null, 5000, "persistence to resume");
    await waitFor(() => durable >= held, 5000, "the held writes to become durable");
    expect(log.stats().lastError).not.toBeNull();
    await log.close();
    openLogs.splice(openLogs.indexOf(log), 1);
    const b = await open(dir);
    expect(contents(b.store)).toEqual([
      ["k1", "1"],
      ["k2", "2"],
    ]);
  });

  test("a shutdown on a full disk keeps retrying for a while: space freed a moment later, nothing acknowledged is lost (everysec)", async () => {
    const dir = tempDir();
    const { files, log, put } = await logOnFullDisk(dir, { retryMs: 20, fsync: "everysec" });
    put("acked", '"1"'); // everysec: acknowledged at once, written later
    await waitFor(() => log.unavailableReason !== null, 5000, "the write error");
    const failedAt = () => JSON.stringify(log.stats().lastError);
    const before = failedAt();
    const closing = log.close();
    await waitFor(() => failedAt() !== before, 5000, "the shutdown's first attempt to fail");
    fs.rmSync(files.journal(1), { force: true }); // the disk has room again (unless a rebuild moved off it first)
    await closing;
    openLogs.splice(openLogs.indexOf(log), 1);
    expect(contents((await open(dir)).store)).toEqual([["acked", '"1"']]);
  });

  test("a shutdown whose last flush is the first to fail (fsync EIO) retries: a rebuild makes the acknowledged write durable and close succeeds", async () => {
    const dir = tempDir();
    const a = await open(dir, { fsync: "everysec" });
    a.put("acked", 1); // everysec: acknowledged at once, still in the queue
    const journal = (a.log as unknown as { journal: { handle: { datasync: () => Promise<void> } } }).journal;
    const realDatasync = journal.handle.datasync.bind(journal.handle);
    let calls = 0;
    journal.handle.datasync = async () => {
      if (++calls === 1) throw Object.assign(new Error("EIO: i/o error, fdatasync"), { code: "EIO" });
      return realDatasync();
    };
    expect(a.log.unavailableReason).toBeNull();
    await closeLog(a); // before the fix: rejected at once with the EIO, no retry
    expect(calls).toBe(1);
    expect(a.logLines.join("\n")).toContain("persistence resumed");
    expect(fs.readdirSync(dir)).not.toContain("data.json.lock");
    expect(contents((await open(dir)).store)).toEqual([["acked", "1"]]);
  });

  test("a journal that cannot be looked at as it is opened at start (fstat EIO) fails the start cleanly: its handle is closed, the lock released", async () => {
    const dir = tempDir();
    const realOpen = fs.promises.open;
    fs.promises.open = (async (...args: Parameters<typeof realOpen>) => {
      const handle = await realOpen(...args);
      if (String(args[0]).includes(".journal.")) {
        handle.stat = (async () => {
          throw Object.assign(new Error("EIO: i/o error, fstat"), { code: "EIO" });
        }) as typeof handle.stat;
      }
      return handle;
    }) as typeof realOpen;
    try {
      await expect(open(dir)).rejects.toThrow(/EIO/);
    } finally {
      fs.promises.open = realOpen;
    }
    // Left open, the collector would close the handle, which Bun reports as an uncaught error (the server exited).
    Bun.gc(true);
    await Bun.sleep(20);
    Bun.gc(true);
    expect(fs.readdirSync(dir)).not.toContain("data.json.lock");
    expect((await open(dir)).keysLoaded).toBe(0);
  });

  test("disk full: a rebuild whose snapshot fails leaves the journal untrusted; a write is acknowledged only once a rebuild completes", async () => {
    const dir = tempDir();
    // The snapshot's temp file is on the full "disk" too.
    const { files, log, put } = await logOnFullDisk(dir, { retryMs: 5, fullSnapshot: true });
    let durable = 0;
    let snapshotWhenDurable = null as string | null;
    log.onDurable = (seq) => {
      durable = seq;
      snapshotWhenDurable = fs.existsSync(files.snapshot) ? fs.readFileSync(files.snapshot, "utf8") : null;
    };
    put("k1", '"1"');
    const held = put("k2", '"2"');
    // The write fails (ENOSPC); the retries write the journal again until one of them rebuilds:
    // it switches to a new journal (generation 2), and its snapshot fails on the full temp file.
    await waitFor(() => fs.existsSync(files.journal(2)), 5000, "a rebuild");
    // That failed snapshot removed its temp file, so the next rebuild succeeds. Before the fix the
    // next retry instead fsynced the new, empty journal and acknowledged k1 and k2, which were on no disk.
    await waitFor(() => durable >= held, 5000, "the held writes to become durable");
    expect(snapshotWhenDurable).toContain('"k2"');
    await log.close();
    openLogs.splice(openLogs.indexOf(log), 1);
    fs.rmSync(files.journal(1), { force: true });
    const b = await open(dir);
    expect(contents(b.store)).toEqual([
      ["k1", '"1"'],
      ["k2", '"2"'],
    ]);
  });
});
