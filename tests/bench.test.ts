/**
 * `txkv bench`: short real runs against a server subprocess, checking the
 * shape of the report (text and --json), request counting and option errors.
 */
import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { ErrorCounter, Latencies, MarkCounter } from "../lib/bench.ts";
import { connect } from "../lib/client.ts";
import { BUN, INDEX, runTxkv, sharedServer, spawnServer } from "./helpers.ts";
import { makeTestCertificates, tlsPongServer } from "./tls-certs.ts";

const shared = sharedServer();

const bench = (args: string[]) => runTxkv(["bench", "-p", shared.port, "--keys", "500", ...args]);

test("--json: one JSON line with ops, rate, errors and ordered latency percentiles", async () => {
  const run = await bench(["--requests", "2000", "--conns", "4", "--pipeline", "4", "--workload", "mix", "--json"]);
  expect(run.code).toBe(0);
  const lines = run.stdout.trimEnd().split("\n");
  expect(lines.length).toBe(1);
  const result = JSON.parse(lines[0]!);
  expect(result).toMatchObject({ workload: "mix", conns: 4, pipeline: 4, ops: 2000, errors: 0 });
  expect(result.ops_per_s).toBeGreaterThan(0);
  expect(result.p50_us).toBeLessThanOrEqual(result.p99_us);
  expect(result.p99_us).toBeLessThanOrEqual(result.p999_us);
  expect(result.p999_us).toBeLessThanOrEqual(result.max_us);
});

test("text report: settings line, ops and errors, ops/s, p50/p99/p99.9 (no progress when not a terminal)", async () => {
  const run = await bench(["--requests", "1000", "--conns", "2", "--workload", "get"]);
  expect(run.code).toBe(0);
  const lines = run.stdout.trimEnd().split("\n");
  expect(lines.length).toBe(4);
  expect(lines[0]).toBe(
    `txkv bench 127.0.0.1:${shared.port}: workload get, 2 connections, pipeline 1, 500 keys, 32-byte values, 1000 ops`,
  );
  expect(lines[1]).toMatch(/^1000 ops in \d+\.\d\d s, 0 error replies$/);
  expect(lines[2]).toMatch(/^throughput: \d+ ops\/s$/);
  expect(lines[3]).toMatch(/^latency \(ms\): p50 \d+\.\d{3} {2}p99 \d+\.\d{3} {2}p99\.9 \d+\.\d{3} {2}max \d+\.\d{3}$/);
  expect(run.stdout).not.toContain("\r");
});

test("tx workload counts transactions; put writes into the key space", async () => {
  const tx = JSON.parse((await bench(["--requests", "300", "--conns", "3", "--workload", "tx", "--json"])).stdout);
  expect(tx).toMatchObject({ workload: "tx", ops: 300 });
  const put = JSON.parse((await bench(["--requests", "500", "--conns", "2", "--workload", "put", "--json"])).stdout);
  expect(put).toMatchObject({ ops: 500, errors: 0 });
  const keys = await runTxkv(["cli", "-p", shared.port, "KEYS", "key:0000049"]);
  expect(keys.stdout.split("\n").filter(Boolean).length).toBe(10);
});

test("a duration run stops by itself", async () => {
  const run = await bench(["--secs", "0.3", "--conns", "2", "--workload", "ping", "--json"]);
  expect(run.code).toBe(0);
  const result = JSON.parse(run.stdout);
  expect(result.ops).toBeGreaterThan(0);
  expect(result.errors).toBe(0);
});

