/**
 * The client library against real txkv servers (in-process on port 0, and a
 * subprocess for the server-killed case), plus scripted fake servers for the
 * failure timings a real server cannot be made to hit on cue.
 */
import { afterAll, beforeAll, describe, expect, spyOn, test } from "bun:test";
import type { Socket, TCPSocketListener } from "bun";
import type { RunningServer } from "../lib/app.ts";
import {
  connect,
  TxkvClient,
  TxkvConnectionError,
  TxkvError,
  TxkvOutcomeUnknownError,
  type JsonValue,
} from "../lib/client.ts";
import { closedPort, spawnServer, startInProcess as inProcessServer, waitFor } from "./helpers.ts";
import { makeTestCertificates, tlsPongServer } from "./tls-certs.ts";

/**
 * A fake server: `answer(line)` returns the reply object to send (or several,
 * in one write), or "close" to drop the connection at that request, or null
 * to stay silent.
 */
function fakeServer(answer: (line: string) => object | object[] | "close" | null): TCPSocketListener<{ buffered: string }> {
  return bufferingServer((socket, chunk) => {
    socket.data.buffered += chunk.toString();
    let newline: number;
    while ((newline = socket.data.buffered.indexOf("\n")) !== -1) {
      const line = socket.data.buffered.slice(0, newline);
      socket.data.buffered = socket.data.buffered.slice(newline + 1);
      const reply = answer(line);
      if (reply === "close") {
        socket.end();
        return;
      }
      if (reply !== null) socket.write((Array.isArray(reply) ? reply : [reply]).map((r) => JSON.stringify(r) + "\n").join(""));
    }
  });
}

const ok = (result: unknown) => ({ status: "Ok", result });

/** A fake server whose connections each keep the text received so far in socket.data.buffered; data() decides what to do with it. */
function bufferingServer(data: (socket: Socket<{ buffered: string }>, chunk: Buffer) => void): TCPSocketListener<{ buffered: string }> {
  return Bun.listen<{ buffered: string }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        socket.data = { buffered: "" };
      },
      data,
    },
  });
}


let server: RunningServer;
let client: TxkvClient;

beforeAll(async () => {
  server = await inProcessServer();
  client = await connect({ port: server.port });
});

afterAll(async () => {
  await client.close();
  await server.shutdown();
});

describe("commands", () => {
  test("put, get, del and keys round-trip any key and any JSON value", async () => {
    const values: Record<string, JsonValue> = {
      "plain": "value1",
      "with spaces": "a  b\tc",
      "{brace": { nested: [1, 2.5, true, null, "x"] },
      "null-value": null,
      "number": -12.5e3,
      "unicode ключ ✓": "значение 🎉",
      "newline": "line1\nline2",
    };
    for (const [key, value] of Object.entries(values)) await client.put(`rt:${key}`, value);
    for (const [key, value] of Object.entries(values)) expect(await client.get(`rt:${key}`)).toEqual(value);
    expect(await client.keys("rt:")).toEqual(Object.keys(values).map((k) => `rt:${k}`).sort());
    expect(await client.del("rt:number")).toBe(-12.5e3);
    expect(await client.get("rt:number")).toBeUndefined();
  });

  test("an integer a number would round round-trips exactly as a bigint, also inside a value and a transaction; others stay numbers", async () => {
    const id = 12345678901234567890n;
    await client.put("big:id", id);
    expect(await client.get("big:id")).toBe(id);
    await client.put("big:doc", { ids: [id, -9007199254740993n, 7], ratio: 0.5 });
    expect(await client.get("big:doc")).toEqual({ ids: [id, -9007199254740993n, 7], ratio: 0.5 });
    // Written by someone else in the JSON form: read exactly, not rounded to 12345678901234567000.
    expect(await client.send('PUT {"key":"big:raw","value":12345678901234567890}')).toMatchObject({ status: "Ok" });
    expect(await client.get("big:raw")).toBe(id);
    await client.transaction(async (tx) => {
      await tx.put("big:tx", ((await tx.get("big:id")) as bigint) + 1n);
    });
    expect(await client.get("big:tx")).toBe(id + 1n);
    // A number that holds the integer exactly stays a number (2^53, 10^20); a bigint a number holds comes back as one.
    for (const exact of [9007199254740991, 2 ** 53, 1e20]) {
      await client.put("big:exact", exact);
      expect(await client.get("big:exact")).toBe(exact);
    }
    await client.put("big:small", 7n);
    expect(await client.get("big:small")).toBe(7);
  });

  test("get and del of a missing key resolve to undefined; a stored null stays null", async () => {
    expect(await client.get("missing:1")).toBeUndefined();
    expect(await client.del("missing:1")).toBeUndefined();
    await client.put("null:1", null);
    expect(await client.get("null:1")).toBeNull();
  });

  test("ping answers PONG; stats returns the server's counters (its key count is the store's)", async () => {
    expect(await client.ping()).toBe("PONG");
    const stats = await client.stats();
    expect(stats.keys).toBe((await client.keys()).length);
    expect(stats.keys).toBeGreaterThan(0);
  });

  test("keys with no prefix lists every key, sorted", async () => {
    const all = await client.keys();
    expect(all).toEqual([...all].sort());
    expect(all).toContain("null:1");
  });
});

