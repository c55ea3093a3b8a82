/**
 * Hostile clients against a real server subprocess (PROTOCOL §1, §6): memory
 * stays bounded (the process's peak RSS, VmHWM, is read from /proc) and other
 * clients keep getting answers while one client floods without reading, sends
 * a 10 MB line, churns thousands of connections, or holds thousands open.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { join } from "node:path";
import { BUN, LineClient, spawnServer, waitFor, type ServerProcess } from "./helpers.ts";
import { MAX_REQUESTS_PER_TURN } from "../lib/server.ts";

/** Generous: an idle server is about 40 MB; unbounded buffering of any of these abuses reaches gigabytes. */
const RSS_LIMIT_BYTES = 300 * 1024 * 1024;

let server: ServerProcess;
let watcher: LineClient;

beforeAll(async () => {
  server = await spawnServer(["--in-memory", "--log-level", "warn"]);
  watcher = await LineClient.connect(server.port);
});
afterAll(async () => {
  watcher.close();
  await server.kill("SIGTERM");
});

/** The server process's current and peak resident memory, in bytes. */
function memory(): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${server.proc.pid}/status`, "utf8");
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)![1]) * 1024;
  return { rss: kb("VmRSS"), peak: kb("VmHWM") };
}

/** Another client is served at once, with correct answers. */
async function othersAreServed(tag: string): Promise<void> {
  expect(await watcher.request("PING")).toEqual({ status: "Ok", result: "PONG" });
  expect(await watcher.request(`PUT watcher:${tag} ok`)).toMatchObject({ status: "Ok" });
  expect(await watcher.request(`GET watcher:${tag}`)).toEqual({ status: "Ok", result: { key: `watcher:${tag}`, value: "ok" } });
}

async function connectionsNow(): Promise<number> {
  const stats = await watcher.request("STATS");
  return (stats.result as { connections: number }).connections;
}

async function clientBufferBytes(): Promise<number> {
  const stats = await watcher.request("STATS");
  return (stats.result as { memory: { client_buffers: number } }).memory.client_buffers;
}

/** A node:net client: its writes are buffered in full; counts reply lines and bytes. */
function rawClient(): Promise<Socket & { lines: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: "127.0.0.1", port: server.port }) as Socket & { lines: number; bytes: number };
    socket.lines = 0;
    socket.bytes = 0;
    socket.on("data", (chunk: Buffer) => {
      socket.bytes += chunk.length;
      for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) socket.lines++;
    });
    socket.on("error", () => {});
    socket.once("connect", () => resolve(socket));
    socket.once("error", reject);
  });
}

function closeAll(sockets: Socket[]): void {
  for (const s of sockets) s.destroy();
}

describe("memory stays bounded and others are served", () => {
  test("a client pipelines 200,000 requests without reading the replies", async () => {
    const value = "v".repeat(80);
    expect(await watcher.request(`PUT flood ${value}`)).toMatchObject({ status: "Ok" });
    const expectedReply = `{"status":"Ok","result":{"key":"flood","value":"${value}"}}\n`;
    const requests = 200_000;
    const flooder = await rawClient();
    flooder.pause();
    flooder.write("GET flood\n".repeat(requests));
    // The server queues replies up to its limit, then stops reading this client.
    await waitFor(async () => (await clientBufferBytes()) > 512 * 1024, 15000, "the flooder's replies to back up");
    for (let i = 0; i < 5; i++) {
      await othersAreServed(`flood${i}`);
      expect(await clientBufferBytes()).toBeLessThan(4 * 1024 * 1024);
      await Bun.sleep(50);
    }
    expect(memory().peak).toBeLessThan(RSS_LIMIT_BYTES);

    // Once the client reads, every reply arrives, in full.
    flooder.resume();
    await waitFor(() => flooder.lines >= requests, 30000, "all 200,000 replies");
    expect(flooder.lines).toBe(requests);
    expect(flooder.bytes).toBe(requests * Buffer.byteLength(expectedReply));
    flooder.destroy();
    expect(memory().peak).toBeLessThan(RSS_LIMIT_BYTES);
  }, 45000);

  test("a client pipelining a 16 MB burst while reading its replies does not hold the others: they are served within its first quarter", async () => {
    const requests = 3_200_000; // 16 MB of PING lines
    const commandsSoFar = async () => ((await watcher.request("STATS")).result as { commands: number }).commands;
    const before = await commandsSoFar();
    const flooder = await rawClient();
    flooder.write("PING\n".repeat(requests));
    await waitFor(() => flooder.lines > 0, 15000, "the burst's first reply");
    // STATS counts every command run before it, the burst's PINGs included.
    const ranBeforeOthers = (await commandsSoFar()) - before - 1;
    await waitFor(() => flooder.lines >= requests, 30000, "every reply of the burst");
    flooder.destroy();
    expect(ranBeforeOthers).toBeLessThan(requests / 4);
  }, 45000);

  test(`a burst read in one go runs at most ${MAX_REQUESTS_PER_TURN} of its requests before another ready connection is served, and then all of them`, async () => {
    const own = await spawnServer(["--in-memory", "--log-level", "warn"]);
    try {
      const burst = await LineClient.connect(own.port);
      const other = await LineClient.connect(own.port);
      const commands = async () => ((await other.readReply()).result as { commands: number }).commands;
      other.write("STATS\n");
      const before = await commands();
      // Both wait in the kernel while the server is stopped, so that its next poll finds both ready, the burst first.
      own.proc.kill("SIGSTOP");
      const requests = 20_000;
      burst.write("PING\n".repeat(requests));
      other.write("STATS\n");
      own.proc.kill("SIGCONT");
      const ranBefore = (await commands()) - before - 1;
      expect(ranBefore).toBeLessThanOrEqual(MAX_REQUESTS_PER_TURN);
      for (let i = 0; i < requests; i++) expect(await burst.readLine()).toBe('{"status":"Ok","result":"PONG"}');
      burst.close();
      other.close();
    } finally {
      own.proc.kill("SIGCONT");
      await own.kill();
    }
  });

  test("several clients pipelining multi-KB requests at once: no request is split by the server's own pauses (each gets its exact reply)", async () => {
    // Each client in a process of its own, so that only the server can pause inside a line.
    const writers = Array.from({ length: 8 }, (_, n) =>
      Bun.spawn([BUN, join(import.meta.dir, "pipelining-writer.ts"), String(server.port), `split${n}`, "5000", "1000"], { stdout: "pipe" }),
    );
    const reports = await Promise.all(writers.map(async (w) => JSON.parse(await new Response(w.stdout).text())));
    expect(reports).toEqual(Array.from({ length: 8 }, () => ({ wrong: 0, first: null })));
  }, 90000);

  test("a 10 MB line with no newline: TOO_LARGE, nothing buffered, the connection recovers", async () => {
    const sender = await rawClient();
    const replies: string[] = [];
    sender.on("data", (chunk: Buffer) => replies.push(chunk.toString()));
    // The write callback fires once all 10 MB have been handed to the kernel.
    await new Promise<void>((resolve, reject) =>
      sender.write(Buffer.alloc(10 * 1024 * 1024, "x"), (err) => (err ? reject(err) : resolve())),
    );
    await waitFor(() => sender.lines >= 1, 15000, "the TOO_LARGE reply");
    expect(JSON.parse(replies.join(""))).toMatchObject({ status: "Error", code: "TOO_LARGE" });
    await othersAreServed("bigline");
    expect(await clientBufferBytes()).toBeLessThan(64 * 1024);
    sender.write("\nPING\n");
    await waitFor(() => sender.lines >= 2, 5000, "PONG after the long line");
    expect(replies.join("").split("\n")[1]).toBe(JSON.stringify({ status: "Ok", result: "PONG" }));
    sender.destroy();
    expect(memory().peak).toBeLessThan(RSS_LIMIT_BYTES);
  }, 30000);

  test("2,000 connections opened and dropped, in batches, some mid-transaction or reset", async () => {
    const before = await connectionsNow();
    for (let batch = 0; batch < 10; batch++) {
      const sockets = await Promise.all(Array.from({ length: 200 }, () => rawClient()));
      sockets.forEach((s, i) => {
        if (i % 3 === 0) s.write("START\nPUT churn v\n");
        else if (i % 3 === 1) s.write("PUT churn:" + i + " v\nGET churn:" + i + "\n");
      });
      sockets.forEach((s, i) => (i % 2 === 0 ? s.destroy() : s.resetAndDestroy()));
      await othersAreServed(`churn${batch}`);
    }
    await waitFor(async () => (await connectionsNow()) === before, 10000, "every dropped connection to be released");
    expect(await watcher.request("GET churn")).toMatchObject({ code: "NOT_FOUND" }); // only ever written inside dropped transactions
    const stats = await watcher.request("STATS");
    expect((stats.result as { transactions: { open: number } }).transactions.open).toBe(0);
    expect(memory().peak).toBeLessThan(RSS_LIMIT_BYTES);
  }, 30000);

  test("3,000 idle connections are held while others are served", async () => {
    const before = await connectionsNow();
    const idle: Awaited<ReturnType<typeof rawClient>>[] = [];
    for (let batch = 0; batch < 15; batch++) idle.push(...(await Promise.all(Array.from({ length: 200 }, () => rawClient()))));
    await waitFor(async () => (await connectionsNow()) >= before + 3000, 10000, "3,000 connections to be open");
    await othersAreServed("idle");
    // Idle does not mean dead: one of them is still served.
    const last = idle[idle.length - 1]!;
    last.write("PING\n");
    await waitFor(() => last.lines === 1, 5000, "an idle connection's PING");
    expect(memory().peak).toBeLessThan(RSS_LIMIT_BYTES);
    closeAll(idle);
    await waitFor(async () => (await connectionsNow()) === before, 10000, "the idle connections to close");
  }, 30000);

  test("the server is still up and answering after all of it", async () => {
    await othersAreServed("after");
    expect(server.proc.exitCode).toBeNull();
    const { rss, peak } = memory();
    console.log(`server RSS now ${(rss / 2 ** 20).toFixed(1)} MiB, peak ${(peak / 2 ** 20).toFixed(1)} MiB`);
  });
});

describe("the open-files limit", () => {
  test("a --max-connections the process has no descriptors for is lowered with a warning: past it clients get BUSY, they do not hang", async () => {
    const limited = await spawnServer(["--in-memory"], { openFiles: 100 });
    try {
      expect(limited.stderr()).toContain("--max-connections lowered to fit the open-files limit");
      expect(limited.stderr()).toContain('"max_connections":68');
      const clients = await Promise.all(Array.from({ length: 120 }, () => LineClient.connect(limited.port)));
      let busy = 0;
      for (const c of clients) {
        c.write("PING\n");
        const reply = await c.readReply();
        if (reply.code === "BUSY") busy++;
        else expect(reply).toEqual({ status: "Ok", result: "PONG" });
      }
      expect(busy).toBe(120 - 68);
      for (const c of clients) c.close();
    } finally {
      await limited.kill("SIGKILL");
    }
  }, 30000);

  test("a --max-connections that fits the open-files limit with 32 to spare is kept, without a warning", async () => {
    const fitting = await spawnServer(["--in-memory", "--max-connections", "68"], { openFiles: 100 });
    try {
      // The warning would come before this line; stderr is read apart from the stdout line spawnServer waited for.
      await waitFor(() => fitting.stderr().includes("ready to accept connections"), 10000, "the start-up log line");
      expect(fitting.stderr()).not.toContain("--max-connections lowered");
    } finally {
      await fitting.kill("SIGKILL");
    }
  });
});
