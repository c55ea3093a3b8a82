/** Configuration: options, environment variables, --help/--version, bad values (exit 2), the listening line. */
import { describe, expect, test } from "bun:test";
import * as v from "valibot";
import { ConfigError, OPTIONS, parseConfig } from "../lib/config.ts";
import { parseOption, positiveNumber, wholeNumber } from "../lib/option-schemas.ts";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { LineClient, runIndex, spawnServer } from "./helpers.ts";

const serveConfig = (argv: string[], env: Record<string, string> = {}) => {
  const parsed = parseConfig(argv, env);
  if (parsed.kind !== "serve") throw new Error("expected serve");
  return parsed.config;
};

describe("parseConfig", () => {
  test("defaults follow PROTOCOL §7", () => {
    expect(serveConfig([])).toMatchObject({
      host: "127.0.0.1",
      port: 8080,
      dataPath: "data.json",
      inMemory: false,
      fsync: "everysec",
      maxRequestBytes: 1024,
      maxTransactionBytes: 1024,
      maxTransactionReads: 10000,
      maxConnections: 10000,
      password: undefined,
      partialRequestMs: 10,
    });
  });

  test("every numeric option: its default, and its bounds as README's option table gives them (the least and most accepted, one past each refused)", () => {
    const MAX_DATA = 2 ** 31;
    // option, Config field, default, least, most
    const numeric: [string, string, number | null, number, number][] = [
      ["port", "port", 8080, 0, 65535],
      ["fsync-interval-ms", "fsyncIntervalMs", 1000, 1, 60_000],
      ["compact-min-bytes", "compactMinBytes", 16_777_216, 0, Number.MAX_SAFE_INTEGER],
      ["compact-percent", "compactPercent", 100, 1, 1_000_000],
      ["max-request-bytes", "maxRequestBytes", 1024, 16, 67_108_864],
      ["max-transaction-bytes", "maxTransactionBytes", 1024, 16, 1_073_741_824],
      ["max-transaction-reads", "maxTransactionReads", 10_000, 1, 100_000_000],
      ["max-connections", "maxConnections", 10_000, 1, 1_000_000],
      ["max-data-bytes", "maxDataBytes", MAX_DATA, 4096, MAX_DATA],
      ["max-output-bytes", "maxOutputBytes", 1_048_576, 1024, 1_073_741_824],
      ["partial-request-ms", "partialRequestMs", 10, 0, 60_000],
      ["timeout", "idleTimeoutSeconds", 0, 0, 604_800],
      ["metrics-port", "metricsPort", null, 0, 65535],
      ["shutdown-timeout-ms", "shutdownTimeoutMs", 10_000, 0, 3_600_000],
    ];
    const defaults = serveConfig([]) as unknown as Record<string, unknown>;
    for (const [option, field, byDefault, least, most] of numeric) {
      expect({ option, value: defaults[field] }).toEqual({ option, value: byDefault });
      for (const accepted of [least, most]) {
        expect({ option, value: (serveConfig([`--${option}`, String(accepted)]) as unknown as Record<string, unknown>)[field] }).toEqual({ option, value: accepted });
      }
      for (const refused of [least - 1, most + 1]) {
        if (refused < 0) continue; // "-1" is refused by parseArgs as an option, tested elsewhere
        expect(() => serveConfig([`--${option}`, String(refused)])).toThrow(`invalid value for --${option}`);
      }
    }
    // Every numeric option of the server is in the table above.
    const listed = new Set(numeric.map(([option]) => option));
    for (const [name, spec] of Object.entries(OPTIONS)) {
      if (spec.kind === "string" && /^<(n|ms|seconds)>$/.test(spec.arg)) expect({ name, listed: listed.has(name) }).toEqual({ name, listed: true });
    }
  });

  test("--host takes an IPv4 or IPv6 address or a host name (letters, digits, dashes and underscores, as Docker's service names, in dotted labels); anything else exits 2", () => {
    for (const host of ["127.0.0.1", "0.0.0.0", "::1", "::", "fe80::1%lo", "::ffff:127.0.0.1", "localhost", "my_db-1.internal", "db.example.com.", "host-2", "127.1", "0x7f000001"]) {
      expect(serveConfig(["--host", host, "--password", "pw"]).host).toBe(host);
    }
    for (const host of ["bad host", "1.2.3.4.5", "999.999.1.1", "%%", "-db", "db-", "a..b", "x".repeat(64), "ex@mple"]) {
      expect(() => serveConfig([`--host=${host}`])).toThrow(`invalid value for --host (or TXKV_HOST): ${JSON.stringify(host)}: expected an IP address or a host name`);
    }
    // host:port, the usual slip, is told where the port goes.
    for (const host of ["localhost:6379", "127.0.0.1:6379"]) {
      expect(() => serveConfig(["--host", host])).toThrow("expected an IP address or a host name, without a port (the port goes in --port)");
    }
  });

  test("every option has a TXKV_ environment variable; the command line wins over it", () => {
    for (const [name, spec] of Object.entries(OPTIONS)) {
      if (name === "help" || name === "version") continue;
      expect(spec.env as string).toBe("TXKV_" + name.toUpperCase().replaceAll("-", "_"));
    }
    expect(serveConfig([], { TXKV_MAX_REQUEST_BYTES: "2048", TXKV_IN_MEMORY: "1", TXKV_PASSWORD: "pw" })).toMatchObject({
      maxRequestBytes: 2048,
      inMemory: true,
      password: "pw",
    });
    expect(serveConfig(["--port", "9"], { TXKV_PORT: "7" }).port).toBe(9);
  });

  test("TXKV_IN_MEMORY is a switch: 1/true/yes turn it on, 0/false/no/empty off, in any case; anything else is an error", () => {
    for (const on of ["1", "true", "yes", "TRUE", "Yes"]) expect(serveConfig([], { TXKV_IN_MEMORY: on }).inMemory).toBe(true);
    for (const off of ["0", "false", "no", "", "NO"]) expect(serveConfig([], { TXKV_IN_MEMORY: off }).inMemory).toBe(false);
    for (const bad of ["banana", "2", "on-ish"]) {
      expect(() => parseConfig([], { TXKV_IN_MEMORY: bad })).toThrow("--in-memory (or TXKV_IN_MEMORY)");
    }
  });

  test("numeric options take decimal digits only, as every txkv tool does (lib/option-schemas.ts)", () => {
    const port = wholeNumber(1, 65535);
    expect(v.parse(port, "8080")).toBe(8080);
    for (const text of ["0x1F90", " 80", "80 ", "1e3", "8.0", "", "0", "65536", "-1"]) expect(v.safeParse(port, text).success).toBe(false);
    expect(v.parse(positiveNumber(), "0.5")).toBe(0.5);
    expect(v.parse(positiveNumber(), "3")).toBe(3);
    for (const text of ["0", "1e3", "-1", "abc", "", "Infinity", "0x1"]) expect(v.safeParse(positiveNumber(), text).success).toBe(false);
    expect(() => parseOption("rounds", "x", wholeNumber(1))).toThrow("--rounds x: expected a whole number of at least 1");
    // Too large for an unbounded option: the message says so rather than "at least 1".
    expect(() => parseOption("rounds", "99999999999999999999", wholeNumber(1))).toThrow(
      "--rounds 99999999999999999999: expected a whole number of at most 9007199254740991",
    );
  });

  test("an empty TXKV_ variable counts as unset (the default applies), but for the password and TLS files; an empty command-line value is an error", () => {
    const config = serveConfig([], { TXKV_PORT: "", TXKV_HOST: "", TXKV_FSYNC: "", TXKV_IN_MEMORY: "", TXKV_MAX_CONNECTIONS: "" });
    expect(config).toMatchObject({ port: 8080, host: "127.0.0.1", fsync: "everysec", inMemory: false, maxConnections: 10000 });
    // Set but empty, these would turn protection off without a word: an error, as before.
    expect(() => parseConfig([], { TXKV_PASSWORD: "" })).toThrow("TXKV_PASSWORD");
    expect(() => parseConfig([], { TXKV_TLS_CERT: "", TXKV_TLS_KEY: "" })).toThrow("TXKV_TLS_CERT");
    expect(() => parseConfig(["--port", ""], {})).toThrow("--port");
    expect(() => parseConfig(["--password", ""], {})).toThrow("--password");
  });

  test("bad values name the option", () => {
    const bad: [string[], Record<string, string>, string][] = [
      [["--port", "70000"], {}, "--port"],
      [["--port", "12x"], {}, "--port"],
      [["--fsync", "sometimes"], {}, "--fsync"],
      [[], { TXKV_MAX_CONNECTIONS: "-1" }, "--max-connections (or TXKV_MAX_CONNECTIONS)"],
      [["--max-transaction-reads", "0"], {}, "--max-transaction-reads"],
      [[], { TXKV_MAX_TRANSACTION_READS: "lots" }, "--max-transaction-reads (or TXKV_MAX_TRANSACTION_READS)"],
      [["--data", "db.tmp"], {}, "--data"],
      [["--data", "/srv/db.journal.7"], {}, "--data"],
      [["--data", "db.lock"], {}, "--data"],
      [["--log-level", "loud"], {}, "--log-level"],
      [["--host", "not a host"], {}, "--host"],
      [["--host", "[::1"], {}, "--host"],
      [[], { TXKV_HOST: "a/b" }, "--host (or TXKV_HOST)"],
      [["--nope"], {}, "--nope"],
      [["--port"], {}, "--port"],
    ];
    for (const [argv, env, fragment] of bad) {
      expect(() => parseConfig(argv, env)).toThrow(ConfigError);
      expect(() => parseConfig(argv, env)).toThrow(fragment);
    }
  });

  test("an IPv6 --host may come in brackets, as in a URL: they are dropped", () => {
    expect(serveConfig(["--host", "[::1]"], {}).host).toBe("::1");
    expect(serveConfig(["--host", "::1"], {}).host).toBe("::1");
  });

  test("in memory, a --data or --fsync typed on the command line is refused, naming both; one from the environment is left alone", () => {
    for (const [argv, env, message] of [
      [["--in-memory", "--data", "x.json"], {}, "--in-memory keeps nothing on disk, so the --data typed on the command line would be ignored"],
      [["--fsync", "always", "--in-memory"], {}, "--in-memory keeps nothing on disk, so the --fsync typed"],
      [["--data", "x.json"], { TXKV_IN_MEMORY: "1" }, "TXKV_IN_MEMORY (in the environment) keeps nothing on disk, so the --data typed"],
    ] as [string[], Record<string, string>, string][]) {
      expect(() => parseConfig(argv, env)).toThrow(ConfigError);
      expect(() => parseConfig(argv, env)).toThrow(message);
    }
    expect(serveConfig(["--in-memory"], { TXKV_DATA: "x.json", TXKV_FSYNC: "always" }).inMemory).toBe(true);
    expect(serveConfig([], { TXKV_IN_MEMORY: "1", TXKV_DATA: "x.json", TXKV_FSYNC: "no" }).inMemory).toBe(true);
  });

});