describe("pipelining", () => {
  test("many requests in flight on one connection get their own replies, in order", async () => {
    const n = 2000;
    const puts = Array.from({ length: n }, (_, i) => client.put(`pipe:${i}`, { i }));
    const gets = Array.from({ length: n }, (_, i) => client.get(`pipe:${i}`));
    await Promise.all(puts);
    const got = await Promise.all(gets);
    expect(got).toEqual(Array.from({ length: n }, (_, i) => ({ i })));
  });

  test("mixed request kinds resolve with the reply meant for each", async () => {
    await client.put("mix:a", "A");
    const [a, ping, missing, keys, b] = await Promise.all([
      client.get("mix:a"),
      client.ping(),
      client.get("mix:none"),
      client.keys("mix:"),
      client.send("GET mix:a"),
    ]);
    expect([a, ping, missing, keys]).toEqual(["A", "PONG", undefined, ["mix:a"]]);
    expect(b).toEqual({ status: "Ok", result: { key: "mix:a", value: "A" } });
  });

  test("at most a window of request bytes is in flight: the rest waits in the client, so the kernel takes each write whole", async () => {
    const received: string[] = [];
    let answerAll: (() => void) | null = null;
    const fake = bufferingServer((socket, chunk) => {
      socket.data.buffered += chunk.toString();
      const lines = socket.data.buffered.split("\n");
      socket.data.buffered = lines.pop()!;
      received.push(...lines);
      // Silent until told: then every line received so far gets its reply, and later ones at once.
      answerAll = () => {
        for (const _ of received.splice(0)) socket.write(JSON.stringify(ok("PONG")) + "\n");
      };
    });
    const c = await connect({ port: fake.port });
    const line = "PING"; // 5 bytes with its LF
    const replies = Array.from({ length: 5000 }, () => c.send(line));
    await waitFor(() => received.length > 0, 2000, "the first requests");
    await Bun.sleep(50); // room for more to arrive, if the client sent more than its window
    expect(received.length * 5).toBeLessThanOrEqual(8 * 1024);
    expect(received.length).toBeGreaterThan(1000); // pipelined, not one at a time
    const interval = setInterval(() => answerAll?.(), 1);
    expect((await Promise.all(replies)).every((r) => r.status === "Ok")).toBe(true);
    clearInterval(interval);
    await c.close();
    fake.stop(true);
  });

  test("a request larger than the socket buffer is written in full (drain)", async () => {
    // No partial-request timer: under load a pause between two chunks of this one
    // request could pass 10 ms, and the server would run the first part alone.
    const big = await inProcessServer(["--max-request-bytes", "8000000", "--partial-request-ms", "0"]);
    const bigClient = await connect({ port: big.port });
    const value = "v".repeat(4_000_000);
    await bigClient.put("big", value);
    expect(await bigClient.get("big")).toBe(value);
    await bigClient.close();
    await big.shutdown();
  });

  test("long replies arriving in many pieces, cut inside characters and between replies, are read whole and in order", async () => {
    const long = "\u00e9".repeat(150_000) + "\u20ac\ud83d\ude00" + "x".repeat(50_000);
    const fake = bufferingServer(async (socket, chunk) => {
      socket.data.buffered += chunk.toString();
      if (socket.data.buffered.split("\n").length < 3) return;
      const bytes = Buffer.from(JSON.stringify(ok({ key: "a", value: long })) + "\n" + JSON.stringify(ok({ key: "b", value: "short" })) + "\n");
      for (let at = 0; at < bytes.length; at += 997) {
        socket.write(bytes.subarray(at, at + 997));
        if ((at / 997) % 20 === 0) await Bun.sleep(1); // so that the client reads many separate chunks
      }
    });
    const c = await connect({ port: fake.port });
    try {
      const [a, b] = await Promise.all([c.send("GET a"), c.send("GET b")]);
      expect(a as unknown).toEqual(ok({ key: "a", value: long }));
      expect(b as unknown).toEqual(ok({ key: "b", value: "short" }));
    } finally {
      await c.close();
      fake.stop(true);
    }
  });

  test("a request over the server's limit gets its TOO_LARGE, which comes before the line is wholly sent; later requests go on", async () => {
    const proc = await spawnServer(["--in-memory"]);
    const c = await connect({ port: proc.port });
    try {
      await expect(c.put("huge", "v".repeat(16_000_000))).rejects.toMatchObject({ code: "TOO_LARGE" });
      expect(await c.send(`PUT huge ${"w".repeat(16_000_000)}`)).toMatchObject({ status: "Error", code: "TOO_LARGE" });
      expect(await c.ping()).toBe("PONG");
      expect(await c.get("huge")).toBeUndefined();
    } finally {
      await c.close();
      await proc.kill("SIGTERM");
    }
  });
});

