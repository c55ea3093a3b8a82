/**
 * HeldReplies on its own: bytes held in order, each part released once the
 * seq it waits for is durable, never before what precedes it. Then through a
 * real TCP server whose commit log makes writes durable only when the test
 * says so. With real fsyncs: persistence-server.test.ts ("always: a client
 * that does not read ...").
 */
import { afterEach, describe, expect, test } from "bun:test";
import { MemoryOnlyLog, type CommitRecord } from "../lib/commit-log.ts";
import { Executor } from "../lib/execute.ts";
import { HeldReplies } from "../lib/held-replies.ts";
import { Logger } from "../lib/log.ts";
import { TxkvServer, type ServerOptions } from "../lib/server.ts";
import { ServerStats } from "../lib/stats.ts";
import { Store } from "../lib/store.ts";
import { LineClient, waitFor } from "./helpers.ts";

const enc = new TextEncoder();

function hold(held: HeldReplies, text: string, seq: number): void {
  const bytes = enc.encode(`--${text}--`);
  held.hold(bytes, 2, bytes.length - 2, seq);
}

/** Sends what is ready (as the server would) and returns it as text. */
function take(held: HeldReplies, durableSeq: number): string {
  const ready = held.readyLength(durableSeq);
  const text = Buffer.from(held.bytes.subarray(0, ready)).toString();
  held.release(ready);
  return text;
}

describe("HeldReplies", () => {
  test("a batch waits for its seq: nothing is ready before it is durable, all of it after", () => {
    const held = new HeldReplies();
    expect(held.isEmpty).toBe(true);
    expect(held.length).toBe(0);
    hold(held, "a\n", 5);
    expect(held.isEmpty).toBe(false);
    expect(held.length).toBe(2);
    expect(held.readyLength(4)).toBe(0);
    expect(held.waitsBeyond(4)).toBe(true);
    expect(take(held, 5)).toBe("a\n");
    expect(held.isEmpty).toBe(true);
    expect(held.length).toBe(0);
    expect(held.waitsBeyond(5)).toBe(false);
  });

  test("a later batch that waits for nothing still waits behind the earlier one", () => {
    const held = new HeldReplies();
    hold(held, "put\n", 7);
    hold(held, "get\n", 0);
    expect(held.readyLength(6)).toBe(0);
    expect(take(held, 7)).toBe("put\nget\n");
  });

  test("batches waiting for different seqs leave one after the other, each when its own seq is durable", () => {
    const held = new HeldReplies();
    hold(held, "one\n", 3);
    hold(held, "two\n", 3);
    hold(held, "three\n", 9);
    hold(held, "four\n", 0);
    hold(held, "five\n", 12);
    expect(take(held, 2)).toBe("");
    expect(take(held, 8)).toBe("one\ntwo\n");
    expect(held.waitsBeyond(8)).toBe(true);
    expect(held.length).toBe("three\nfour\nfive\n".length);
    // More is held while some waits: it queues behind.
    hold(held, "six\n", 0);
    expect(take(held, 11)).toBe("three\nfour\n");
    expect(take(held, 12)).toBe("five\nsix\n");
    expect(held.isEmpty).toBe(true);
  });

  test("an async reply held with seq 0 on an empty hold is ready at once", () => {
    const held = new HeldReplies();
    hold(held, "saved\n", 0);
    expect(take(held, 0)).toBe("saved\n");
  });

  test("a big held batch (grown buffer) is released whole, and holding works again afterwards", () => {
    const held = new HeldReplies();
    const big = "x".repeat(200 * 1024) + "\n";
    hold(held, big, 4);
    expect(held.length).toBe(big.length);
    expect(take(held, 4)).toBe(big);
    expect(held.isEmpty).toBe(true);
    hold(held, "after\n", 5);
    expect(take(held, 5)).toBe("after\n");
  });

  test("once emptied, a connection keeps a small held buffer for reuse but lets go of one a pipelined batch grew", () => {
    const held = new HeldReplies();
    hold(held, "a reply\n", 1);
    take(held, 1);
    const small = held.keptBytes;
    expect(small).toBeGreaterThan(0);
    expect(small).toBeLessThanOrEqual(4 * 1024);
    hold(held, "x".repeat(10 * 1024) + "\n", 2);
    take(held, 2);
    expect(held.keptBytes).toBe(0);
  });

  test("holding nothing holds nothing", () => {
    const held = new HeldReplies();
    held.hold(new Uint8Array(4), 2, 2, 9);
    expect(held.isEmpty).toBe(true);
    expect(held.readyLength(100)).toBe(0);
  });
});

