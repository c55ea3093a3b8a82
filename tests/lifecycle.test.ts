/**
 * Process lifecycle through real subprocesses: the start-up log line,
 * SIGTERM/SIGINT graceful shutdown (stop accepting, let replies already being
 * produced go out, roll back open transactions, exit 0), the bounded drain,
 * and a second signal exiting at once.
 */
import { describe, expect, test } from "bun:test";
import { closeSync, constants as fsConstants, existsSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";
import { BUN, closedPort, connectHalfOpen, INDEX, LineClient, spawnServer, startInProcess, tempDir, waitFor, type ServerProcess } from "./helpers.ts";

function logEntries(proc: ServerProcess): Array<Record<string, any>> {
  return proc
    .stderr()
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line));
}

function logged(proc: ServerProcess, msg: string): Record<string, any> | undefined {
  return logEntries(proc).find((e) => e.msg === msg);
}

async function connectionRefused(port: number): Promise<boolean> {
  try {
    const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {} } });
    socket.end();
    return false;
  } catch (err) {
    return (err as { code?: string }).code === "ECONNREFUSED";
  }
}

/** A client that stops reading while the server has a large backlog of replies for it. */
async function floodWithoutReading(proc: ServerProcess): Promise<LineClient> {
  const setup = await LineClient.connect(proc.port);
  await setup.request(`PUT big ${"v".repeat(900)}`);
  const flooder = await LineClient.connect(proc.port);
  flooder.pauseReading();
  flooder.write("GET big\n".repeat(20000));
  await waitFor(
    async () => {
      const stats = (await setup.request("STATS")).result as { memory: { client_buffers: number } };
      return stats.memory.client_buffers > 256 * 1024;
    },
    10000,
    "replies to back up on the server",
  );
  setup.close();
  return flooder;
}

describe("start-up", () => {
  test("one structured line with version, address, data file, durability, keys loaded and load time", async () => {
    const proc = await spawnServer(["--in-memory"]);
    try {
      // The log line follows the stdout line that spawnServer waited for.
      await waitFor(() => logEntries(proc).some((e) => e.msg === "ready to accept connections"), 5000, "the start-up log line");
      const line = logEntries(proc).find((e) => e.msg === "ready to accept connections");
      expect(line).toMatchObject({
        level: "info",
        version: expect.any(String),
        address: `127.0.0.1:${proc.port}`,
        data: null,
        durability: "in-memory",
        keys_loaded: 0,
        load_ms: 0,
        metrics: null,
        pid: proc.proc.pid,
      });
      expect(Number.isNaN(Date.parse(line!.time))).toBe(false);
      expect(proc.stdout()).toContain(`listening on 127.0.0.1:${proc.port}`);
      // Exactly one line says `listening on`, in stdout and stderr together (the contract's "one line"):
      // a greedy pattern over the JSON log line used to read its pid as the port.
      const all = (proc.stdout() + proc.stderr()).split("\n");
      const saying = all.filter((l) => l.includes("listening on"));
      expect(saying).toHaveLength(1);
      expect(saying[0]).toMatch(new RegExp(`^txkv \\S+ listening on 127\\.0\\.0\\.1:${proc.port}$`));
    } finally {
      await proc.kill("SIGTERM");
    }
  });
});

describe("other signals", () => {
  test("SIGUSR1, SIGUSR2 and SIGQUIT keep their default action: the process ends at once, by the signal, without a shutdown", async () => {
    for (const signal of ["SIGUSR1", "SIGUSR2", "SIGQUIT"] as const) {
      const proc = await spawnServer(["--in-memory"]);
      await proc.kill(signal);
      expect({ signal, ended: proc.proc.signalCode }).toEqual({ signal, ended: signal });
      expect(logged(proc, "shutting down")).toBeUndefined();
    }
  });
});