describe("typed errors", () => {
  test("an Error reply rejects with TxkvError carrying code and message", async () => {
    const reply = await client.send("COMMIT");
    expect(reply).toMatchObject({ status: "Error", code: "NO_TRANSACTION" });
    const thrown = await client.put("", "empty key").catch((e) => e);
    expect(thrown).toBeInstanceOf(TxkvError);
    expect(thrown.code).toBe("BAD_REQUEST");
    expect(typeof thrown.message).toBe("string");
    expect(thrown.message.length).toBeGreaterThan(0);
  });

  test("a password-protected server: AUTH_REQUIRED without, AUTH_FAILED with a wrong one, fine with the right one", async () => {
    const guarded = await inProcessServer(["--password", "s3cret"]);
    const anonymous = await connect({ port: guarded.port });
    const required = await anonymous.get("x").catch((e) => e);
    expect(required).toBeInstanceOf(TxkvError);
    expect(required.code).toBe("AUTH_REQUIRED");
    await anonymous.close();

    const wrong = await connect({ port: guarded.port, password: "nope" }).catch((e) => e);
    expect(wrong).toBeInstanceOf(TxkvError);
    expect(wrong.code).toBe("AUTH_FAILED");

    const authed = await connect({ port: guarded.port, password: "s3cret" });
    await authed.put("x", 1);
    expect(await authed.get("x")).toBe(1);
    await authed.close();
    await guarded.shutdown();
  });

  test("a refused AUTH at connect rejects with AUTH_FAILED and closes the connection: the server's client count goes back to 0", async () => {
    const guarded = await inProcessServer(["--password", "s3cret"]);
    try {
      const wrong = await connect({ port: guarded.port, password: "nope" }).catch((e) => e);
      expect(wrong).toBeInstanceOf(TxkvError);
      expect(wrong.code).toBe("AUTH_FAILED");
      await waitFor(() => guarded.executor.stats.connectionsCurrent === 0, 3000, "the refused client's connection to close");
      expect(guarded.executor.stats.connectionsTotal).toBe(1);
    } finally {
      await guarded.shutdown();
    }
  });

  test("passwords that begin with { or a space, or hold any character, authenticate (AUTH goes in the JSON form)", async () => {
    for (const password of ['{"not":"json form"}', " leading space", "tab\there"]) {
      const guarded = await inProcessServer(["--password", password]);
      const c = await connect({ port: guarded.port, password });
      expect(await c.ping()).toBe("PONG");
      await c.close();
      await guarded.shutdown();
    }
  });

  test("send rejects lines the protocol cannot carry, before sending anything; a CR inside a line is data", async () => {
    await expect(client.send("GET a\nGET b")).rejects.toBeInstanceOf(TypeError);
    await expect(client.send("PING\r")).rejects.toBeInstanceOf(TypeError);
    await expect(client.send("   ")).rejects.toBeInstanceOf(TypeError);
    expect(await client.send("PUT send:cr a\rb")).toMatchObject({ status: "Ok", result: { value: "a\rb" } });
    // A lone surrogate cannot be sent as UTF-8 (it would arrive as U+FFFD); the JSON form escapes it.
    await expect(client.send("PUT send:lone a\ud800b")).rejects.toBeInstanceOf(TypeError);
    await client.put("send:lone", "a\ud800b");
    expect(await client.get("send:lone")).toBe("a\ud800b");
  });

  test("put refuses NaN and Infinity (JSON has no such numbers) instead of storing null", async () => {
    for (const value of [NaN, Infinity, { nested: [-Infinity] }]) {
      await expect(client.put("nan:1", value)).rejects.toBeInstanceOf(TypeError);
    }
    expect(await client.get("nan:1")).toBeUndefined();
  });

  test("put refuses what JSON.stringify would store changed (undefined, a function, a symbol, a Map, a Set), anywhere in the value, also in a transaction", async () => {
    const odd = [undefined, () => 1, Symbol("s"), { a: undefined }, [undefined], { deep: [new Map([["k", 1]])] }, new Set([1])];
    for (const value of odd) {
      const refused = client.put("odd:1", value as never);
      await expect(refused).rejects.toBeInstanceOf(TypeError);
      await expect(refused).rejects.toThrow("cannot be stored: JSON has no such value");
      await expect(client.transaction((tx) => tx.put("odd:1", value as never))).rejects.toBeInstanceOf(TypeError);
    }
    expect(await client.get("odd:1")).toBeUndefined();
    // A Date stores what its toJSON gives, as JSON.stringify has it.
    await client.put("odd:date", new Date(0) as never);
    expect(await client.get("odd:date")).toBe("1970-01-01T00:00:00.000Z");
  });

  test("send refuses a request that is not a string with a TypeError saying so", async () => {
    await expect(client.send(42 as never)).rejects.toThrow("a request line is a string, not number");
  });
});