test("Error replies are counted; no password or a wrong one stops the run at once with status 1, naming the code; any password works (even one starting with {)", async () => {
  const guarded = await spawnServer(["--in-memory", "--password", "{p w}"]);
  try {
    // Without the password every reply would be AUTH_REQUIRED: a run that measures nothing is refused before it starts.
    const denied = await runTxkv(["bench", "-p", String(guarded.port), "--requests", "50", "--workload", "ping", "--json"]);
    expect(denied.code).toBe(1);
    expect(denied.stdout).toBe("");
    expect(denied.stderr).toContain("refused the run: AUTH_REQUIRED");
    expect(denied.stderr).toContain("--password");
    // Keys never written (the server is new): each GET is a NOT_FOUND Error reply, counted, but an answer: status 0.
    const missing = await runTxkv(["bench", "-p", String(guarded.port), "-a", "{p w}", "--workload", "get", "--no-preload", "--keys", "10", "--requests", "50", "--json"]);
    expect(JSON.parse(missing.stdout)).toMatchObject({ ops: 50, errors: 50 });
    expect(missing.code).toBe(0);
    expect(missing.stderr).toBe("");
    const allowed = await runTxkv(["bench", "-p", String(guarded.port), "-a", "{p w}", "--requests", "50", "--json"]);
    expect(JSON.parse(allowed.stdout)).toMatchObject({ ops: 50, errors: 0 });
    const wrong = await runTxkv(["bench", "-p", String(guarded.port), "-a", "nope", "--requests", "50", "--conns", "3"]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain("AUTH_FAILED");
  } finally {
    await guarded.kill();
  }
});

test("a run in which no operation succeeded (values over the request limit: every PUT, every transaction) prints its report, then exits 1 saying why", async () => {
  const run = await bench(["--requests", "20", "--conns", "2", "--workload", "put", "--vsize", "2000"]);
  expect(run.code).toBe(1);
  expect(run.stdout).toContain("20 ops in");
  expect(run.stdout).toContain("20 error replies");
  expect(run.stderr).toBe("txkv bench: no operation succeeded, so the run measured nothing (the first Error: TOO_LARGE: Request too large: the limit is 1024 bytes)\n");
  // A transaction's START is never an Error, but with its PUT refused its COMMIT is ABORTED: nothing committed.
  const tx = await bench(["--requests", "20", "--conns", "2", "--workload", "tx", "--vsize", "2000", "--no-preload", "--json"]);
  expect(JSON.parse(tx.stdout)).toMatchObject({ ops: 20, errors: 40 });
  expect(tx.code).toBe(1);
  expect(tx.stderr).toContain("no operation succeeded");
  // Some replies Ok is a measurement: status 0 (one key of two exists; the generator's keys are the same each run).
  await runTxkv(["cli", "-p", shared.port, "PUT", "key:00000000", "x"]);
  await runTxkv(["cli", "-p", shared.port, "DEL", "key:00000001"]);
  const some = await bench(["--requests", "50", "--conns", "1", "--workload", "get", "--no-preload", "--keys", "2", "--json"]);
  const { errors } = JSON.parse(some.stdout);
  expect(errors).toBeGreaterThan(0);
  expect(errors).toBeLessThan(50);
  expect(some.code).toBe(0);
});

test("Error replies are counted whatever pieces they arrive in, the status mark split over two, three or more", () => {
  const replies = Buffer.from(
    '{"status":"Ok","result":"PONG"}\n{"status":"Error","code":"NOT_FOUND","message":"Key not found"}\n' +
      '{"status":"Error","code":"TOO_LARGE","message":"Request too large"}\n{"status":"Ok","result":{"key":"k","value":"\\"status\\":\\"Error\\""}}\n',
  );
  for (let size = 1; size <= replies.length; size++) {
    const counter = new ErrorCounter();
    let errors = 0;
    for (let at = 0; at < replies.length; at += size) errors += counter.count(replies.subarray(at, at + size));
    expect({ size, errors }).toEqual({ size, errors: 2 });
  }
  // The same for any mark: NOT_FOUND replies (answers, not failures) and committed transactions.
  const mixed = Buffer.from(
    '{"status":"Ok","result":"Transaction committed"}\n{"status":"Error","code":"NOT_FOUND","message":"Key not found"}\n' +
      '{"status":"Ok","result":{"key":"k","value":"\\"result\\":\\"Transaction committed\\""}}\n{"status":"Ok","result":"Transaction committed"}\n',
  );
  for (let size = 1; size <= mixed.length; size++) {
    const notFound = new MarkCounter(Buffer.from('"code":"NOT_FOUND"'));
    const committed = new MarkCounter(Buffer.from('"result":"Transaction committed"'));
    const counts = { size, notFound: 0, committed: 0 };
    for (let at = 0; at < mixed.length; at += size) {
      counts.notFound += notFound.count(mixed.subarray(at, at + size));
      counts.committed += committed.count(mixed.subarray(at, at + size));
    }
    expect(counts).toEqual({ size, notFound: 1, committed: 2 });
  }
  // The first Error reply seen whole, NOT_FOUND aside (an answer), is kept to say why a run failed: in one piece, or a line a piece.
  const whole = new ErrorCounter();
  whole.count(replies);
  expect(whole.firstError).toBe("TOO_LARGE: Request too large");
  const byLine = new ErrorCounter();
  for (const line of replies.toString().split(/(?<=\n)/)) byLine.count(Buffer.from(line));
  expect(byLine.firstError).toBe("TOO_LARGE: Request too large");
});

test("an IPv6 server address is shown in brackets", async () => {
  const run = await runTxkv(["bench", "-h", "::1", "-p", "1", "--requests", "1", "--workload", "ping"]);
  expect(run.stdout).toStartWith("txkv bench [::1]:1: workload ping");
  expect(run.stderr).toContain("cannot connect to [::1]:1");
});

test("a full server (BUSY) stops the run at once with status 1, naming the code", async () => {
  const full = await spawnServer(["--in-memory", "--max-connections", "1"]);
  const holder = await connect({ port: full.port });
  try {
    const run = await runTxkv(["bench", "-p", String(full.port), "--requests", "10", "--workload", "ping"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("refused the run: BUSY");
    // With a password the refusal comes where AUTH's reply would: still said as a refusal.
    const withPassword = await runTxkv(["bench", "-p", String(full.port), "-a", "pw", "--requests", "10", "--workload", "ping"]);
    expect(withPassword.code).toBe(1);
    expect(withPassword.stderr).toContain("refused the run: BUSY");
  } finally {
    await holder.close();
    await full.kill();
  }
});

test("a server that stops answering mid-run ends the run after --timeout with status 1, for --secs and --requests runs alike", async () => {
  // A stand-in that answers each connection's first line (the PING check) and then nothing, as a server stopped with SIGSTOP.
  const silent = Bun.listen<{ answered: boolean }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open: (socket) => void (socket.data = { answered: false }),
      data: (socket) => {
        if (socket.data.answered) return;
        socket.data.answered = true;
        socket.write('{"status":"Ok","result":"PONG"}\n');
      },
    },
  });
  try {
    for (const limit of [["--secs", "1"], ["--requests", "100"]]) {
      const run = await runTxkv(["bench", "-p", String(silent.port), "--workload", "ping", "--conns", "2", "--timeout", "0.5", ...limit]);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain(`txkv bench: 127.0.0.1:${silent.port} stopped answering: no reply for 0.5 s (--timeout)`);
    }
  } finally {
    silent.stop(true);
  }
});

