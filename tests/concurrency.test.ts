/**
 * Serializability under real concurrency: many connections racing
 * read-modify-write transactions through a real server, retrying on CONFLICT.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { RunningServer } from "../lib/app.ts";
import { LineClient, startInProcess, type Reply } from "./helpers.ts";

let server: RunningServer;
beforeAll(async () => {
  server = await startInProcess();
});
afterAll(() => server.shutdown());

const value = (reply: Reply) => (reply.result as { value: string }).value;

/** Runs body inside START … COMMIT until the COMMIT is not a CONFLICT. Returns the attempts it took. */
async function withRetry(c: LineClient, body: () => Promise<void>): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    expect(await c.request("START")).toMatchObject({ status: "Ok" });
    await body();
    const reply = await c.request("COMMIT");
    if (reply.status === "Ok") return attempt;
    expect(reply.code).toBe("CONFLICT");
  }
}

test("20 clients × 50 read-modify-write increments of one counter end at exactly 1000", async () => {
  const setup = await LineClient.connect(server.port);
  await setup.request("PUT counter 0");
  let conflicts = 0;
  const clients = await Promise.all(Array.from({ length: 20 }, () => LineClient.connect(server.port)));
  await Promise.all(
    clients.map(async (c) => {
      for (let i = 0; i < 50; i++) {
        conflicts +=
          (await withRetry(c, async () => {
            const n = Number(value(await c.request("GET counter")));
            await c.request(`PUT counter ${n + 1}`);
          })) - 1;
      }
    }),
  );
  expect(await setup.request("GET counter")).toEqual({ status: "Ok", result: { key: "counter", value: "1000" } });
  // The race is real: with 20 clients some increments must have had to retry.
  expect(conflicts).toBeGreaterThan(0);
  for (const c of [...clients, setup]) c.close();
}, 60000);

test("bank transfers: every committed audit of all balances sees the constant total", async () => {
  const accounts = Array.from({ length: 10 }, (_, i) => `acct:${i}`);
  const setup = await LineClient.connect(server.port);
  await setup.pipeline(accounts.map((a) => `PUT ${a} 100`));
  const total = 1000;

  let transfersLeft = 16 * 25;
  const transferers = await Promise.all(Array.from({ length: 16 }, () => LineClient.connect(server.port)));
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
        await withRetry(c, async () => {
          const a = Number(value(await c.request(`GET ${from}`)));
          const b = Number(value(await c.request(`GET ${to}`)));
          await c.request(`PUT ${from} ${a - amount}`);
          await c.request(`PUT ${to} ${b + amount}`);
        });
      }
    }),
  );

  const auditor = await LineClient.connect(server.port);
  let committedAudits = 0;
  let conflictedAudits = 0;
  let running = true;
  void transfers.then(() => (running = false));
  while (running || committedAudits === 0) {
    await auditor.request("START");
    const balances = await auditor.pipeline(accounts.map((a) => `GET ${a}`));
    const sum = balances.reduce((s, r) => s + Number(value(r)), 0);
    const commit = await auditor.request("COMMIT");
    if (commit.status === "Ok") {
      committedAudits++;
      expect(sum).toBe(total);
    } else {
      expect(commit.code).toBe("CONFLICT");
      conflictedAudits++;
    }
  }
  await transfers;
  const final = await setup.pipeline(accounts.map((a) => `GET ${a}`));
  expect(final.reduce((s, r) => s + Number(value(r)), 0)).toBe(total);
  expect(committedAudits).toBeGreaterThan(0);
  for (const c of [...transferers, auditor, setup]) c.close();
}, 60000);