describe("transaction()", () => {
  test("commits what the function wrote and resolves with its result", async () => {
    const result = await client.transaction(async (tx) => {
      await tx.put("tx:a", 1);
      await tx.put("tx:b", 2);
      return (await tx.get("tx:a")) as number;
    });
    expect(result).toBe(1);
    expect(await client.get("tx:b")).toBe(2);
  });

  test("options that are not a count or a duration (NaN, negative, fractional retries) are refused before anything runs", async () => {
    let runs = 0;
    const fn = async () => void runs++;
    for (const [options, message] of [
      [{ retries: NaN }, "retries: expected a number"],
      [{ retries: -1 }, "retries: expected 0 or more"],
      [{ retries: 1.5 }, "retries: expected a whole number"],
      [{ backoffMs: Infinity }, "backoffMs: expected a finite number"],
      [{ maxBackoffMs: -5 }, "maxBackoffMs: expected 0 or more"],
    ] as const) {
      const error = await client.transaction(fn, options).catch((e) => e);
      expect(error).toBeInstanceOf(TypeError);
      expect(error.message).toBe(`transaction options: ${message}`);
    }
    expect(runs).toBe(0);
    expect(await client.ping()).toBe("PONG"); // no transaction was left open
    await client.transaction(fn, { retries: 0, backoffMs: 0, maxBackoffMs: 0 });
    expect(runs).toBe(1);
  });

  test("retries the whole function on CONFLICT until it commits", async () => {
    const other = await connect({ port: server.port });
    await client.put("counter", 0);
    let attempts = 0;
    const final = await client.transaction(
      async (tx) => {
        attempts++;
        const current = (await tx.get("counter")) as number;
        // The first three attempts are overtaken by another client's committed write.
        if (attempts <= 3) await other.put("counter", current + 100);
        await tx.put("counter", current + 1);
        return current + 1;
      },
      { retries: 5, backoffMs: 1 },
    );
    expect(attempts).toBe(4);
    expect(final).toBe(301);
    expect(await client.get("counter")).toBe(301);
    await other.close();
  });

  test("gives up with the CONFLICT error after the retries are used", async () => {
    const other = await connect({ port: server.port });
    await client.put("hot", 0);
    let attempts = 0;
    const error = await client
      .transaction(
        async (tx) => {
          attempts++;
          const current = (await tx.get("hot")) as number;
          await other.put("hot", current + 1);
          await tx.put("hot", -1);
        },
        { retries: 2, backoffMs: 1 },
      )
      .catch((e) => e);
    expect(error).toBeInstanceOf(TxkvError);
    expect(error.code).toBe("CONFLICT");
    expect(attempts).toBe(3);
    expect(await client.get("hot")).toBe(3);
    await other.close();
  });

  test("concurrent increments from several clients all land (serializable + retry)", async () => {
    await client.put("shared", 0);
    const clients = await Promise.all(Array.from({ length: 4 }, () => connect({ port: server.port })));
    await Promise.all(
      clients.map(async (c) => {
        for (let i = 0; i < 25; i++) {
          await c.transaction(
            async (tx) => {
              const n = (await tx.get("shared")) as number;
              await Bun.sleep(0);
              await tx.put("shared", n + 1);
            },
            { retries: 1000, backoffMs: 1, maxBackoffMs: 10 },
          );
        }
      }),
    );
    expect(await client.get("shared")).toBe(100);
    await Promise.all(clients.map((c) => c.close()));
  });

  test("rolls back when the function throws, rethrows, and leaves the client usable", async () => {
    const error = await client
      .transaction(async (tx) => {
        await tx.put("rolled:a", "should vanish");
        throw new Error("changed my mind");
      })
      .catch((e) => e);
    expect(error.message).toBe("changed my mind");
    expect(await client.get("rolled:a")).toBeUndefined();
    // No transaction was left open on the connection.
    expect(await client.send("ROLLBACK")).toMatchObject({ status: "Error", code: "NO_TRANSACTION" });
  });

  test("calls made on the client during a transaction wait for it and never join it", async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let insideWritten!: () => void;
    const written = new Promise<void>((resolve) => (insideWritten = resolve));
    let outsideDone = false;
    let outsideSeenInside: unknown = "not read";
    let outsideDoneInside = true;
    const transaction = client
      .transaction(async (tx) => {
        await tx.put("iso:inside", "x");
        insideWritten();
        await gate;
        // A round trip on the connection after the outside call was made: had that call gone
        // out meanwhile, its PUT would be inside this transaction and its reply in first.
        outsideSeenInside = await tx.get("iso:outside");
        outsideDoneInside = outsideDone;
        throw new Error("abort");
      })
      .catch((e) => e);
    await written;
    const outside = client.put("iso:outside", "y").then(() => (outsideDone = true));
    release();
    expect((await transaction).message).toBe("abort");
    expect(outsideSeenInside).toBeUndefined();
    expect(outsideDoneInside).toBe(false);
    await outside;
    // The outside write was applied, and was not rolled back with the transaction.
    expect(await client.get("iso:outside")).toBe("y");
    expect(await client.get("iso:inside")).toBeUndefined();
  });

  test("a CONFLICT that fn itself throws (another transaction that gave up) is rethrown, not retried: fn ran once", async () => {
    const other = await connect({ port: server.port });
    const meddler = await connect({ port: server.port });
    let runs = 0;
    const error = await client
      .transaction(
        async (tx) => {
          runs++;
          await tx.put("nested:outer", runs);
          // Another client's transaction loses its COMMIT to a write made after its read, and gives up.
          await other.transaction(
            async (inner) => {
              await inner.get("nested:inner");
              await meddler.put("nested:inner", "overtaken");
              await inner.put("nested:inner", "mine");
            },
            { retries: 0 },
          );
        },
        { retries: 3, backoffMs: 0 },
      )
      .catch((e) => e);
    expect(error).toBeInstanceOf(TxkvError);
    expect(error.code).toBe("CONFLICT");
    expect(runs).toBe(1);
    expect(await client.get("nested:outer")).toBeUndefined(); // rolled back: its COMMIT was never sent
    await other.close();
    await meddler.close();
  });

  test("the tx handle refuses use after its transaction ended", async () => {
    let leaked: { get(key: string): Promise<unknown> } | null = null;
    await client.transaction(async (tx) => {
      leaked = tx;
    });
    await expect(leaked!.get("a")).rejects.toThrow("after its transaction ended");
  });

  test("COMMIT errors other than CONFLICT (ABORTED, PERSISTENCE) are thrown at once, not retried", async () => {
    for (const code of ["ABORTED", "PERSISTENCE"]) {
      let commits = 0;
      const fake = fakeServer((line) => {
        if (line === "COMMIT") {
          commits++;
          return { status: "Error", code, message: `refused: ${code}` };
        }
        return ok("x");
      });
      const c = await connect({ port: fake.port });
      const error = await c.transaction(async (tx) => tx.put("k", 1), { retries: 5, backoffMs: 0 }).catch((e) => e);
      expect(error).toBeInstanceOf(TxkvError);
      expect(error.code).toBe(code);
      expect(commits).toBe(1);
      await c.close();
      fake.stop(true);
    }
  });

  test("backoff between CONFLICT retries: 10 retries by default, doubling from backoffMs, never over maxBackoffMs, jittered down to half", async () => {
    // Bun.sleep and Math.random are replaced for this test: the waits are recorded, not waited, and
    // the jitter is pinned to its ends (random 1: the full ceiling; random 0: half of it). No timing is asserted.
    const sleep = spyOn(Bun, "sleep").mockImplementation(async () => {});
    const random = spyOn(Math, "random").mockReturnValue(1);
    try {
      let commits = 0;
      const fake = fakeServer((line) => {
        if (line !== "COMMIT") return ok("x");
        commits++;
        return { status: "Error", code: "CONFLICT", message: "conflict" };
      });
      const c = await connect({ port: fake.port });
      const byDefault = await c.transaction(async (tx) => tx.put("k", 1)).catch((e) => e);
      expect(byDefault.code).toBe("CONFLICT");
      expect(commits).toBe(11); // the first attempt and 10 retries
      // Defaults: backoffMs 5, doubling per attempt, capped at maxBackoffMs 250.
      expect(sleep.mock.calls.map(([ms]) => ms)).toEqual([5, 10, 20, 40, 80, 160, 250, 250, 250, 250]);

      sleep.mockClear();
      random.mockReturnValue(0);
      commits = 0;
      await c.transaction(async (tx) => tx.put("k", 1), { retries: 4, backoffMs: 1000, maxBackoffMs: 8 }).catch((e) => e);
      expect(commits).toBe(5);
      expect(sleep.mock.calls.map(([ms]) => ms)).toEqual([4, 4, 4, 4]);
      await c.close();
      fake.stop(true);
    } finally {
      sleep.mockRestore();
      random.mockRestore();
    }
  });
});