describe("stdout gone, SIGHUP", () => {
  test("a stdout whose reader already left (| head -0) does not stop the server; SIGHUP is logged and ignored; SIGTERM stops it cleanly", async () => {
    const dir = tempDir();
    const port = closedPort();
    const errFile = join(dir.path, "stderr.log");
    const shell = Bun.spawn(["sh", "-c", `'${BUN}' run '${INDEX}' --port ${port} --in-memory 2>'${errFile}' | head -0`]);
    const entries = () =>
      (existsSync(errFile) ? readFileSync(errFile, "utf8") : "")
        .split("\n")
        .filter((l: string) => l !== "")
        .map((l: string) => JSON.parse(l)); // every line is JSON: no stack trace
    try {
      await waitFor(() => entries().some((e) => e.msg === "stdout is closed: the start-up line was not written"), 10000, "the EPIPE warning");
      const pid = entries().find((e) => e.msg === "ready to accept connections")!.pid as number;
      const client = await LineClient.connect(port);
      expect(await client.request("PING")).toMatchObject({ result: "PONG" });
      process.kill(pid, "SIGHUP");
      await waitFor(() => entries().some((e) => String(e.msg).startsWith("SIGHUP ignored")), 5000, "the SIGHUP warning");
      expect(await client.request("PING")).toMatchObject({ result: "PONG" });
      client.close();
      process.kill(pid, "SIGTERM");
      expect(await shell.exited).toBe(0);
      expect(entries().some((e) => e.msg === "stopped")).toBe(true);
    } finally {
      shell.kill("SIGKILL");
      dir.cleanup();
    }
  });
});

