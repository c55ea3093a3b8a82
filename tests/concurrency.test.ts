/**
 * Serializability under real concurrency: many connections racing
 * read-modify-write transactions through a real server, retrying on CONFLICT
 * with the client library's transaction helper (JSON forms: the general
 * path), and with raw plain-form lines (the fast path, whose reads inside a
 * transaction are kept as bytes that commits search: lib/deferred-reads.ts).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { RunningServer } from "../lib/app.ts";
import { connect, type TxkvClient } from "../lib/client.ts";
import { LineClient, startInProcess } from "./helpers.ts";

let server: RunningServer;
beforeAll(async () => {
  server = await startInProcess();
});
afterAll(() => server.shutdown());

const RETRY = { retries: 1000, backoffMs: 1, maxBackoffMs: 20 };

async function clients(n: number): Promise<TxkvClient[]> {
  return Promise.all(Array.from({ length: n }, () => connect({ port: server.port })));
}

test("20 clients × 50 read-modify-write increments of one counter end at exactly 1000", async () => {
  const [setup] = await clients(1);
  await setup!.put("counter", 0);
  const conflictsBefore = server.executor.stats.txConflicted;
  const racers = await clients(20);
  await Promise.all(
    racers.map(async (c) => {
      for (let i = 0; i < 50; i++) {
        await c.transaction(async (tx) => {
          const n = (await tx.get("counter")) as number;
          await tx.put("counter", n + 1);
        }, RETRY);
      }
    }),
  );
  expect(await setup!.get("counter")).toBe(1000);
  // The race is real: with 20 clients some increments had to be retried.
  expect(server.executor.stats.txConflicted).toBeGreaterThan(conflictsBefore);
  await Promise.all([...racers, setup!].map((c) => c.close()));
}, 60000);

test("20 raw connections × 30 plain-form increments (START, GET, PUT, COMMIT, one round trip each) end at exactly 600", async () => {
  const setup = await LineClient.connect(server.port);
  expect((await setup.request("PUT plain-counter 0")).status).toBe("Ok");
  const conflictsBefore = server.executor.stats.txConflicted;
  const racers = await Promise.all(Array.from({ length: 20 }, () => LineClient.connect(server.port)));
  await Promise.all(
    racers.map(async (c) => {
      for (let done = 0; done < 30; ) {
        expect((await c.request("START")).status).toBe("Ok");
        const read = await c.request("GET plain-counter");
        const n = Number((read.result as { value: string }).value);
        expect((await c.request(`PUT plain-counter ${n + 1}`)).status).toBe("Ok");
        const commit = await c.request("COMMIT");
        if (commit.status === "Ok") done++;
        else expect(commit.code).toBe("CONFLICT");
      }
    }),
  );
  expect(await setup.request("GET plain-counter")).toEqual({ status: "Ok", result: { key: "plain-counter", value: "600" } });
  expect(server.executor.stats.txConflicted).toBeGreaterThan(conflictsBefore);
  // Every transaction ended: nothing is left in the table of pending reads, or as a watch.
  expect(server.executor.store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
  for (const c of [...racers, setup]) c.close();
}, 60000);

test("bank transfers: every committed audit of all balances sees the constant total", async () => {
  const accounts = Array.from({ length: 10 }, (_, i) => `acct:${i}`);
  const [setup, auditor] = await clients(2);
  await Promise.all(accounts.map((a) => setup!.put(a, 100)));
  const total = 1000;

  let transfersLeft = 16 * 25;
  const transferers = await clients(16);
  const transfers = Promise.all(
    transferers.map(async (c, id) => {
      let seed = id + 1;
      const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
      while (transfersLeft > 0) {
        transfersLeft--;
        const from = accounts[rand(10)]!;
        let to = accounts[rand(10)]!;
        if (to === from) to = accounts[(accounts.indexOf(from) + 1) % 10]!;
        const amount = 1 + rand(20);
        await c.transaction(async (tx) => {
          const a = (await tx.get(from)) as number;
          const b = (await tx.get(to)) as number;
          await tx.put(from, a - amount);
          await tx.put(to, b + amount);
        }, RETRY);
      }
    }),
  );

  let committedAudits = 0;
  let running = true;
  void transfers.then(() => (running = false));
  while (running || committedAudits === 0) {
    // The sum is returned from the function and checked only once its COMMIT succeeded.
    const sum = await auditor!.transaction(async (tx) => {
      // One at a time, so that transfers commit between the reads.
      let sum = 0;
      for (const a of accounts) sum += (await tx.get(a)) as number;
      return sum;
    }, RETRY);
    expect(sum).toBe(total);
    committedAudits++;
  }
  await transfers;
  const final = await Promise.all(accounts.map((a) => setup!.get(a) as Promise<number>));
  expect(final.reduce((s, b) => s + b, 0)).toBe(total);
  expect(committedAudits).toBeGreaterThan(0);
  expect(server.executor.stats.txConflicted).toBeGreaterThan(0);
  await Promise.all([...transferers, auditor!, setup!].map((c) => c.close()));
}, 60000);