describe("when the connection goes away", () => {
  test("a server at its connection limit: every request rejects with code BUSY, the one the refusal answered and the ones after", async () => {
    const full = await inProcessServer(["--max-connections", "1"]);
    const holder = await connect({ port: full.port });
    const refused = await connect({ port: full.port });
    try {
      const first = await refused.ping().catch((e) => e);
      const later = await refused.ping().catch((e) => e);
      for (const error of [first, later]) {
        expect(error.code).toBe("BUSY");
        expect(error.message).toContain("Too many connections");
      }
      expect(later).toBeInstanceOf(TxkvConnectionError);
    } finally {
      await refused.close().catch(() => {});
      await holder.close();
      await full.shutdown();
    }
  });

  test("connecting to a closed port fails with TxkvConnectionError naming the address (an IPv6 one in brackets)", async () => {
    const port = closedPort();
    const error = await connect({ port }).catch((e) => e);
    expect(error).toBeInstanceOf(TxkvConnectionError);
    expect(error.message).toContain(`127.0.0.1:${port}`);
    const ipv6 = await connect({ host: "::1", port }).catch((e) => e);
    expect(ipv6).toBeInstanceOf(TxkvConnectionError);
    expect(ipv6.message).toStartWith(`cannot connect to [::1]:${port}: `);
  });

  test("with no port given the client dials port 8080, and the connect error names 127.0.0.1:8080", async () => {
    // Bun.connect is stubbed: what (if anything) listens on this machine's port 8080 cannot change the outcome.
    const dial = spyOn(Bun, "connect").mockImplementation((() => Promise.reject(new Error("refused by the test"))) as unknown as typeof Bun.connect);
    try {
      const error = await connect({ host: "127.0.0.1" }).catch((e) => e);
      expect(error).toBeInstanceOf(TxkvConnectionError);
      expect(error.message).toBe("cannot connect to 127.0.0.1:8080: refused by the test");
      expect(dial).toHaveBeenCalledTimes(1);
      expect(dial.mock.calls[0]![0]).toMatchObject({ hostname: "127.0.0.1", port: 8080 });
    } finally {
      dial.mockRestore();
    }
  });

  test("a killed server rejects the requests in flight and every later call", async () => {
    const proc = await spawnServer(["--in-memory"]);
    const c = await connect({ port: proc.port });
    await c.put("a", 1);
    void proc.kill("SIGSTOP"); // frozen: the next request stays unanswered
    const inFlight = c.get("a").catch((e) => e);
    // send() writes from a microtask: once a turn of the event loop has passed, the request is on the socket.
    await new Promise((resolve) => setImmediate(resolve));
    void proc.kill("SIGKILL");
    expect(await inFlight).toBeInstanceOf(TxkvConnectionError);
    await c.closed;
    expect(c.isOpen).toBe(false);
    const later = await c.get("a").catch((e) => e);
    expect(later).toBeInstanceOf(TxkvConnectionError);
  });

  test("requests waiting for replies reject when the server drops the connection", async () => {
    let silentCount = 0;
    const fake = fakeServer((line) => {
      if (line === "PING") return ok("PONG");
      silentCount++;
      return silentCount === 3 ? "close" : null;
    });
    const c = await connect({ port: fake.port });
    expect(await c.ping()).toBe("PONG");
    const results = await Promise.allSettled([c.get("a"), c.get("b"), c.get("c")]);
    for (const result of results) {
      expect(result.status).toBe("rejected");
      expect((result as PromiseRejectedResult).reason).toBeInstanceOf(TxkvConnectionError);
    }
    fake.stop(true);
  });

  test("a drop after COMMIT was sent: TxkvOutcomeUnknownError, not retried", async () => {
    let commits = 0;
    const fake = fakeServer((line) => {
      if (line === "START") return ok("Transaction started");
      if (line.startsWith("PUT ")) return ok({ key: "k", value: 1 });
      if (line === "COMMIT") {
        commits++;
        return "close";
      }
      return null;
    });
    const c = await connect({ port: fake.port });
    const error = await c.transaction(async (tx) => tx.put("k", 1), { retries: 5 }).catch((e) => e);
    expect(error).toBeInstanceOf(TxkvOutcomeUnknownError);
    expect(error).toBeInstanceOf(TxkvConnectionError);
    expect(error.message).toContain("outcome unknown");
    expect(commits).toBe(1);
    fake.stop(true);
  });

  test("a drop before COMMIT: plain TxkvConnectionError (nothing was applied), not retried", async () => {
    let starts = 0;
    const fake = fakeServer((line) => {
      if (line === "START") {
        starts++;
        return ok("Transaction started");
      }
      return "close";
    });
    const c = await connect({ port: fake.port });
    const error = await c.transaction(async (tx) => tx.put("k", 1), { retries: 5 }).catch((e) => e);
    expect(error).toBeInstanceOf(TxkvConnectionError);
    expect(error).not.toBeInstanceOf(TxkvOutcomeUnknownError);
    expect(starts).toBe(1);
    fake.stop(true);
  });

  test("the connection drops while the function awaits something else: COMMIT was never written, so TxkvConnectionError", async () => {
    const fake = fakeServer((line) => (line === "START" ? ok("Transaction started") : null));
    const c = await connect({ port: fake.port });
    const error = await c
      .transaction(async () => {
        fake.stop(true); // the server goes away mid-function
        await c.closed;
      })
      .catch((e) => e);
    expect(error).toBeInstanceOf(TxkvConnectionError);
    expect(error).not.toBeInstanceOf(TxkvOutcomeUnknownError);
  });

  test("close() during a transaction's CONFLICT backoff lets the retry run to its end", async () => {
    let commits = 0;
    const fake = fakeServer((line) => {
      if (line === "COMMIT") return ++commits === 1 ? { status: "Error", code: "CONFLICT", message: "conflict" } : ok("Transaction committed");
      return ok("x");
    });
    const c = await connect({ port: fake.port });
    let closing: Promise<void> | null = null;
    let runs = 0;
    const result = await c.transaction(
      async (tx) => {
        if (++runs === 1) closing = c.close();
        await tx.put("k", 1);
        return "done";
      },
      { backoffMs: 20 },
    );
    expect(result).toBe("done");
    expect(runs).toBe(2);
    await closing;
    expect(c.isOpen).toBe(false);
    fake.stop(true);
  });

  test("a reply to a request not yet wholly sent (the server ran a fragment) fails the connection instead of shifting replies", async () => {
    let first = true;
    const fake = fakeServer(() => {
      if (!first) return ok("b");
      first = false;
      return [ok("a"), ok("one too many")]; // two replies for one request, as when a fragment ran on its own
    });
    const c = await connect({ port: fake.port });
    const big = "x".repeat(5000); // two do not fit in the window: the second waits unsent
    const results = await Promise.all([c.send(`PUT k ${big}`), c.send(`PUT k ${big}`), c.send(`PUT k ${big}`)].map((p) => p.catch((e) => e)));
    expect(results[0]).toMatchObject({ status: "Ok", result: "a" });
    expect(results[1]).toBeInstanceOf(TxkvConnectionError);
    expect(String(results[1])).toContain("out of step");
    expect(results[2]).toBeInstanceOf(TxkvConnectionError);
    fake.stop(true);
  });

  test("close() lets requests already made get their replies, those queued behind a running transaction too, then refuses new ones", async () => {
    const c = await connect({ port: server.port });
    const inFlight = [c.put("close:a", 1), c.get("close:a")];
    let closing!: Promise<void>;
    const transaction = c.transaction(async (tx) => {
      queued = c.get("close:a"); // made before close(): waits for the transaction, then is answered
      closing = c.close();
      await tx.put("close:b", 2);
      return "done";
    });
    let queued!: Promise<unknown>;
    expect(await transaction).toBe("done");
    expect(await Promise.all(inFlight)).toEqual([undefined, 1]);
    expect(await queued).toBe(1);
    await closing;
    await expect(c.ping()).rejects.toBeInstanceOf(TxkvConnectionError);
    const d = await connect({ port: server.port });
    expect(await d.get("close:b")).toBe(2);
    await d.close();
  });

  test("closeReason is null while close() waits for a reply, then the error later calls reject with: 'connection closed by the client'", async () => {
    let answer!: () => void;
    let lineArrived!: () => void;
    const arrived = new Promise<void>((resolve) => (lineArrived = resolve));
    const held = Bun.listen<{ buffered: string }>({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open(socket) {
          socket.data = { buffered: "" };
        },
        data(socket, chunk) {
          socket.data.buffered += chunk.toString();
          if (!socket.data.buffered.endsWith("\n")) return;
          answer = () => socket.write(JSON.stringify(ok("PONG")) + "\n");
          lineArrived();
        },
        end(socket) {
          socket.end();
        },
      },
    });
    try {
      const c = await connect({ port: held.port });
      const ping = c.ping();
      await arrived; // the PING is on the server, unanswered
      const closing = c.close();
      expect(c.closeReason).toBeNull();
      const late = await c.ping().catch((e) => e); // refused at once: close() was called
      expect(late).toBeInstanceOf(TxkvConnectionError);
      expect(c.closeReason).toBeNull(); // still closing: the PING waits for its reply
      expect(c.isOpen).toBe(true);
      answer();
      expect(await ping).toBe("PONG");
      await closing;
      expect(c.isOpen).toBe(false);
      expect(c.closeReason).toBeInstanceOf(TxkvConnectionError);
      expect(c.closeReason!.message).toBe("connection closed by the client");
      expect(await c.get("x").catch((e) => e)).toBe(c.closeReason!);
    } finally {
      held.stop(true);
    }
  });

  test("await using closes the client as close() does, not destroy(): a request made in the block still gets its reply", async () => {
    let disposed!: TxkvClient;
    let reply!: Promise<string>;
    {
      await using c = await connect({ port: server.port });
      disposed = c;
      reply = c.ping();
    }
    expect(disposed.isOpen).toBe(false); // the block's end waited for the close
    expect(await reply).toBe("PONG");
    expect(disposed.closeReason!.message).toBe("connection closed by the client");
  });
});