describe("stderr gone", () => {
  test("a stderr whose reader leaves does not stop the server: it serves on without its log, and SIGTERM still stops it cleanly", async () => {
    const dir = tempDir();
    const fifo = join(dir.path, "stderr.fifo");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    // The test is the log's reader: opened first (without waiting for a writer), closed when it leaves.
    const reader = openSync(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    const proc = Bun.spawn(
      ["bash", "-c", 'exec "$0" run "$1" --port 0 --data "$2" --log-level debug 2>"$3"', BUN, INDEX, join(dir.path, "data.json"), fifo],
      { stdout: "pipe" },
    );
    try {
      let stdout = "";
      const decoder = new TextDecoder();
      for await (const chunk of proc.stdout) {
        stdout += decoder.decode(chunk, { stream: true });
        if (stdout.includes("\n")) break;
      }
      const port = Number(/listening on \S*:(\d+)/.exec(stdout)![1]);
      closeSync(reader);
      // Every connection and SAVE logs a line, each now a write to a pipe nobody reads (EPIPE).
      for (let i = 0; i < 3; i++) {
        const client = await LineClient.connect(port);
        expect(await client.request(`PUT k${i} v`)).toMatchObject({ status: "Ok" });
        expect(await client.request("SAVE")).toEqual({ status: "Ok", result: "Saved" });
        client.close();
        await client.closed;
      }
      const last = await LineClient.connect(port);
      expect(await last.request("GET k2")).toEqual({ status: "Ok", result: { key: "k2", value: "v" } });
      last.close();
      proc.kill("SIGTERM");
      expect(await proc.exited).toBe(0);
    } finally {
      proc.kill("SIGKILL");
      dir.cleanup();
    }
  });
});

describe("graceful shutdown", () => {
  test("SIGTERM: new connections are refused, held replies go out, the open transaction rolls back, exit 0", async () => {
    const proc = await spawnServer(["--in-memory", "--password", "pw"]);
    const inTx = await LineClient.connect(proc.port);
    expect(await inTx.pipeline(["AUTH pw", "START", "PUT unfinished 1"])).toMatchObject([
      { result: "Authenticated" },
      { result: "Transaction started" },
      { status: "Ok" },
    ]);
    // Failed AUTHs are answered after a growing delay (50, 100, 200 ms), and a request after a failed AUTH
    // runs only once it is answered: at the signal the 2nd is held in its delay, the 3rd has not run.
    const slow = await LineClient.connect(proc.port);
    slow.write("AUTH wrong\nAUTH wrong\nAUTH wrong\n");
    expect(await slow.readReply()).toMatchObject({ code: "AUTH_FAILED" });

    proc.proc.kill("SIGTERM");
    await inTx.closed; // idle: closed at once, after the listener stopped
    expect(await connectionRefused(proc.port)).toBe(true);
    expect(await slow.readReply()).toMatchObject({ code: "AUTH_FAILED" });
    await slow.closed;
    expect(slow.unread).toBe(""); // the 3rd, not yet run when the shutdown began, is not run

    expect(await proc.exited).toBe(0);
    expect(logged(proc, "shutting down")).toMatchObject({ signal: "SIGTERM" });
    expect(logged(proc, "stopped")).toMatchObject({
      connections_closed: 2,
      connections_forced: 0,
      transactions_rolled_back: 1,
    });
  });

  test("SIGINT with nothing in flight exits 0 at once", async () => {
    const proc = await spawnServer(["--in-memory"]);
    const idle = await LineClient.connect(proc.port);
    expect(await idle.request("PING")).toMatchObject({ result: "PONG" });
    expect(await proc.kill("SIGINT")).toBe(0);
    await idle.closed;
    expect(logged(proc, "stopped")).toMatchObject({ connections_closed: 1, connections_forced: 0 });
  });

  test("the drain is bounded: a client that never reads is closed after --shutdown-timeout-ms, exit 0", async () => {
    const proc = await spawnServer(["--in-memory", "--shutdown-timeout-ms", "300"]);
    const flooder = await floodWithoutReading(proc);
    expect(await proc.kill("SIGTERM")).toBe(0);
    expect(logged(proc, "stopped")).toMatchObject({ connections_forced: 1 });
    await flooder.closed;
  });

  test("a shutdown in the middle of a pipelined stream acknowledges every write it applied (its close resets nothing)", async () => {
    const server = await startInProcess(["--in-memory"]);
    // 1,000 PUTs of 1 KB, sent over and over until the connection closes: the client never stops sending.
    const batch = Buffer.from(Array.from({ length: 1000 }, (_, i) => `PUT k${i} ${"v".repeat(1000)}\n`).join(""));
    let offset = 0;
    let stopped = false;
    let acks = 0;
    const ended = Promise.withResolvers<string>();
    const send = (socket: Socket) => {
      while (!stopped) {
        const accepted = socket.write(batch.subarray(offset));
        if (accepted <= 0) return;
        offset = (offset + accepted) % batch.length;
      }
    };
    const finish = (how: string) => {
      stopped = true;
      ended.resolve(how);
    };
    // The client does not read at first, so its requests are still arriving when the shutdown ends the connection.
    const client = await Bun.connect({
      hostname: "127.0.0.1",
      port: server.port,
      socket: {
        open: (socket) => {
          socket.pause();
          send(socket);
        },
        drain: send,
        data: (_socket, chunk) => {
          for (const byte of chunk) if (byte === 10) acks++;
        },
        close: (_socket, err) => finish(err ? `error: ${err.message}` : "closed"),
        error: (_socket, err) => finish(`error: ${err.message}`),
      },
    });
    await waitFor(() => (server.executor.stats.commandsByType.PUT ?? 0) >= 2000, 10000, "2,000 PUTs applied");
    const report = server.shutdown();
    client.resume();
    expect(await ended.promise).toBe("closed");
    expect((await report).connectionsForced).toBe(0);
    expect(acks).toBe(server.executor.stats.commandsByType.PUT ?? 0);
  });

  test("past a shutdown timeout shorter than the lingering close, an idle client that never closes still counts as not forced", async () => {
    const server = await startInProcess(["--in-memory", "--shutdown-timeout-ms", "0"]);
    // A client that never closes its side (nothing done at the server's FIN).
    const client = await connectHalfOpen(server.port);
    const idle = client.socket;
    idle.write("PING\n");
    await waitFor(() => client.received().includes("PONG"), 5000, "PONG");
    // Its replies were all out when the shutdown ended it; only its wait for the client is cut short.
    expect((await server.shutdown()).connectionsForced).toBe(0);
    idle.end();
    await client.closed;
    const flooded = await startInProcess(["--in-memory", "--shutdown-timeout-ms", "0"]);
    const flooder = await LineClient.connect(flooded.port);
    await flooder.request(`PUT big ${"v".repeat(900)}`);
    flooder.pauseReading();
    flooder.write("GET big\n".repeat(20000));
    await waitFor(() => flooded.server.bufferedBytes() > 256 * 1024, 10000, "replies to back up");
    expect((await flooded.shutdown()).connectionsForced).toBe(1);
  });

  test("shutdown() is idempotent: a second call, during or after the first, returns the same promise and the first run's report", async () => {
    const server = await startInProcess(["--in-memory"]);
    const idle = await LineClient.connect(server.port);
    expect(await idle.request("PING")).toMatchObject({ result: "PONG" });
    const first = server.shutdown();
    const second = server.shutdown();
    expect(second).toBe(first);
    const report = await first;
    // A second run would have found no connection left to close.
    expect(report).toMatchObject({ connectionsClosed: 1, connectionsForced: 0 });
    expect(server.shutdown()).toBe(first);
    expect(await server.shutdown()).toBe(report);
    await idle.closed;
  });

  test("the shutdown report counts only the transactions the shutdown rolled back: not one the client rolled back, nor one it committed", async () => {
    const server = await startInProcess(["--in-memory"]);
    const rolledBack = await LineClient.connect(server.port);
    expect(await rolledBack.pipeline(["START", "PUT a 1", "ROLLBACK"])).toMatchObject([{ status: "Ok" }, { status: "Ok" }, { status: "Ok" }]);
    const committed = await LineClient.connect(server.port);
    expect(await committed.pipeline(["START", "PUT b 2", "COMMIT"])).toMatchObject([{ status: "Ok" }, { status: "Ok" }, { status: "Ok" }]);
    const open = await LineClient.connect(server.port);
    expect(await open.pipeline(["START", "PUT c 3"])).toMatchObject([{ status: "Ok" }, { status: "Ok" }]);
    expect(server.executor.stats.txRolledBack).toBe(1); // the client's own ROLLBACK, before the shutdown
    const report = await server.shutdown();
    expect(report).toMatchObject({ connectionsClosed: 3, transactionsRolledBack: 1 });
    expect(server.executor.stats.txRolledBack).toBe(2);
    await Promise.all([rolledBack.closed, committed.closed, open.closed]);
  });

  test("SIGTERM while it loads its data (lock taken, before it listens) is a graceful stop once started: exit 0, lock released", async () => {
    const dir = tempDir();
    try {
      // A data file that takes a while to load (the seed's plain JSON object), so that the signal comes
      // while loading, after the lock is taken: the handler is in place by then, the server not up yet.
      const data: Record<string, string> = {};
      for (let i = 0; i < 300_000; i++) data[`key:${i}`] = "value";
      writeFileSync(join(dir.path, "data.json"), JSON.stringify(data));
      const proc = Bun.spawn([BUN, "run", INDEX, "--port", "0", "--data", join(dir.path, "data.json")], { stdout: "pipe", stderr: "pipe" });
      let stderr = "";
      const decoder = new TextDecoder();
      void (async () => {
        for await (const chunk of proc.stderr) stderr += decoder.decode(chunk);
      })();
      await waitFor(() => existsSync(join(dir.path, "data.json.lock")), 10000, "the data file's lock to be taken");
      proc.kill("SIGTERM");
      expect(await proc.exited).toBe(0);
      expect(stderr).toContain('"msg":"stopped"');
      expect(await new Response(proc.stdout).text()).toContain("listening on");
      expect(existsSync(join(dir.path, "data.json.lock"))).toBe(false);
    } finally {
      dir.cleanup();
    }
  });

  test("SIGTERM the moment the listening line appears exits 0, every time", async () => {
    for (let i = 0; i < 5; i++) {
      const dir = tempDir();
      const proc = await spawnServer(["--data", join(dir.path, "data.json")]);
      expect(await proc.kill("SIGTERM")).toBe(0);
      expect(existsSync(join(dir.path, "data.json.lock"))).toBe(false);
      dir.cleanup();
    }
  });

  test("a second signal during the shutdown exits at once with 128 + the signal number (SIGINT 130, SIGTERM 143)", async () => {
    for (const [second, status] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
      const proc = await spawnServer(["--in-memory", "--shutdown-timeout-ms", "60000"]);
      const flooder = await floodWithoutReading(proc);
      proc.proc.kill("SIGTERM");
      await waitFor(() => logged(proc, "shutting down") !== undefined, 10000, "the shutdown to begin");
      expect(proc.proc.exitCode).toBeNull(); // still draining: the flooder's replies cannot go out
      expect(await proc.kill(second)).toBe(status);
      expect(logged(proc, "second signal: exiting at once, without waiting for the shutdown")).toMatchObject({ signal: second });
      expect(logged(proc, "stopped")).toBeUndefined();
      await flooder.closed;
    }
  });

  test("a disk that stays broken through the shutdown (the data directory removed): the flush is retried, then exit 1 saying why", async () => {
    const dir = tempDir();
    try {
      const proc = await spawnServer(["--data", join(dir.path, "data.json"), "--fsync", "no"]);
      const c = await LineClient.connect(proc.port);
      expect((await c.request("PUT k v")).status).toBe("Ok");
      c.close();
      dir.cleanup(); // the journal can no longer be made durable where it was: a rebuild there fails too
      expect(await proc.kill("SIGTERM")).toBe(1);
      expect(logged(proc, "shutdown failed")?.reason).toContain("could not flush the journal before exit");
      expect(logged(proc, "stopped")).toBeUndefined();
    } finally {
      dir.cleanup();
    }
  }, 20_000);
});