test("--secs longer than a timer can wait (about 24.8 days) is refused, not cut to nothing", async () => {
  const run = await bench(["--secs", "2200000", "--workload", "ping"]);
  expect(run.code).toBe(2);
  expect(run.stderr).toContain("--secs 2200000: expected a positive number of at most 2147483");
});

test("--tls-ca connects over TLS (TLS stand-in server answering PONG)", async () => {
  const certs = makeTestCertificates();
  const fake = tlsPongServer(certs);
  const run = await runTxkv(["bench", "-p", String(fake.port), "--tls-ca", certs.caFile, "--workload", "ping", "--requests", "100", "--conns", "2", "--json"]);
  expect(run.code).toBe(0);
  expect(JSON.parse(run.stdout)).toMatchObject({ ops: 100, errors: 0 });
  const refused = await runTxkv(["bench", "-p", String(fake.port), "--tls", "--workload", "ping", "--requests", "10"]);
  expect(refused.code).toBe(1);
  // Said as a TLS failure, not as a connection that closed.
  expect(refused.stderr).toContain(`TLS with 127.0.0.1:${fake.port}:`);
  fake.stop(true);
  certs.remove();
});

test("bad options exit 2 naming the option", async () => {
  const workload = await bench(["--workload", "nope"]);
  expect(workload.code).toBe(2);
  expect(workload.stderr).toContain("--workload nope");
  const conns = await bench(["--conns", "0"]);
  expect(conns.code).toBe(2);
  expect(conns.stderr).toContain("--conns 0");
  const dashed = await bench(["--conns", "-1"]);
  expect(dashed.code).toBe(2);
  expect(dashed.stderr.trim().split("\n")).toHaveLength(1);
  expect(dashed.stderr).toContain("use '--conns=-XYZ'");
  const both = await bench(["--secs", "1", "--requests", "5"]);
  expect(both.code).toBe(2);
  // The same spellings as the server's options: decimal digits, no hex or exponent.
  const hex = await bench(["--conns", "0x10"]);
  expect(hex.code).toBe(2);
  expect(hex.stderr).toContain("--conns 0x10: expected a whole number");
  const timeout = await bench(["--timeout", "0"]);
  expect(timeout.code).toBe(2);
  expect(timeout.stderr).toContain("--timeout 0: expected a positive number");
  const secs = await bench(["--secs", "1e0"]);
  expect(secs.code).toBe(2);
  expect(secs.stderr).toContain("--secs 1e0: expected a positive number");
});

