/**
 * Persistence end to end, through real server subprocesses: restart round
 * trips, SIGINT/SIGTERM flushing, kill -9 loops (no acknowledged write lost
 * under `always`, no half transaction under `everysec`), kill -9 during a
 * compaction and during the store's growth, damaged files at start-up, the
 * lock, and the data directory disappearing and coming back while the
 * server runs.
 */
import { afterEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { LineClient, runIndex, spawnServer, tempDir, waitFor, type ServerProcess } from "./helpers.ts";

const cleanups: (() => void | Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function dataDir(): string {
  const dir = tempDir();
  cleanups.push(dir.cleanup);
  return dir.path;
}

async function start(dir: string, args: string[] = []): Promise<ServerProcess> {
  const server = await spawnServer(["--data", path.join(dir, "data.json"), "--fsync-interval-ms", "50", ...args]);
  cleanups.push(async () => {
    server.proc.kill("SIGKILL");
    await server.exited;
  });
  return server;
}

async function client(server: ServerProcess): Promise<LineClient> {
  const c = await LineClient.connect(server.port);
  cleanups.push(() => c.close());
  return c;
}

async function persistenceStats(c: LineClient): Promise<Record<string, unknown>> {
  const reply = await c.request("STATS");
  return (reply.result as { persistence: Record<string, unknown> }).persistence;
}

/** Many PUTs in one write; every reply must be Ok. */
async function putMany(c: LineClient, entries: [string, string][]): Promise<void> {
  const replies = await c.pipeline(entries.map(([k, v]) => `PUT ${k} ${v}`));
  for (const reply of replies) expect(reply.status).toBe("Ok");
}

/**
 * Runs each writer step in a loop until the server is killed with SIGKILL
 * once `killWhen` resolves; a writer failing after the kill is expected.
 */
async function killWhileWriting(server: ServerProcess, steps: (() => Promise<void>)[], killWhen: () => Promise<void>): Promise<void> {
  let killed = false;
  const loops = steps.map(async (step) => {
    try {
      while (!killed) await step();
    } catch (err) {
      if (!killed) throw err;
    }
  });
  await killWhen();
  killed = true;
  server.proc.kill("SIGKILL");
  await server.exited;
  await Promise.all(loops);
}

/** A random moment 150-400 ms from now. */
const randomMoment = () => Bun.sleep(150 + Math.floor(Math.random() * 250));

function fileBytes(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fs.readdirSync(dir).sort()) out[name] = fs.readFileSync(path.join(dir, name)).toString("base64");
  return out;
}

describe("restart", () => {
  test("SIGTERM flushes, exits 0, and a restart reloads everything with a log line", async () => {
    const dir = dataDir();
    const a = await start(dir);
    const c = await client(a);
    await putMany(c, [["k1", "value one"], ["k2", "two"]]);
    expect((await c.request('PUT {"key":"json key","value":{"n":[1,2.5,null]}}')).status).toBe("Ok");
    const tx = await c.pipeline(["START", "PUT t1 x", "DEL k2", "COMMIT"]);
    expect(tx.map((r) => r.status)).toEqual(["Ok", "Ok", "Ok", "Ok"]);
    expect(await a.kill("SIGTERM")).toBe(0);

    const b = await start(dir);
    expect(b.stderr()).toMatch(/loaded 3 keys in \d+ ms/);
    const d = await client(b);
    expect((await d.request("GET k1")).result).toEqual({ key: "k1", value: "value one" });
    expect((await d.request("GET k2")).code).toBe("NOT_FOUND");
    expect((await d.request("GET t1")).result).toEqual({ key: "t1", value: "x" });
    expect((await d.request('GET {"key":"json key"}')).result).toEqual({ key: "json key", value: { n: [1, 2.5, null] } });
  });

  test("a transaction of plain PUTs (committed from their bytes) is one journal record, all of it back after kill -9 under always", async () => {
    const dir = dataDir();
    const a = await start(dir, ["--fsync", "always"]);
    const c = await client(a);
    await putMany(c, [["acct:a", "100"], ["acct:b", "0"]]);
    const transfer = await c.pipeline(["START", "GET acct:a", "GET acct:b", "PUT acct:a 70", "PUT acct:b 30", "GET acct:a", "PUT note moved 30", "COMMIT"]);
    expect(transfer.map((r) => r.status)).toEqual(["Ok", "Ok", "Ok", "Ok", "Ok", "Ok", "Ok", "Ok"]);
    expect(transfer[5]!.result).toEqual({ key: "acct:a", value: "70" });
    const journal = fs.readdirSync(dir).find((name) => name.includes(".journal."))!;
    const records = fs.readFileSync(path.join(dir, journal), "utf8").trimEnd().split("\n").map((line) => JSON.parse(line));
    expect(records.at(-1)).toMatchObject({ ops: [["acct:a", "70"], ["acct:b", "30"], ["note", "moved 30"]] });
    a.proc.kill("SIGKILL");
    await a.exited;

    const d = await client(await start(dir));
    expect(await d.pipeline(["GET acct:a", "GET acct:b", "GET note"])).toEqual([
      { status: "Ok", result: { key: "acct:a", value: "70" } },
      { status: "Ok", result: { key: "acct:b", value: "30" } },
      { status: "Ok", result: { key: "note", value: "moved 30" } },
    ]);
  });

  test("a graceful stop leaves the whole state in data.json and an empty journal; a stop with nothing new rewrites nothing", async () => {
    const dir = dataDir();
    const file = path.join(dir, "data.json");
    const a = await start(dir);
    const c = await client(a);
    await putMany(c, [["k1", "one"], ["k2", "two"]]);
    expect((await c.request("DEL k2")).status).toBe("Ok");
    expect(fs.existsSync(file)).toBe(false); // nothing is snapshotted while it runs, below the compaction threshold
    expect(await a.kill("SIGTERM")).toBe(0);
    expect(JSON.parse(fs.readFileSync(file, "utf8")).data).toEqual({ k1: "one" });
    const journals = fs.readdirSync(dir).filter((name) => name.includes(".journal."));
    expect(journals.map((name) => fs.statSync(path.join(dir, name)).size)).toEqual([0]);
    expect(a.stderr()).toContain('"trigger":"shutdown"');

    const b = await start(dir);
    expect((await (await client(b)).request("GET k1")).result).toEqual({ key: "k1", value: "one" });
    const snapshotBefore = fs.readFileSync(file);
    expect(await b.kill("SIGINT")).toBe(0);
    expect(fs.readFileSync(file)).toEqual(snapshotBefore);
    expect(b.stderr()).not.toContain('"trigger":"shutdown"');
  });

  test("integers beyond 2^53 come back exactly as written: from memory, from the journal after kill -9, from a snapshot, and from the original server's data.json", async () => {
    const dir = dataDir();
    const ids = '{"id":12345678901234567890,"refs":[-9007199254740993,1.5]}';
    const rawGet = async (c: LineClient, key: string) => {
      c.write(`GET ${key}\n`);
      return c.readLine();
    };
    const expected = `{"status":"Ok","result":{"key":"doc","value":${ids}}}`;
    const a = await start(dir, ["--fsync", "always"]);
    const c = await client(a);
    expect((await c.request(`PUT {"key":"doc","value":${ids}}`)).status).toBe("Ok");
    const tx = await c.pipeline(["START", 'PUT {"key":"big","value":99999999999999999999999}', "COMMIT"]);
    expect(tx.map((r) => r.status)).toEqual(["Ok", "Ok", "Ok"]);
    expect(await rawGet(c, "doc")).toBe(expected);
    a.proc.kill("SIGKILL");
    await a.exited;

    const b = await start(dir);
    const d = await client(b);
    expect(await rawGet(d, "doc")).toBe(expected);
    expect(await rawGet(d, "big")).toBe('{"status":"Ok","result":{"key":"big","value":99999999999999999999999}}');
    expect((await d.request("SAVE")).status).toBe("Ok");
    expect(await b.kill("SIGTERM")).toBe(0);

    const e = await start(dir);
    expect(await rawGet(await client(e), "doc")).toBe(expected);
    expect(await e.kill("SIGTERM")).toBe(0);

    const seedDir = dataDir();
    fs.writeFileSync(path.join(seedDir, "data.json"), `{"doc": ${ids}}`);
    const f = await start(seedDir);
    expect(await rawGet(await client(f), "doc")).toBe(expected);
  });

  test("SIGINT under --fsync no still flushes every acknowledged write", async () => {
    const dir = dataDir();
    const a = await start(dir, ["--fsync", "no"]);
    const c = await client(a);
    await putMany(c, Array.from({ length: 500 }, (_, i): [string, string] => [`k${i}`, `v${i}`]));
    expect(await a.kill("SIGINT")).toBe(0);
    const b = await start(dir);
    const d = await client(b);
    expect(((await d.request("KEYS k")).result as string[]).length).toBe(500);
    expect((await d.request("GET k499")).result).toEqual({ key: "k499", value: "v499" });
  });

  test("everysec: a write is fsynced by the periodic flush with no further traffic (STATS durableSeq reaches lastSeq)", async () => {
    const dir = dataDir();
    const a = await start(dir, ["--fsync", "everysec"]); // --fsync-interval-ms 50
    const c = await client(a);
    expect((await c.request("PUT k v")).status).toBe("Ok");
    await waitFor(async () => {
      const stats = await persistenceStats(c);
      return stats.durableSeq === stats.lastSeq;
    }, 5000, "the periodic fsync");
    const stats = await persistenceStats(c);
    expect(stats).toMatchObject({ mode: "everysec", pendingRecords: 0 });
    expect(stats.fsyncs).toBeGreaterThanOrEqual(1);
    expect(typeof stats.lastSuccessfulFlush).toBe("string");
  });

  test("a graceful stop with nothing new still writes data.json when it was deleted while the server ran", async () => {
    const dir = dataDir();
    const file = path.join(dir, "data.json");
    const a = await start(dir);
    await putMany(await client(a), [["k1", "one"], ["k2", "two"]]);
    expect(await a.kill("SIGTERM")).toBe(0);
    const b = await start(dir);
    expect((await (await client(b)).request("GET k2")).result).toEqual({ key: "k2", value: "two" });
    fs.rmSync(file);
    expect(await b.kill("SIGTERM")).toBe(0);
    expect(JSON.parse(fs.readFileSync(file, "utf8")).data).toEqual({ k1: "one", k2: "two" });
    const again = await start(dir);
    expect((await (await client(again)).request("GET k1")).result).toEqual({ key: "k1", value: "one" });
  });

  test("SAVE answers once the snapshot is on disk; STATS shows the persistence state", async () => {
    const dir = dataDir();
    const a = await start(dir, ["--fsync", "always"]);
    const c = await client(a);
    await putMany(c, [["a", "1"], ["b", "2"]]);
    expect(await c.request("SAVE")).toMatchObject({ status: "Ok" });
    const snapshot = JSON.parse(fs.readFileSync(path.join(dir, "data.json"), "utf8"));
    expect(snapshot.data).toEqual({ a: "1", b: "2" });
    const stats = await persistenceStats(c);
    expect(stats).toMatchObject({ mode: "always", available: true, pendingRecords: 0, lastError: null });
    expect(typeof stats.lastSuccessfulFlush).toBe("string");
    expect(typeof stats.journalBytes).toBe("number");
    // Journal fdatasyncs: one or two for the pipelined PUTs (group commit), a few for SAVE's new journal.
    expect(stats.fsyncs).toBeGreaterThanOrEqual(1);
    expect(stats.fsyncs).toBeLessThanOrEqual(4);
  });
});

describe("the snapshot written log line", () => {
  test("each compaction logs `snapshot written` with its trigger (journal size, SAVE, shutdown) and what it wrote", async () => {
    const dir = dataDir();
    const server = await start(dir, ["--compact-min-bytes", "4096"]);
    const written = () =>
      server
        .stderr()
        .split("\n")
        .filter((line) => line.includes('"msg":"snapshot written"'))
        .map((line) => JSON.parse(line) as Record<string, unknown>);
    const c = await client(server);
    // 50 records of about 120 bytes: past 4096 bytes of journal with no snapshot yet, an automatic compaction.
    await putMany(c, Array.from({ length: 50 }, (_, i): [string, string] => [`k${i}`, "v".repeat(80)]));
    await waitFor(() => written().length === 1, 10_000, "the automatic compaction");
    expect(written()[0]).toMatchObject({ level: "info", trigger: "journal size", keys: 50, seq: 50 });
    expect(await c.request("SAVE")).toMatchObject({ status: "Ok" });
    await putMany(c, [["after", "1"]]);
    expect(await server.kill("SIGTERM")).toBe(0);
    const [auto, save, shutdown] = written();
    expect(save).toMatchObject({ trigger: "SAVE", keys: 50, seq: 50 });
    expect(shutdown).toMatchObject({ trigger: "shutdown", keys: 51, seq: 51, bytes: fs.statSync(path.join(dir, "data.json")).size });
    for (const entry of [auto, save, shutdown]) {
      expect(Object.keys(entry!)).toEqual(expect.arrayContaining(["at", "ms", "keys", "bytes", "seq", "slices", "longestSliceMs"]));
      expect(Number.isNaN(Date.parse(entry!.at as string))).toBe(false);
    }
  });
});

describe("what a snapshot holds", () => {
  test("SAVE inside an open transaction writes the committed state only: the transaction's writes reach the files at its COMMIT", async () => {
    const dir = dataDir();
    const a = await start(dir);
    const c = await client(a);
    await putMany(c, [["committed", "1"]]);
    const replies = await c.pipeline(["START", "PUT pending 2", "DEL committed", "SAVE"]);
    expect(replies.map((r) => r.status)).toEqual(["Ok", "Ok", "Ok", "Ok"]);
    expect(JSON.parse(fs.readFileSync(path.join(dir, "data.json"), "utf8")).data).toEqual({ committed: "1" });
    expect(await c.request("COMMIT")).toMatchObject({ status: "Ok" });
    expect(await c.request("SAVE")).toMatchObject({ status: "Ok" });
    expect(JSON.parse(fs.readFileSync(path.join(dir, "data.json"), "utf8")).data).toEqual({ pending: "2" });
  });

  test("a value's object members come back in the order GET gave them, byte for byte, after a restart from the journal and from a snapshot", async () => {
    const dir = dataDir();
    const value = '{"b":1,"2":2,"a":{"z":[1,{"y":0,"x":1}],"10":3},"1":4,"4294967295":5,"-1":6,"01":7}';
    const a = await start(dir);
    const c = await client(a);
    expect(await c.request(`PUT {"key":"o","value":${value}}`)).toMatchObject({ status: "Ok" });
    c.write("GET o\n");
    const asStored = await c.readLine();
    // Array-index-like members first in numeric order, as every JavaScript JSON parser orders them; the rest as written.
    expect(asStored).toBe('{"status":"Ok","result":{"key":"o","value":{"1":4,"2":2,"b":1,"a":{"10":3,"z":[1,{"y":0,"x":1}]},"4294967295":5,"-1":6,"01":7}}}');
    a.proc.kill("SIGKILL"); // from the journal
    await a.exited;
    const b = await start(dir);
    const d = await client(b);
    d.write("GET o\n");
    expect(await d.readLine()).toBe(asStored);
    expect(await d.request("SAVE")).toMatchObject({ status: "Ok" });
    expect(await b.kill("SIGTERM")).toBe(0); // from the snapshot
    const e = await client(await start(dir));
    e.write("GET o\n");
    expect(await e.readLine()).toBe(asStored);
  });
});

describe("the README's file examples", () => {
  /** The code block after `lead` in README.md, with its final line end. */
  function readmeBlock(lead: string): string {
    const readme = fs.readFileSync(path.join(import.meta.dir, "..", "README.md"), "utf8");
    const at = readme.indexOf(lead);
    expect(at).toBeGreaterThan(-1);
    const open = readme.indexOf("```\n", at) + 4;
    return readme.slice(open, readme.indexOf("```", open));
  }

  test("the example snapshot and journal line load as printed (their checksums are right): key1 new, key2 deleted, key3 3, at seq 43", async () => {
    const dir = dataDir();
    fs.writeFileSync(path.join(dir, "data.json"), readmeBlock("so damage is found without parsing every value:"));
    fs.writeFileSync(path.join(dir, "data.json.journal.1"), readmeBlock("transaction is all or nothing:"));
    const server = await start(dir);
    const c = await client(server);
    expect(await c.request("GET key1")).toEqual({ status: "Ok", result: { key: "key1", value: "new" } });
    expect(await c.request("GET key2")).toMatchObject({ code: "NOT_FOUND" });
    expect(await c.request("GET key3")).toEqual({ status: "Ok", result: { key: "key3", value: 3 } });
    expect(await c.request("KEYS")).toEqual({ status: "Ok", result: ["key1", "key3"] });
    expect(((await c.request("STATS")).result as { stats: { commit_seq: number } }).stats.commit_seq).toBe(43);
  });
});

describe("--fsync always: group commit", () => {
  test("writes from many connections at once share fsyncs, and each is acknowledged only once durable", async () => {
    const dir = dataDir();
    const server = await start(dir, ["--fsync", "always"]);
    const writers = 30;
    const clients = await Promise.all(Array.from({ length: writers }, () => client(server)));
    // Past the first round (which also fsyncs the new journal's directory on the thread pool).
    expect((await clients[0]!.request("PUT warm 1")).status).toBe("Ok");
    const before = (await persistenceStats(clients[0]!)).fsyncs as number;
    clients.forEach((c, i) => c.write(`PUT shared${i} ${i}\n`));
    const replies = await Promise.all(clients.map((c) => c.readReply()));
    expect(replies.every((reply) => reply.status === "Ok")).toBe(true);
    const stats = await persistenceStats(clients[0]!);
    expect(stats.pendingRecords).toBe(0);
    // One fsync per write without group commit; with it, the writes of a loop pass (and of its one more look) share one.
    const fsyncs = (stats.fsyncs as number) - before;
    expect(fsyncs).toBeGreaterThanOrEqual(1);
    expect(fsyncs).toBeLessThanOrEqual(writers / 3);
    // Acknowledged means durable: all of them survive a kill -9.
    await server.kill("SIGKILL");
    const again = await start(dir, ["--fsync", "always"]);
    const c = await client(again);
    for (let i = 0; i < writers; i++) expect((await c.request(`GET shared${i}`)).result).toEqual({ key: `shared${i}`, value: String(i) });
  });
});

describe("kill -9", () => {
  /**
   * Under --fsync always, round after round: each writer writes the keys
   * `${prefix}${w}-000000`, `-000001`, ... in order with `write` (which
   * throws unless acknowledged) until a kill -9 at a random moment; after a
   * restart every acknowledged key is there, at most the one in flight
   * beyond it, and no gaps.
   */
  async function ackedWritesSurviveKill(
    prefix: string,
    writers: number,
    rounds: number,
    write: (c: LineClient, key: string, round: number) => Promise<void>,
  ): Promise<void> {
    const dir = dataDir();
    const acked: number[] = new Array(writers).fill(-1);
    const keyOf = (w: number, n: number) => `${prefix}${w}-${String(n).padStart(6, "0")}`;
    for (let round = 0; round < rounds; round++) {
      const server = await start(dir, ["--fsync", "always"]);
      const clients = await Promise.all(Array.from({ length: writers }, () => client(server)));
      const steps = clients.map((c, w) => async () => {
        const n = acked[w]! + 1;
        await write(c, keyOf(w, n), round);
        acked[w] = n;
      });
      await killWhileWriting(server, steps, randomMoment);

      const check = await start(dir);
      const c = await client(check);
      for (let w = 0; w < writers; w++) {
        const keys = (await c.request(`KEYS ${prefix}${w}-`)).result as string[];
        expect(keys.length).toBeGreaterThanOrEqual(acked[w]! + 1);
        expect(keys.length).toBeLessThanOrEqual(acked[w]! + 2);
        keys.forEach((key, i) => expect(key).toBe(keyOf(w, i)));
        acked[w] = keys.length - 1;
      }
      check.proc.kill("SIGKILL");
      await check.exited;
    }
    expect(acked.every((n) => n > 0)).toBe(true);
  }

  test("always: after kill -9 at a random moment no acknowledged write is lost, and each writer's keys form a prefix", async () => {
    await ackedWritesSurviveKill("w", 6, 3, async (c, key, round) => {
      const reply = await c.request(`PUT ${key} r${round}`);
      if (reply.status !== "Ok") throw new Error(`write refused: ${JSON.stringify(reply)}`);
    });
  }, 30_000);

  test("always: one-PUT transactions (committed from their bytes) acknowledged before kill -9 are all there, in order", async () => {
    await ackedWritesSurviveKill("t", 4, 2, async (c, key, round) => {
      // kvload's transaction: START, GET, PUT, COMMIT in one batch (the GET's key is never written).
      const replies = await c.pipeline(["START", `GET ${key}.read`, `PUT ${key} r${round}`, "COMMIT"]);
      if (replies[3]?.status !== "Ok") throw new Error(`commit refused: ${JSON.stringify(replies)}`);
    });
  }, 30_000);

  test("always: a client that does not read while its writes wait for fsyncs gets every reply, in order, once it reads", async () => {
    const dir = dataDir();
    const server = await start(dir, ["--fsync", "always", "--max-output-bytes", "65536"]);
    const c = await client(server);
    c.pauseReading();
    // Writes (held until durable), then reads (whose batches wait for nothing but must queue behind the
    // writes' replies), with a SAVE (an asynchronous reply) among them: about 5 MB of replies, far past the
    // output limit, so held replies also meet the send queue and paused reading.
    const n = 6000;
    const entry = (i: number) => ({ key: `held${i}`, value: `${"v".repeat(400)}${i}` });
    const lines: string[] = [];
    for (let i = 0; i < n; i++) lines.push(`PUT held${i} ${entry(i).value}`);
    for (let i = 0; i < n; i++) lines.push(i === n / 2 ? "SAVE" : `GET held${i}`);
    c.write(lines.map((line) => `${line}\n`).join(""));
    await waitFor(() => c.allWritten, 10_000, "the requests to be sent");
    c.resumeReading();
    for (let i = 0; i < n; i++) expect(await c.readReply()).toEqual({ status: "Ok", result: entry(i) });
    for (let i = 0; i < n; i++) {
      if (i === n / 2) expect((await c.readReply()).status).toBe("Ok");
      else expect(await c.readReply()).toEqual({ status: "Ok", result: entry(i) });
    }
    expect(c.unread).toBe("");
  }, 30_000);

  test("everysec: transactions writing one token to two keys are never half applied after kill -9", async () => {
    const dir = dataDir();
    for (let round = 0; round < 3; round++) {
      const server = await start(dir, ["--fsync", "everysec"]);
      const clients = await Promise.all(Array.from({ length: 4 }, () => client(server)));
      let commits = 0;
      const steps = clients.map((c, w) => {
        let n = 0;
        return async () => {
          const token = `r${round}-w${w}-${n++}`;
          const replies = await c.pipeline(["START", `PUT x ${token}`, `PUT y ${token}`, `PUT own${w} ${token}`, "COMMIT"]);
          if (replies[4]?.status === "Ok") commits++;
        };
      });
      await killWhileWriting(server, steps, randomMoment);
      expect(commits).toBeGreaterThan(0);

      const check = await start(dir);
      const c = await client(check);
      const x = (await c.request("GET x")).result as { value: string };
      const y = (await c.request("GET y")).result as { value: string };
      expect(x.value).toBe(y.value);
      // The transaction that wrote x last also wrote its writer's own key.
      const writer = /-w(\d+)-/.exec(x.value)![1];
      expect(((await c.request(`GET own${writer}`)).result as { value: string }).value).toBe(x.value);
      check.proc.kill("SIGKILL");
      await check.exited;
    }
  }, 30_000);

  test("the cost of a write follows the change: 1,000 PUTs to a 100,000-key store add 1,000 journal lines and leave the snapshot untouched", async () => {
    const dir = dataDir();
    const initial: Record<string, string> = {};
    for (let i = 0; i < 100_000; i++) initial[`base${i}`] = `value ${i}`;
    const snapshot = path.join(dir, "data.json");
    fs.writeFileSync(snapshot, JSON.stringify(initial));
    const before = fs.statSync(snapshot);
    const server = await start(dir);
    const c = await client(server);
    const journalBefore = (await persistenceStats(c)).journalBytes as number;
    const lines = Array.from({ length: 1000 }, (_, i) => `PUT base${i * 97} changed ${i}`);
    expect((await c.pipeline(lines)).every((reply) => reply.status === "Ok")).toBe(true);
    const stats = await persistenceStats(c);
    const journal = fs.readFileSync(String(stats.journalFile), "utf8");
    expect(journal.trimEnd().split("\n")).toHaveLength(1000);
    // About 50 bytes per line: nothing in the journal grows with the 100,000 keys.
    expect((stats.journalBytes as number) - journalBefore).toBeLessThan(1000 * 80);
    const after = fs.statSync(snapshot);
    expect([after.size, after.mtimeMs]).toEqual([before.size, before.mtimeMs]);
    server.proc.kill("SIGKILL");
    await server.exited;
  });

  test("a SAVE while the store grows (its arena moving and its index rehashing, a few entries per change) keeps every acknowledged write across kill -9", async () => {
    const dir = dataDir();
    const server = await start(dir);
    const [writer, saver] = [await client(server), await client(server)];
    await putMany(writer, Array.from({ length: 20_000 }, (_, i) => [`pre${i}`, `p${i}`] as [string, string]));
    // The SAVE walks the store across event-loop turns while 40,000 new keys (two growths of the
    // index, two of the arena) and overwrites of the first keys arrive in between.
    saver.write("SAVE\n");
    const growth = Array.from({ length: 40_000 }, (_, i) => `PUT grow${i} ${"g".repeat(1 + (i % 50))}`);
    const overwrites = Array.from({ length: 5_000 }, (_, i) => `PUT pre${i * 4} changed${i}`);
    const replies = await writer.pipeline([...growth, ...overwrites]);
    expect(replies.every((reply) => reply.status === "Ok")).toBe(true);
    expect(await saver.readReply(30_000)).toMatchObject({ status: "Ok" });
    server.proc.kill("SIGKILL");
    await server.exited;

    const again = await start(dir);
    const c = await client(again);
    const keys = await c.request("KEYS");
    expect((keys.result as string[]).length).toBe(60_000);
    const reads = await c.pipeline([
      ...Array.from({ length: 20_000 }, (_, i) => `GET pre${i}`),
      ...Array.from({ length: 40_000 }, (_, i) => `GET grow${i}`),
    ]);
    const expected = [
      ...Array.from({ length: 20_000 }, (_, i) => (i % 4 === 0 && i / 4 < 5_000 ? `changed${i / 4}` : `p${i}`)),
      ...Array.from({ length: 40_000 }, (_, i) => "g".repeat(1 + (i % 50))),
    ];
    const wrong = reads.flatMap((reply, i) => ((reply.result as { value?: string } | undefined)?.value === expected[i] ? [] : [i]));
    expect(wrong).toEqual([]);
  }, 60_000);

  test("kill -9 in the middle of a compaction loses nothing acknowledged", async () => {
    const dir = dataDir();
    // A large starting state (in the original server's plain JSON format), so compaction takes a while.
    const initial: Record<string, string> = {};
    for (let i = 0; i < 200_000; i++) initial[`base${i}`] = `value ${i}`;
    fs.writeFileSync(path.join(dir, "data.json"), JSON.stringify(initial));
    let acked = -1;
    for (let round = 0; round < 2; round++) {
      const server = await start(dir, ["--fsync", "always"]);
      const writer = await client(server);
      const saver = await client(server);
      const writeOne = async () => {
        const reply = await writer.request(`PUT during${acked + 1} r${round}`);
        if (reply.status !== "Ok") throw new Error(JSON.stringify(reply));
        acked++;
      };
      const tmp = path.join(dir, "data.json.tmp");
      await killWhileWriting(server, [writeOne], async () => {
        const ackedBefore = acked;
        await waitFor(() => acked >= ackedBefore + 20, 5000, "some writes before the compaction");
        saver.write("SAVE\n");
        await waitFor(() => fs.existsSync(tmp), 10_000, "the compaction to start");
        if (round === 1) {
          // Later in the compaction (or just after it): writes keep being acknowledged meanwhile.
          const ackedAtStart = acked;
          await waitFor(() => acked >= ackedAtStart + 5, 5000, "writes acknowledged during the compaction");
        }
      });
      // Round 0 killed the server with the snapshot half written.
      if (round === 0) expect(fs.existsSync(tmp)).toBe(true);

      const check = await start(dir);
      const c = await client(check);
      const during = (await c.request("KEYS during")).result as string[];
      expect(during.length).toBeGreaterThanOrEqual(acked + 1);
      expect((await c.request("GET base199999")).result).toEqual({ key: "base199999", value: "value 199999" });
      expect(((await c.request("KEYS base")).result as string[]).length).toBe(200_000);
      acked = during.length - 1;
      check.proc.kill("SIGKILL");
      await check.exited;
    }
    expect(acked).toBeGreaterThan(0);
  }, 40_000);
});

describe("shutdown during a compaction", () => {
  function bigLegacyFile(dir: string): void {
    const initial: Record<string, string> = {};
    for (let i = 0; i < 200_000; i++) initial[`base${i}`] = `value ${i}`;
    fs.writeFileSync(path.join(dir, "data.json"), JSON.stringify(initial));
  }

  async function checkRestart(dir: string): Promise<void> {
    const again = await start(dir);
    const d = await client(again);
    expect((await d.request("GET late")).result).toEqual({ key: "late", value: "1" });
    expect(((await d.request("KEYS base")).result as string[]).length).toBe(200_000);
    expect(fs.existsSync(path.join(dir, "data.json.tmp"))).toBe(false);
  }

  test("SIGTERM while a SAVE runs: the SAVE is still answered, then exit 0 with everything on disk", async () => {
    const dir = dataDir();
    bigLegacyFile(dir);
    const server = await start(dir, ["--fsync", "no"]);
    const c = await client(server);
    await putMany(c, [["late", "1"]]);
    c.write("SAVE\n");
    await waitFor(() => fs.existsSync(path.join(dir, "data.json.tmp")), 10_000, "the compaction to start");
    const exited = server.kill("SIGTERM");
    expect(await c.readReply()).toMatchObject({ status: "Ok", result: "Saved" });
    expect(await exited).toBe(0);
    await checkRestart(dir);
  }, 20_000);

  test("SIGTERM during an automatic compaction: exit 0 with everything on disk", async () => {
    const dir = dataDir();
    bigLegacyFile(dir);
    const server = await start(dir, ["--fsync", "no", "--compact-min-bytes", "0", "--compact-percent", "1"]);
    const c = await client(server);
    await putMany(c, [["late", "1"]]);
    // Enough journal to pass 1 % of the snapshot: a compaction starts by itself.
    await putMany(c, Array.from({ length: 1000 }, (_, i): [string, string] => [`filler${i}`, "x".repeat(40)]));
    await waitFor(() => fs.existsSync(path.join(dir, "data.json.tmp")), 10_000, "the automatic compaction to start");
    expect(await server.kill("SIGTERM")).toBe(0);
    await checkRestart(dir);
  }, 20_000);
});

describe("start-up with damaged files", () => {
  /** A snapshot at seq 2 (a, b) and a journal with seq 3 and 4 (c, d). */
  async function dirWithData(): Promise<string> {
    const dir = dataDir();
    const a = await start(dir, ["--fsync", "always"]);
    const c = await client(a);
    await putMany(c, [["a", "1"], ["b", "2"]]);
    expect((await c.request("SAVE")).status).toBe("Ok");
    await putMany(c, [["c", "3"], ["d", "4"]]);
    // Killed, not stopped: a graceful stop writes a final snapshot and leaves the journal empty.
    a.proc.kill("SIGKILL");
    await a.exited;
    fs.rmSync(path.join(dir, "data.json.lock"));
    return dir;
  }

  test("a corrupt snapshot: exit non-zero naming the file and the problem, every file left as it was", async () => {
    const dir = await dirWithData();
    const file = path.join(dir, "data.json");
    fs.writeFileSync(file, fs.readFileSync(file, "utf8").replace('"a":"1"', '"a":"9"'));
    const before = fileBytes(dir);
    const run = await runIndex(["--port", "0", "--data", file]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain(`${file}: corrupt snapshot, checksum mismatch`);
    expect(fileBytes(dir)).toEqual(before);
  });

  test("a snapshot whose first-line seq was changed (outside the checksum): exit non-zero, instead of silently skipping journal records", async () => {
    const dir = await dirWithData();
    const file = path.join(dir, "data.json");
    const text = fs.readFileSync(file, "utf8");
    const seq = Number(/"seq":(\d+)\}/.exec(text)![1]);
    fs.writeFileSync(file, text.replace(`"seq":${seq}}`, `"seq":${seq + 20}}`));
    const before = fileBytes(dir);
    const run = await runIndex(["--port", "0", "--data", file]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain(`${file}: corrupt snapshot, line 1 gives seq ${seq + 20} but the closing line seq ${seq}`);
    expect(fileBytes(dir)).toEqual(before);
  });

  test("a snapshot whose first line lost its format name (outside the checksum) after a clean stop: exit non-zero, not loaded as a plain JSON object of three keys", async () => {
    const dir = dataDir();
    const a = await start(dir);
    await putMany(await client(a), [["a", "1"], ["b", "2"]]);
    a.proc.kill("SIGTERM"); // a clean stop: everything in the snapshot, the journal empty
    expect(await a.exited).toBe(0);
    const file = path.join(dir, "data.json");
    fs.writeFileSync(file, fs.readFileSync(file, "utf8").replace('"txkv-snapshot"', '"txkv-snapshOt"'));
    const before = fileBytes(dir);
    const run = await runIndex(["--port", "0", "--data", file]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain(`${file}: corrupt snapshot, line 1: damaged snapshot header`);
    expect(fileBytes(dir)).toEqual(before);
  });

  test("a corrupt journal: exit non-zero naming the file and the line, every file left as it was", async () => {
    const dir = await dirWithData();
    const journal = fs.readdirSync(dir).find((name) => name.includes(".journal."))!;
    const file = path.join(dir, journal);
    fs.writeFileSync(file, "garbage\n" + fs.readFileSync(file, "utf8"));
    const before = fileBytes(dir);
    const run = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain(`${file}: corrupt journal, line 1: not valid JSON`);
    expect(fileBytes(dir)).toEqual(before);
  });

  test("a journal record whose value changed on disk but stays valid JSON, the last one too: exit non-zero on its checksum, every file left as it was", async () => {
    for (const [line, record, changed] of [[1, '["c","3"]', '["c","8"]'], [2, '["d","4"]', '["d","9"]']] as const) {
      const dir = await dirWithData(); // the journal holds seq 3 (c = 3) and seq 4 (d = 4)
      const journal = fs.readdirSync(dir).find((name) => name.includes(".journal."))!;
      const file = path.join(dir, journal);
      const text = fs.readFileSync(file, "utf8");
      expect(text).toContain(record);
      fs.writeFileSync(file, text.replace(record, changed));
      const before = fileBytes(dir);
      const run = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
      expect(run.code).not.toBe(0);
      expect(run.stderr).toContain(`${file}: corrupt journal, line ${line}: checksum mismatch`);
      expect(fileBytes(dir)).toEqual(before);
    }
  });

  test("the last journal record complete but unreadable (a field name changed, a byte that is not UTF-8): exit non-zero, every file left as it was; not dropped as torn", async () => {
    for (const [damage, problem] of [
      [(text: Buffer) => Buffer.from(text.toString("latin1").replace(/"ops"(?![\s\S]*"ops")/, '"opz"'), "latin1"), 'line 2: unknown field "opz"'],
      [(text: Buffer) => Buffer.concat([text.subarray(0, text.length - 6), Buffer.from([0xff]), text.subarray(text.length - 5)]), "line 2: not valid UTF-8"],
    ] as const) {
      const dir = await dirWithData(); // the journal holds seq 3 and seq 4, the acknowledged writes c and d
      const journal = fs.readdirSync(dir).find((name) => name.includes(".journal."))!;
      const file = path.join(dir, journal);
      fs.writeFileSync(file, damage(fs.readFileSync(file)));
      const before = fileBytes(dir);
      const run = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
      expect(run.code).not.toBe(0);
      expect(run.stderr).toContain(`${file}: corrupt journal, ${problem}`);
      expect(fileBytes(dir)).toEqual(before);
    }
  });

  test("the snapshot deleted after a clean stop (the journal empty, its generation past 1): exit non-zero saying so, instead of starting empty", async () => {
    const dir = dataDir();
    const a = await start(dir);
    await putMany(await client(a), [["a", "1"], ["b", "2"]]);
    a.proc.kill("SIGTERM");
    expect(await a.exited).toBe(0);
    const file = path.join(dir, "data.json");
    fs.rmSync(file);
    const journal = fs.readdirSync(dir).find((name) => name.includes(".journal."))!;
    expect(fs.statSync(path.join(dir, journal)).size).toBe(0);
    const before = fileBytes(dir);
    const run = await runIndex(["--port", "0", "--data", file]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain(`${file}: no snapshot, but the oldest journal is ${path.join(dir, journal)}, which follows one`);
    expect(fileBytes(dir)).toEqual(before);
    // Removing the journal as well is how to start afresh on purpose.
    fs.rmSync(path.join(dir, journal));
    const b = await start(dir);
    expect(await (await client(b)).request("KEYS")).toEqual({ status: "Ok", result: [] });
    b.proc.kill("SIGTERM");
    expect(await b.exited).toBe(0);
  });

  test("a directory where the snapshot's temporary file goes: exit non-zero saying what it is and what to do, nothing left behind", async () => {
    const dir = dataDir();
    fs.mkdirSync(path.join(dir, "data.json.tmp"));
    const run = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain("data.json.tmp: a directory is where a snapshot's temporary file goes; move it away");
    expect(fs.readdirSync(dir)).toEqual(["data.json.tmp"]);
  });

  test("a FIFO or a device where a data file goes (the snapshot, a journal, the lock): exit 1 at once naming it, not a start that hangs", async () => {
    const dir = dataDir();
    const fifo = (name: string) => () => expect(Bun.spawnSync(["mkfifo", path.join(dir, name)]).exitCode).toBe(0);
    /** What to put in the data directory, and the file the refusal must name. */
    const cases: [() => void, string][] = [
      [fifo("data.json"), path.join(dir, "data.json")],
      [fifo("data.json.journal.1"), path.join(dir, "data.json.journal.1")],
      [() => fs.mkdirSync(path.join(dir, "data.json.journal.2")), path.join(dir, "data.json.journal.2")],
      [fifo("data.json.lock"), path.join(dir, "data.json.lock")],
      [() => fs.symlinkSync("/dev/zero", path.join(dir, "data.json")), "/dev/zero"],
    ];
    for (const [make, named] of cases) {
      make();
      const run = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
      expect(run.code).toBe(1);
      const found = named.endsWith(".journal.2") ? "a directory" : "a FIFO, socket or device";
      expect(run.stderr).toContain(`${named}: ${found} is where`);
      for (const entry of fs.readdirSync(dir)) fs.rmSync(path.join(dir, entry), { recursive: true });
    }
  });

  test("--data in a directory that does not exist, or under a file: exit 1 saying so, nothing created", async () => {
    const dir = dataDir();
    const missing = await runIndex(["--port", "0", "--data", path.join(dir, "nowhere", "data.json")]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`${path.join(dir, "nowhere")}: the data file's directory does not exist; create it`);
    fs.writeFileSync(path.join(dir, "plain"), "");
    const underFile = await runIndex(["--port", "0", "--data", path.join(dir, "plain", "data.json")]);
    expect(underFile.code).toBe(1);
    expect(underFile.stderr).toContain(`${path.join(dir, "plain")}: not a directory`);
    expect(fs.readdirSync(dir)).toEqual(["plain"]);
  });

  test("the snapshot deleted while the journal holds the records after it (seq 3-4 without seq 1-2): exit non-zero, files untouched", async () => {
    const dir = await dirWithData(); // snapshot at seq 2, a journal with seq 3 and 4
    fs.rmSync(path.join(dir, "data.json"));
    const before = fileBytes(dir);
    const run = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain("no snapshot, but the oldest journal is");
    expect(fileBytes(dir)).toEqual(before);
  });

  test("a torn final journal record (no line end, or zero bytes a power cut left in it) is dropped with a warning and the rest loads, also in a journal followed by a newer, empty one (kill -9 as a compaction switched journals)", async () => {
    const unfinished = '{"seq":1000,"ops":[["e","' + "x".repeat(5000);
    const zeroed = '{"seq":1000,"ops":[["e","' + "\u0000".repeat(4096) + '"]],"crc32":1}\n';
    for (const [newerEmptyJournal, torn] of [[false, unfinished], [true, unfinished], [false, zeroed]] as const) {
      const dir = await dirWithData();
      const name = fs.readdirSync(dir).find((n) => n.includes(".journal."))!;
      fs.appendFileSync(path.join(dir, name), torn);
      const newer = path.join(dir, `data.json.journal.${Number(name.split(".").at(-1)) + 1}`);
      if (newerEmptyJournal) fs.writeFileSync(newer, "");
      const server = await start(dir);
      expect(server.stderr()).toContain("torn final journal record");
      const c = await client(server);
      expect((await c.request("KEYS")).result).toEqual(["a", "b", "c", "d"]);
      expect((await c.request("PUT e 6")).status).toBe("Ok");
      if (newerEmptyJournal) await waitFor(() => fs.readFileSync(newer, "utf8").includes('"e"'), 5000, "the PUT in the newest journal");
      expect(await server.kill("SIGTERM")).toBe(0);
      const again = await start(dir);
      expect((await (await client(again)).request("GET e")).result).toEqual({ key: "e", value: "6" });
    }
  });
});

describe("lock", () => {
  test("a second server on the same data file refuses to start; a killed server's lock does not block", async () => {
    const dir = dataDir();
    const first = await start(dir);
    const second = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
    expect(second.code).not.toBe(0);
    // Its flock proves a live owner: the advice is to stop it, never to remove the lock file.
    expect(second.stderr).toMatch(/data\.json\.lock: the data file is locked by another running server \(pid \d+\); stop that server first/);
    first.proc.kill("SIGKILL");
    await first.exited;
    const third = await start(dir);
    expect((await (await client(third)).request("PING")).result).toBe("PONG");
  });

  test.if(process.platform === "linux")("a lock no one flocks that names a live process: refused when written in this boot (or naming no boot), taken over when it names an earlier boot (a power cut, the pid reused)", async () => {
    const dir = dataDir();
    const lock = path.join(dir, "data.json.lock");
    const thisBoot = fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    const earlierBoot = "00000000-0000-4000-8000-000000000000";
    const unrelated = Bun.spawn(["sleep", "60"]); // alive, not a txkv server, holds no flock
    try {
      for (const text of [`${unrelated.pid}\n${thisBoot}\n`, `${unrelated.pid}\n`]) {
        fs.writeFileSync(lock, text);
        const refused = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
        expect(refused.code).toBe(1);
        expect(refused.stderr).toContain(`locked by another running server (pid ${unrelated.pid}); if no txkv server runs with that pid, remove the lock file`);
      }
      fs.writeFileSync(lock, `${unrelated.pid}\n${earlierBoot}\n`);
      const server = await start(dir);
      expect((await (await client(server)).request("PING")).result).toBe("PONG");
      // The new lock names the server and this boot.
      expect(fs.readFileSync(lock, "utf8")).toBe(`${server.proc.pid}\n${thisBoot}\n`);
    } finally {
      unrelated.kill();
    }
  });

  test("a live server's lock holds even when the pid in it names no process here (a server in another container)", async () => {
    // Seen from another PID namespace, the owner's pid names nobody (or this very process: both pid 1).
    // The pid is rewritten in place, so the file the first server holds its flock on stays the same.
    const dir = dataDir();
    const first = await start(dir);
    const lock = path.join(dir, "data.json.lock");
    const gone = Bun.spawnSync(["true"]).pid; // exited and reaped
    // Also when it names another boot: LXC gives each container a boot id of its own.
    for (const text of [`${gone}\n`, `${gone}\n00000000-0000-4000-8000-000000000000\n`]) {
      fs.writeFileSync(lock, text);
      const second = await runIndex(["--port", "0", "--data", path.join(dir, "data.json")]);
      expect(second.code).toBe(1);
      expect(second.stderr).toContain(`data.json.lock: the data file is locked by another running server (pid ${gone} in its own PID namespace`);
    }
    expect((await (await client(first)).request("PING")).result).toBe("PONG");
    expect(await first.kill("SIGTERM")).toBe(0);
    expect(fs.existsSync(lock)).toBe(false);
  });

  test("a lock file replaced while the server runs (someone else's now) is left in place when the server stops", async () => {
    const dir = dataDir();
    const lock = path.join(dir, "data.json.lock");
    const a = await start(dir);
    expect((await (await client(a)).request("PUT k v")).status).toBe("Ok");
    fs.rmSync(lock);
    fs.writeFileSync(lock, "4242\n");
    expect(await a.kill("SIGTERM")).toBe(0);
    expect(fs.readFileSync(lock, "utf8")).toBe("4242\n");
  });

  test("a second server given a symbolic link to the data file refuses too; snapshots go to the file, not the link", async () => {
    const dir = dataDir();
    const first = await start(dir);
    const c = await client(first);
    expect((await c.request("PUT k v")).status).toBe("Ok");
    expect((await c.request("SAVE")).status).toBe("Ok");
    const alias = path.join(dir, "alias.json");
    fs.symlinkSync(path.join(dir, "data.json"), alias);
    const second = await runIndex(["--port", "0", "--data", alias]);
    expect(second.code).not.toBe(0);
    expect(second.stderr).toContain("locked by another running server");
    expect(await first.kill("SIGTERM")).toBe(0);
    const viaAlias = await start(dir, ["--data", alias]);
    const d = await client(viaAlias);
    expect((await d.request("GET k")).result).toEqual({ key: "k", value: "v" });
    expect((await d.request("SAVE")).status).toBe("Ok");
    expect(fs.lstatSync(alias).isSymbolicLink()).toBe(true);
  });
});

describe("disk failure while running", () => {
  test("compactions that fail (a directory where the snapshot's temporary file goes) keep no journal open but the current one, under --fsync no too", async () => {
    const dir = dataDir();
    const server = await start(dir, ["--fsync", "no"]);
    const c = await client(server);
    fs.mkdirSync(path.join(dir, "data.json.tmp"));
    for (let i = 0; i < 5; i++) {
      await putMany(c, [[`k${i}`, "v"]]); // a write since the last switch: each SAVE retires a journal
      expect(await c.request("SAVE")).toMatchObject({ code: "PERSISTENCE" });
    }
    const openJournals = () =>
      fs.readdirSync(`/proc/${server.proc.pid}/fd`).filter((fd) => {
        try {
          return /data\.json\.journal\.\d+$/.test(fs.readlinkSync(`/proc/${server.proc.pid}/fd/${fd}`));
        } catch {
          return false; // closed meanwhile
        }
      });
    await waitFor(() => openJournals().length === 1, 5000, "the retired journals to be closed");
    fs.rmdirSync(path.join(dir, "data.json.tmp"));
    expect(await c.request("SAVE")).toMatchObject({ status: "Ok" });
    expect(fs.readdirSync(dir).filter((name) => name.includes("journal"))).toHaveLength(1);
    expect(openJournals()).toHaveLength(1);
    expect(await c.request("GET k4")).toMatchObject({ result: { value: "v" } });
  });

  test("SAVE whose snapshot is written but an old journal cannot be removed answers Ok and warns: the snapshot stands, the next start skips that journal's records", async () => {
    const dir = dataDir();
    const server = await start(dir);
    const c = await client(server);
    await putMany(c, [["a", "1"]]);
    // Unremovable by unlink (EISDIR), as an append-only or immutable journal is (EPERM).
    const stuck = path.join(dir, "data.json.journal.9");
    fs.mkdirSync(stuck);
    expect((await c.request("SAVE")).status).toBe("Ok");
    await waitFor(() => server.stderr().includes("an old journal could not be removed"), 5000, "the warning");
    expect(server.stderr()).toContain(stuck);
    await putMany(c, [["b", "2"]]);
    expect(await server.kill("SIGTERM")).toBe(0);
    fs.rmdirSync(stuck);
    const again = await start(dir);
    expect((await (await client(again)).request("KEYS")).result).toEqual(["a", "b"]);
  });

  test("a journal cut short under the server (truncated to free space): a new snapshot and journal replace it, and nothing acknowledged is lost", async () => {
    const dir = dataDir();
    const server = await start(dir, ["--fsync", "always"]);
    const c = await client(server);
    await putMany(c, [["a", "1"], ["b", "2"], ["c", "3"]]);
    const journal = fs.readdirSync(dir).find((name) => name.startsWith("data.json.journal."))!;
    fs.truncateSync(path.join(dir, journal), 0);
    // Appends would land at the start of the cut file, after records that are gone: the next start would refuse it.
    await putMany(c, [["d", "4"]]);
    await waitFor(async () => (await persistenceStats(c)).available === true, 5000, "persistence to be back");
    const { lastError } = (await persistenceStats(c)) as { lastError: { message: string } };
    expect(lastError.message).toMatch(new RegExp(`${journal.replaceAll(".", "\\.")} was cut short \\(\\d+ bytes where this server had written \\d+\\)`));
    await putMany(c, [["e", "5"]]);
    server.proc.kill("SIGKILL");
    await server.exited;
    const again = await start(dir);
    expect((await (await client(again)).request("KEYS")).result).toEqual(["a", "b", "c", "d", "e"]);
  });

  test("data directory removed: writes (PUT, DEL, COMMIT) and SAVE answer PERSISTENCE, reads work, and it resumes when the directory is back", async () => {
    const parent = dataDir();
    const dir = path.join(parent, "data");
    fs.mkdirSync(dir);
    const server = await start(dir, ["--fsync", "always"]);
    const c = await client(server);
    await putMany(c, [["before", "1"]]);
    fs.rmSync(dir, { recursive: true });
    await waitFor(async () => (await persistenceStats(c)).available === false, 5000, "the removal to be noticed");
    const refused = await c.request("PUT during 2");
    expect(refused.code).toBe("PERSISTENCE");
    expect(refused.message).toMatch(/removed|ENOENT/);
    expect(await c.pipeline(["DEL before", "START", "PUT during 3", "COMMIT", "SAVE"])).toMatchObject([
      { code: "PERSISTENCE" },
      { status: "Ok" },
      { status: "Ok" },
      { code: "PERSISTENCE" },
      { code: "PERSISTENCE" },
    ]);
    expect(await c.request("COMMIT")).toMatchObject({ code: "NO_TRANSACTION" }); // the refused COMMIT ended the transaction
    expect((await c.request("GET before")).result).toEqual({ key: "before", value: "1" });
    expect((await c.request("GET during")).code).toBe("NOT_FOUND");
    expect((await persistenceStats(c)).lastError).not.toBeNull();

    fs.mkdirSync(dir);
    await waitFor(async () => (await persistenceStats(c)).available === true, 5000, "persistence to resume");
    await putMany(c, [["after", "3"]]);
    server.proc.kill("SIGKILL");
    await server.exited;
    const again = await start(dir);
    const d = await client(again);
    expect((await d.request("KEYS")).result).toEqual(["after", "before"]);
  });
});