describe("bounds: destroy() and connectTimeoutMs", () => {
  test("connectTimeoutMs bounds only the connect: a client that connected in time stays usable after it", async () => {
    const c = await connect({ port: server.port, connectTimeoutMs: 50 });
    await Bun.sleep(150); // three times the bound: a timer left running would have dropped the connection
    expect(await c.ping()).toBe("PONG");
    expect(c.isOpen).toBe(true);
    await c.close();
  });

  test("keys() and stats() reject an Error reply (AUTH_REQUIRED) instead of resolving with it; a line of blanks and tabs is a TypeError", async () => {
    const guarded = await inProcessServer(["--password", "pw"]);
    try {
      const c = await connect({ port: guarded.port });
      for (const call of [() => c.keys(), () => c.stats()]) {
        const error = await call().catch((e) => e);
        expect(error).toBeInstanceOf(TxkvError);
        expect(error.code).toBe("AUTH_REQUIRED");
      }
      for (const blank of ["\t", " \t ", ""]) await expect(c.send(blank)).rejects.toBeInstanceOf(TypeError);
      await c.close();
    } finally {
      await guarded.shutdown();
    }
  });

  test("every call queued behind a transaction is sent when it ends, not only the first", async () => {
    const c = await connect({ port: server.port });
    let queued: Promise<unknown>[] = [];
    await c.transaction(async (tx) => {
      queued = [c.put("queued:a", 1), c.put("queued:b", 2), c.ping()];
      await tx.put("queued:tx", 0);
    });
    expect(await Promise.all(queued)).toEqual([undefined, undefined, "PONG"]);
    expect(await c.get("queued:b")).toBe(2);
    await c.close();
  });

  test("after close() is called inside a transaction, new calls and transactions reject with TxkvConnectionError", async () => {
    const c = await connect({ port: server.port });
    const late: unknown[] = [];
    await c.transaction(async (tx) => {
      void c.close();
      late.push(await c.get("x").catch((e) => e), await c.transaction(async () => {}).catch((e) => e));
      await tx.put("closing:tx", 1);
    });
    for (const error of late) expect(error).toBeInstanceOf(TxkvConnectionError);
    await c.closed;
  });

  test("destroy() ends calls the server never answers: each rejects with TxkvConnectionError, closed resolves", async () => {
    const silent = fakeServer((line) => (line === "START" ? ok("Transaction started") : null));
    const c = await connect({ port: silent.port });
    let queued: Promise<unknown> | null = null;
    let transactionStarted!: () => void;
    const started = new Promise<void>((resolve) => (transactionStarted = resolve));
    const transaction = c
      .transaction(async (tx) => {
        queued = c.ping().catch((e) => e); // waits behind the transaction
        const unanswered = tx.get("a");
        transactionStarted();
        await unanswered;
      })
      .catch((e) => e);
    await started;
    c.destroy("gave up waiting");
    for (const error of [await transaction, await queued]) {
      expect(error).toBeInstanceOf(TxkvConnectionError);
      expect((error as Error).message).toBe("connection destroyed by the client: gave up waiting");
    }
    await c.closed;
    expect(c.isOpen).toBe(false);
    expect(c.closeReason).toBeInstanceOf(TxkvConnectionError);
    await expect(c.ping()).rejects.toBeInstanceOf(TxkvConnectionError);
    await c.close(); // after destroy(): resolves at once
    silent.stop(true);
  });

  test("connect() rejects with TxkvConnectionError after connectTimeoutMs: a TLS handshake never answered, an AUTH never answered", async () => {
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    for (const options of [{ tls: true }, { password: "pw" }]) {
      const error = await connect({ port: silent.port, connectTimeoutMs: 50, ...options }).catch((e) => e);
      expect(error).toBeInstanceOf(TxkvConnectionError);
      expect(error.message).toBe(`cannot connect to 127.0.0.1:${silent.port}: not ready within 50 ms (connectTimeoutMs)`);
    }
    silent.stop(true);
  });

  test("connectTimeoutMs defaults to 10 s: connect() arms one 10000 ms timer, and when it fires the error says 10000 ms", async () => {
    let authArrived!: () => void;
    const arrived = new Promise<void>((resolve) => (authArrived = resolve));
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: () => authArrived() } });
    const timers = spyOn(globalThis, "setTimeout");
    let connecting: Promise<unknown>;
    let armed: Array<[unknown, unknown]>;
    try {
      connecting = connect({ port: silent.port, password: "pw" }).catch((e) => e);
      armed = timers.mock.calls.map(([callback, ms]) => [callback, ms]);
    } finally {
      timers.mockRestore();
    }
    try {
      expect(armed.map(([, ms]) => ms)).toEqual([10_000]);
      await arrived; // connected, the AUTH sent and never answered
      (armed[0]![0] as () => void)(); // what the timer does after 10 s, now
      const error = await connecting;
      expect(error).toBeInstanceOf(TxkvConnectionError);
      expect((error as Error).message).toBe(`cannot connect to 127.0.0.1:${silent.port}: not ready within 10000 ms (connectTimeoutMs)`);
    } finally {
      silent.stop(true);
    }
  });

  test("connectTimeoutMs that a timer cannot wait (0, negative, NaN, over 2^31 - 1 ms) is refused with a TypeError", async () => {
    for (const connectTimeoutMs of [0, -1, NaN, 2 ** 31]) {
      await expect(connect({ port: server.port, connectTimeoutMs })).rejects.toBeInstanceOf(TypeError);
    }
  });
});