/** A short bench run on a pseudo-terminal; resolves with everything it printed there. */
async function benchOnTerminal(extra: string[] = []): Promise<string> {
  let output = "";
  const proc = Bun.spawn([BUN, "run", INDEX, "bench", "-p", shared.port, "--secs", "0.7", "--conns", "2", "--keys", "100", ...extra], {
    terminal: {
      cols: 200,
      data(_terminal, data) {
        output += new TextDecoder().decode(data);
      },
    },
  });
  expect(await proc.exited).toBe(0);
  proc.terminal!.close();
  return output;
}

test("on a terminal, a progress line is rewritten in place while it runs, then the report", async () => {
  const output = await benchOnTerminal();
  expect(output).toMatch(/\r\x1b\[K\d+\.\d s: \d+ ops, \d+ ops\/s, 0 errors/);
  expect(output).toMatch(/\r\x1b\[K\d+ ops in \d+\.\d\d s, 0 error replies\r\nthroughput: /);
});

test("on a terminal with --json, no progress line: only the JSON line", async () => {
  const output = await benchOnTerminal(["--json"]);
  expect(output).not.toContain("\x1b[K");
  expect(JSON.parse(output.trim())).toMatchObject({ workload: "mix", conns: 2, errors: 0 });
});

test("latency percentiles are nearest-rank (rounding down) over every batch, past the first 65,536 too; all 0 with none", () => {
  expect(new Latencies().summary()).toEqual({ p50_us: 0, p99_us: 0, p999_us: 0, max_us: 0 });
  const latencies = new Latencies();
  for (let us = 100_000; us >= 1; us--) latencies.add(us); // in descending order: the summary sorts
  expect(latencies.summary()).toEqual({ p50_us: 50_000, p99_us: 99_000, p999_us: 99_900, max_us: 100_000 });
});

test("the settings line leaves keys and values out for ping; with --pipeline over 1 the latency reported is a batch's", async () => {
  const ping = await bench(["--requests", "40", "--conns", "2", "--workload", "ping"]);
  expect(ping.stdout.split("\n")[0]).toBe(`txkv bench 127.0.0.1:${shared.port}: workload ping, 2 connections, pipeline 1, 40 ops`);
  const pipelined = await bench(["--requests", "40", "--conns", "2", "--pipeline", "4", "--workload", "ping"]);
  expect(pipelined.stdout.split("\n")[3]).toStartWith("batch latency (ms): p50 ");
});

test("without --secs or --requests a run lasts 5 s, as its settings line says", async () => {
  const proc = Bun.spawn([BUN, "run", INDEX, "bench", "-p", shared.port, "--workload", "ping", "--conns", "1"], { stdout: "pipe", stderr: "pipe" });
  try {
    // The settings line is printed before the run starts: read it, then stop the run.
    const reader = proc.stdout.getReader();
    let text = "";
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    expect(text.split("\n")[0]).toBe(`txkv bench 127.0.0.1:${shared.port}: workload ping, 1 connection, pipeline 1, 5 s`);
  } finally {
    proc.kill();
    await proc.exited;
  }
});

describe("against a fresh server, counted by its STATS", () => {
  let fresh: Awaited<ReturnType<typeof spawnServer>>;
  beforeEach(async () => {
    fresh = await spawnServer(["--in-memory"]);
  });
  afterEach(async () => {
    await fresh.kill();
  });
  const commandCounts = async () => {
    const c = await connect({ port: fresh.port });
    const stats = (await c.stats()) as { stats: { commands_by_type: Record<string, number> } };
    await c.close();
    return stats.stats.commands_by_type;
  };

  test("--requests is exact when it is not a multiple of --pipeline: the last batch is short", async () => {
    const run = await runTxkv(["bench", "-p", String(fresh.port), "--requests", "10", "--conns", "3", "--pipeline", "4", "--workload", "get", "--no-preload", "--json"]);
    expect(JSON.parse(run.stdout)).toMatchObject({ ops: 10 });
    expect((await commandCounts()).GET).toBe(10);
  });

  test("the preload writes every key once, the last one too, before the run", async () => {
    const run = await runTxkv(["bench", "-p", String(fresh.port), "--keys", "1001", "--requests", "50", "--conns", "2", "--workload", "get", "--json"]);
    expect(JSON.parse(run.stdout)).toMatchObject({ ops: 50, errors: 0 });
    expect((await commandCounts()).PUT).toBe(1001);
    const c = await connect({ port: fresh.port });
    expect(await c.get("key:00001000")).toBe("x".repeat(32));
    expect(await c.get("key:00001001")).toBeUndefined();
    await c.close();
  });

  test("mix sends about 80 % GETs and 20 % PUTs", async () => {
    const run = await runTxkv(["bench", "-p", String(fresh.port), "--requests", "4000", "--conns", "4", "--workload", "mix", "--no-preload", "--json"]);
    expect(run.code).toBe(0);
    const { GET = 0, PUT = 0 } = await commandCounts();
    expect(GET + PUT).toBe(4000);
    // Each request is a GET with probability 0.8: 4000 of them land within these bounds but for odds below 1e-9.
    expect(GET).toBeGreaterThan(3000);
    expect(GET).toBeLessThan(3400);
  });

  test("the first Error a failed run names is not a NOT_FOUND (an answer): tx against keys never written, every PUT too large", async () => {
    const run = await runTxkv(["bench", "-p", String(fresh.port), "--requests", "20", "--conns", "2", "--workload", "tx", "--vsize", "2000", "--no-preload"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe("txkv bench: no operation succeeded, so the run measured nothing (the first Error: TOO_LARGE: Request too large: the limit is 1024 bytes)\n");
  });

  test("a preload whose PUTs are refused stops the run before it starts, with status 1, naming the first Error", async () => {
    const full = await spawnServer(["--in-memory", "--max-data-bytes", "4096"]);
    try {
      const run = await runTxkv(["bench", "-p", String(full.port), "--keys", "200", "--requests", "10", "--workload", "get"]);
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/^txkv bench: preload: \d+ PUT requests failed \(the first Error: TOO_LARGE: Store full: .*\)\n$/);
    } finally {
      await full.kill();
    }
  });
});