describe("the process", () => {
  test("--help lists every option and exits 0; --version prints the version", async () => {
    const help = await runIndex(["--help"]);
    expect(help.code).toBe(0);
    for (const name of Object.keys(OPTIONS)) expect(help.stdout).toContain(`--${name}`);
    const version = await runIndex(["--version"]);
    expect(version.code).toBe(0);
    expect(version.stdout).toMatch(/^txkv \d+\.\d+\.\d+\n$/);
  });

  test("a bad option or value exits 2 with one line naming it", async () => {
    for (const [args, env, name] of [
      [["--port", "nope"], {}, "--port"],
      [["--max-request-bytes", "0"], {}, "--max-request-bytes"],
      [["--max-request-bytes", "15"], {}, "--max-request-bytes"], // the documented minimum is 16
      [[], { TXKV_FSYNC: "maybe" }, "--fsync"],
      [[], { TXKV_IN_MEMORY: "banana" }, "--in-memory"],
      [["--data", "db.journal.7"], {}, "--data"],
      [["--host", "localhost:6379", "--in-memory"], {}, "--host"], // not protected mode's exit 1, nor a lookup of "localhost:6379"
      [["--frobnicate"], {}, "--frobnicate"],
      [["-h"], {}, "txkv --help lists the options"],
      [["help"], {}, "txkv --help lists the options"],
      [["--in-memory", "--data", "kept.json"], {}, "--in-memory keeps nothing on disk, so the --data typed on the command line"],
    ] as [string[], Record<string, string>, string][]) {
      const run = await runIndex(args, { env });
      expect(run.code).toBe(2);
      expect(run.stderr.trim().split("\n")).toHaveLength(1);
      expect(run.stderr).toContain(name);
    }
  });

  test("a port already in use exits 1 with one line that names the address and says it is in use", async () => {
    const holder = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const run = await runIndex(["--in-memory", "--port", String(holder.port)]);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain(`txkv: cannot listen on 127.0.0.1:${holder.port}: the address is already in use`);
      // With a fresh data file, the failed start leaves no file behind (it created a journal and the lock).
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "txkv-busy-port-"));
      try {
        const withData = await runIndex(["--data", path.join(dir, "data.json"), "--port", String(holder.port)]);
        expect(withData.code).toBe(1);
        expect(fs.readdirSync(dir)).toEqual([]);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    } finally {
      holder.stop(true);
    }
  });

  test("a value that starts with a dash exits 2 with one line that says how to write it", async () => {
    const run = await runIndex(["--max-request-bytes", "-1"]);
    expect(run.code).toBe(2);
    expect(run.stderr.trim().split("\n")).toHaveLength(1);
    expect(run.stderr).toContain("use '--max-request-bytes=-XYZ'");
  });

  test("prints `listening on host:port` with the real port when --port 0 is asked, and serves", async () => {
    const server = await spawnServer(["--in-memory"]);
    expect(server.port).toBeGreaterThan(0);
    const c = await LineClient.connect(server.port);
    expect(await c.request("PING")).toEqual({ status: "Ok", result: "PONG" });
    c.close();
    expect(await server.kill("SIGTERM")).toBe(0);
  });

  test("an IPv6 address is printed in brackets: `listening on [::1]:<port>`", async () => {
    const server = await spawnServer(["--in-memory", "--host", "::1"]);
    expect(server.stdout()).toContain(`listening on [::1]:${server.port}\n`);
    const c = await LineClient.connect(server.port, "::1");
    expect(await c.request("PING")).toEqual({ status: "Ok", result: "PONG" });
    c.close();
    expect(await server.kill("SIGTERM")).toBe(0);
  });

  test("the defaults through a real server: 1024-byte requests and transactions, everysec at 1 s, data.json in the working directory", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "txkv-defaults-"));
    const server = await spawnServer([], { cwd: dir });
    try {
      const c = await LineClient.connect(server.port);
      // "GET " + 1020 bytes is exactly 1024 (the CRLF not counted); one byte more is TOO_LARGE.
      expect(await c.request("GET " + "k".repeat(1020) + "\r")).toMatchObject({ code: "NOT_FOUND" });
      expect(await c.request("GET " + "k".repeat(1021))).toMatchObject({ code: "TOO_LARGE", message: expect.stringContaining("1024") });
      const put = (key: string) => `PUT ${key} ${"x".repeat(500)}`; // 506 bytes
      expect(await c.pipeline(["START", put("a"), put("b"), put("c"), "ROLLBACK"])).toMatchObject([
        { status: "Ok" }, { status: "Ok" }, { status: "Ok" }, { code: "TOO_LARGE" }, { status: "Ok" },
      ]);
      const stats = (await c.request("STATS")).result as { persistence: Record<string, unknown> };
      expect(stats.persistence).toMatchObject({ mode: "everysec", fsyncIntervalMs: 1000, dataFile: path.join(dir, "data.json") });
      c.close();
      expect(await server.kill("SIGTERM")).toBe(0);
    } finally {
      await server.kill("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a real server: an empty TXKV_ variable is unset (the default applies), an empty TXKV_PASSWORD stops the start with status 2", async () => {
    const server = await spawnServer(["--in-memory"], { env: { TXKV_MAX_CONNECTIONS: "", TXKV_FSYNC: "", TXKV_LOG_LEVEL: "" } });
    try {
      const c = await LineClient.connect(server.port);
      expect((await c.request("PING")).result).toBe("PONG");
      c.close();
    } finally {
      await server.kill();
    }
    const refused = await runIndex(["--port", "0", "--in-memory"], { env: { TXKV_PASSWORD: "" } });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("TXKV_PASSWORD");
  });

  test("the TXKV_ environment variables configure a real server (host, port, data, fsync, limits, reads, connections, password, in-memory)", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "txkv-env-"));
    const env = {
      TXKV_PORT: "0",
      TXKV_HOST: "127.0.0.2",
      TXKV_DATA: path.join(dir, "env.json"),
      TXKV_FSYNC: "always",
      TXKV_MAX_REQUEST_BYTES: "64",
      TXKV_MAX_TRANSACTION_BYTES: "40",
      TXKV_MAX_TRANSACTION_READS: "2",
      TXKV_MAX_CONNECTIONS: "1",
      TXKV_PASSWORD: "env-secret",
    };
    const server = await spawnServer([], { env, portFromEnv: true });
    try {
      expect(server.stdout()).toContain(`listening on 127.0.0.2:${server.port}`);
      const c = await LineClient.connect(server.port, "127.0.0.2");
      expect(await c.request("PING")).toMatchObject({ code: "AUTH_REQUIRED" });
      expect(await c.request("AUTH env-secret")).toEqual({ status: "Ok", result: "Authenticated" });
      expect(await c.request("GET " + "k".repeat(61))).toMatchObject({ code: "TOO_LARGE", message: expect.stringContaining("64") });
      expect(await c.pipeline(["START", `PUT a ${"x".repeat(30)}`, `PUT b ${"x".repeat(30)}`, "ROLLBACK"])).toMatchObject([
        { status: "Ok" }, { status: "Ok" }, { code: "TOO_LARGE" }, { status: "Ok" },
      ]);
      // JSON-form reads are watched at once: the third distinct key passes the read limit of 2.
      await c.pipeline(["START", 'GET {"key":"r1"}', 'GET {"key":"r2"}', 'GET {"key":"r3"}', "ROLLBACK"]);
      const stats = (await c.request("STATS")).result as { persistence: Record<string, unknown>; transactions: Record<string, unknown> };
      expect(stats.persistence).toMatchObject({ mode: "always", dataFile: env.TXKV_DATA });
      expect(stats.transactions).toMatchObject({ read_limit_reached: 1 });
      const second = await LineClient.connect(server.port, "127.0.0.2");
      expect(await second.readReply()).toMatchObject({ code: "BUSY" });
      c.close();
    } finally {
      await server.kill("SIGTERM");
    }
    const memory = await spawnServer([], { env: { TXKV_PORT: "0", TXKV_IN_MEMORY: "1" }, portFromEnv: true });
    try {
      const c = await LineClient.connect(memory.port);
      expect(((await c.request("STATS")).result as { persistence: unknown }).persistence).toEqual({ mode: "in-memory" });
      c.close();
    } finally {
      await memory.kill("SIGTERM");
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("protected mode: a non-loopback address without a password refuses to start and says how to set one", async () => {
    const run = await runIndex(["--in-memory", "--host", "0.0.0.0", "--port", "0"]);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain("--password");
    expect(run.stderr).toContain("TXKV_PASSWORD");
  });
});

describe("operations options", () => {
  test("--metrics-port is off by default, 0 means any free port, and reads TXKV_METRICS_PORT", () => {
    expect(serveConfig([]).metricsPort).toBeNull();
    expect(serveConfig(["--metrics-port", "0"]).metricsPort).toBe(0);
    expect(serveConfig([], { TXKV_METRICS_PORT: "9464" }).metricsPort).toBe(9464);
    expect(() => serveConfig(["--metrics-port", "70000"])).toThrow(/--metrics-port \(or TXKV_METRICS_PORT\)/);
  });

  test("--shutdown-timeout-ms defaults to 10 s and rejects non-numbers", () => {
    expect(serveConfig([]).shutdownTimeoutMs).toBe(10000);
    expect(serveConfig([], { TXKV_SHUTDOWN_TIMEOUT_MS: "250" }).shutdownTimeoutMs).toBe(250);
    expect(() => serveConfig(["--shutdown-timeout-ms", "soon"])).toThrow(ConfigError);
  });
});