/** A log like --fsync always whose writes become durable only when the test calls durable(). */
class ManualFsyncLog extends MemoryOnlyLog {
  override readonly enabled = true;
  lastSeq = 0;
  /** Set by durableFromNowOn(): writes are acknowledged at once, like --fsync no. */
  private immediate = false;
  override append(record: CommitRecord): number {
    this.lastSeq = record.seq;
    return this.immediate ? 0 : record.seq;
  }
  durable(seq: number): void {
    this.onDurable?.(seq);
  }
  /** SAVE: succeeds at once (the snapshot is not the point here). */
  override save(): Promise<void> {
    return Promise.resolve();
  }
  /** Everything so far becomes durable, and later writes need not wait. */
  durableFromNowOn(): void {
    this.immediate = true;
    this.durable(this.lastSeq);
  }
}

describe("held replies through a real server", () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => {
    for (const cleanup of cleanups.splice(0)) cleanup();
  });

  /** A server on a ManualFsyncLog (options may override the defaults), and a client connected to it. */
  async function start(options: Partial<ServerOptions> = {}) {
    const log = new ManualFsyncLog();
    const stats = new ServerStats();
    const executor = new Executor(new Store(), log, stats, { maxTransactionBytes: 1 << 20, password: undefined, version: "test" });
    const logs: string[] = [];
    const server = new TxkvServer(
      {
        host: "127.0.0.1",
        port: 0,
        maxConnections: 100,
        maxRequestBytes: 1 << 20,
        maxOutputBytes: 1 << 20,
        partialRequestMs: 0,
        password: undefined,
        tls: undefined,
        idleTimeoutSeconds: 0,
        ...options,
      },
      executor,
      new Logger("debug", (line) => logs.push(line)),
    );
    const { port } = server.start();
    const c = await LineClient.connect(port);
    cleanups.push(() => {
      c.close();
      server.stop();
    });
    return { log, stats, c, server, logs, port };
  }

  test("a request sent after a write that waits for its fsync is answered after the write, not before", async () => {
    const { log, stats, c } = await start();
    c.write("PUT a 1\n");
    await waitFor(() => log.lastSeq === 1, 5000, "the PUT to be committed");
    // A separate data event: its batch waits for nothing itself, but must queue behind the held PUT reply.
    c.write("PING\n");
    await waitFor(() => stats.commands === 2, 5000, "the PING to run");
    log.durable(1);
    expect(await c.readReply()).toEqual({ status: "Ok", result: { key: "a", value: "1" } });
    expect(await c.readReply()).toEqual({ status: "Ok", result: "PONG" });
  });

  test("each write's reply leaves when its own commit is durable, in order", async () => {
    const { log, c } = await start();
    c.write("PUT a 1\n");
    await waitFor(() => log.lastSeq === 1, 5000, "the first PUT to be committed");
    c.write("PUT b 2\n");
    await waitFor(() => log.lastSeq === 2, 5000, "the second PUT to be committed");
    log.durable(1);
    expect(await c.readReply()).toEqual({ status: "Ok", result: { key: "a", value: "1" } });
    log.durable(2);
    expect(await c.readReply()).toEqual({ status: "Ok", result: { key: "b", value: "2" } });
  });

  test("QUIT pipelined behind a write that waits for its fsync: the write's reply and Bye leave once it is durable, then the server closes", async () => {
    const { log, stats, c } = await start();
    c.write("PUT a 1\nQUIT\n");
    await waitFor(() => stats.commands === 2, 5000, "the PUT and the QUIT to run");
    expect(c.isClosed).toBe(false); // nothing leaves, and the connection is not ended, before the write is durable
    log.durable(1);
    expect(await c.readReply()).toEqual({ status: "Ok", result: { key: "a", value: "1" } });
    expect(await c.readReply()).toEqual({ status: "Ok", result: "Bye" });
    await waitFor(() => c.isClosed, 2000, "the server to close the connection");
    expect(c.unread).toBe("");
  });

  test("replies held for an fsync count against --max-output-bytes: reading pauses, nothing more runs until they are released, and every reply arrives in order", async () => {
    const { log, stats, c, logs } = await start({ maxOutputBytes: 4096 });
    const n = 1000; // ≈ 50 KB of replies
    c.write(Array.from({ length: n }, (_, i) => `PUT k${i} ${i}\n`).join(""));
    await waitFor(() => logs.some((line) => line.includes("reading paused")), 2000, "reading to pause");
    const ran = stats.commands;
    expect(ran).toBeLessThan(n);
    expect(log.lastSeq).toBe(ran);
    log.durableFromNowOn();
    for (let i = 0; i < n; i++) expect(await c.readReply()).toEqual({ status: "Ok", result: { key: `k${i}`, value: String(i) } });
    expect(stats.commands).toBe(n);
  });

  test("while held replies keep reading paused, the server takes no more of the client's input (its memory stays bounded) and serves the others", async () => {
    const { server, c, logs, port } = await start({ maxOutputBytes: 4096 });
    c.write("PUT k 1\n".repeat(2_000_000)); // 16 MB of writes, none of them ever durable
    await waitFor(() => logs.some((line) => line.includes("reading paused")), 2000, "reading to pause");
    const other = await LineClient.connect(port);
    // Turns of the event loop in which a server still reading would take megabytes more of the 16 MB.
    for (let i = 0; i < 50; i++) expect(await other.request("PING")).toEqual({ status: "Ok", result: "PONG" });
    expect(server.bufferedBytes()).toBeLessThan(2 * 1024 * 1024);
    other.close();
  });

  test("a reply held for its fsync is the server's wait, not the client's silence: the idle timeout does not close the connection", async () => {
    const { log, c, server } = await start({ idleTimeoutSeconds: 2 });
    // The once-a-second idle sweep, run here instead of waiting for its timer: three are past a 2 s timeout.
    const sweep = () => (server as unknown as { closeIdleConnections(): void }).closeIdleConnections();
    c.write("PUT a 1\n");
    await waitFor(() => log.lastSeq === 1, 5000, "the PUT to be committed");
    for (let i = 0; i < 4; i++) sweep();
    log.durable(1);
    expect(await c.readReply()).toEqual({ status: "Ok", result: { key: "a", value: "1" } });
    expect(await c.request("PING")).toEqual({ status: "Ok", result: "PONG" });
  });

  test("a connection reset while its reply waits for an fsync is let go: the server keeps no reference to it", async () => {
    const { log, server, port } = await start();
    const waiting = (server as unknown as { waitingForDurability: Set<unknown> }).waitingForDurability;
    // A client that resets its connection (a half-close would still be answered: the server waits for the fsync).
    const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
    socket.write("PUT a 1\n");
    await waitFor(() => log.lastSeq === 1, 5000, "the PUT to be committed");
    expect(waiting.size).toBe(1);
    socket.terminate();
    await waitFor(() => server.connectionCount === 1, 5000, "the server to see the reset"); // the start()'s client is left
    log.durable(1);
    expect(waiting.size).toBe(0);
  });

  test("replies released by an fsync while earlier replies still wait in the send queue go out behind them, not ahead", async () => {
    const { log, stats, c, server } = await start({ maxOutputBytes: 64 * 1024 * 1024 });
    const value = "v".repeat(900);
    c.write(`PUT big ${value}\n`);
    await waitFor(() => log.lastSeq === 1, 5000, "the first PUT to be committed");
    log.durable(1);
    expect(await c.readReply()).toEqual({ status: "Ok", result: { key: "big", value } });
    c.pauseReading();
    const gets = 20000; // ≈ 18 MB of replies: the kernel takes a few MB, the rest waits in the server's queue
    c.write("GET big\n".repeat(gets));
    await waitFor(() => stats.commandsByType.GET === gets, 10000, "the GETs to run");
    expect(server.bufferedBytes()).toBeGreaterThan(0);
    c.write("PUT after 1\n");
    await waitFor(() => log.lastSeq === 2, 5000, "the second PUT to be committed");
    c.resumeReading();
    const expected = `{"status":"Ok","result":{"key":"big","value":"${value}"}}`;
    // The client has taken bytes, so the kernel has room again: the released reply must still queue.
    expect(await c.readLine()).toBe(expected);
    log.durable(2);
    for (let i = 1; i < gets; i++) expect(await c.readLine()).toBe(expected);
    expect(await c.readReply()).toEqual({ status: "Ok", result: { key: "after", value: "1" } });
  }, 15000);

  test("an asynchronous reply (SAVE) that settles while an earlier write waits for its fsync leaves after that write's reply, not before", async () => {
    const { log, stats, c } = await start();
    // The PING runs only once SAVE's reply is in: when it has run, that reply was delivered while the PUT's was held.
    c.write("PUT a 1\nSAVE\nPING\n");
    await waitFor(() => stats.commands === 3, 5000, "the PUT, the SAVE and the PING to run");
    log.durable(1);
    expect(await c.readReply()).toEqual({ status: "Ok", result: { key: "a", value: "1" } });
    expect(await c.readReply()).toEqual({ status: "Ok", result: "Saved" });
    expect(await c.readReply()).toEqual({ status: "Ok", result: "PONG" });
  });
});