describe("TLS", () => {
  // The client side alone: a TLS stand-in server answers PONG (txkv's own TLS listener: security.test.ts).
  test("connects with a custom CA; refuses a server whose certificate it cannot verify", async () => {
    const certs = makeTestCertificates();
    const fake = tlsPongServer(certs);
    const trusted = await connect({ port: fake.port, tls: { ca: certs.ca, serverName: "localhost" } });
    expect(await trusted.ping()).toBe("PONG");
    await trusted.close();

    const untrusted = await connect({ port: fake.port, tls: true }).catch((e) => e);
    expect(untrusted).toBeInstanceOf(TxkvConnectionError);
    expect(untrusted.message).toContain("unable to verify");

    const wrongName = await connect({ port: fake.port, tls: { ca: certs.ca, serverName: "other.example" } }).catch((e) => e);
    expect(wrongName).toBeInstanceOf(TxkvConnectionError);
    expect(wrongName.message).toContain("other.example");

    const plain = await connect({ port: fake.port })
      .then(async (c) => c.ping())
      .catch((e) => e);
    expect(plain).toBeInstanceOf(TxkvConnectionError);
    fake.stop(true);
    certs.remove();
  });

  test("rejectUnauthorized: false connects even when verification fails (a name the certificate does not hold, an unknown CA)", async () => {
    const certs = makeTestCertificates();
    const fake = tlsPongServer(certs);
    for (const tls of [
      { rejectUnauthorized: false, serverName: "db.example.com" },
      { ca: certs.ca, serverName: "db.example.com", rejectUnauthorized: false },
      { rejectUnauthorized: false },
    ]) {
      const c = await connect({ port: fake.port, tls });
      expect(await c.ping()).toBe("PONG");
      await c.close();
    }
    fake.stop(true);
    certs.remove();
  });
});
