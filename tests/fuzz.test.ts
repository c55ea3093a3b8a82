/**
 * Property-based fuzzing with fast-check (PROTOCOL §1-§4, §6).
 *
 * (a) framing and parsing: random bytes in random chunks never throw, give
 *     typed results, and frame the same however the bytes are split;
 * (b) a live server subprocess: random bytes, random valid-looking commands
 *     and random JSON get only well-formed replies (one JSON line each, a valid
 *     status, a code from PROTOCOL §2), the expected number of them, and the
 *     server stays up without logging an internal error;
 * (c) a model check: random PUT/GET/DEL/KEYS/START/COMMIT/ROLLBACK sequences
 *     (nested levels, failed levels, the transaction byte budget) on one
 *     connection, every reply compared with a simple model, and the committed
 *     state checked afterwards with GETs from a fresh connection.
 *
 * Runs per property: TXKV_FUZZ_RUNS (default 100, a few seconds in all);
 * `npm run fuzz:long` runs many more. A failure prints fast-check's seed and
 * the shrunk counterexample.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fc from "fast-check";
import { commandFromFrame } from "../lib/commands.ts";
import { INVALID_UTF8, LineFramer, TOO_LARGE, type Frame } from "../lib/framing.ts";
import { LineClient, spawnServer, splitAt, type Reply, type ServerProcess } from "./helpers.ts";

const RUNS = Math.max(1, Number(process.env.TXKV_FUZZ_RUNS ?? 100) || 100);
/** Long runs need room: about 20 ms per live run is plenty. */
const TEST_TIMEOUT_MS = 30_000 + RUNS * 20;

const MAX_REQUEST_BYTES = 1024;
const MAX_TRANSACTION_BYTES = 300;
const ERROR_CODES = new Set([
  "BAD_REQUEST", "UNKNOWN_COMMAND", "TOO_LARGE", "NOT_FOUND", "NO_TRANSACTION", "CONFLICT",
  "ABORTED", "AUTH_REQUIRED", "AUTH_FAILED", "PERSISTENCE", "BUSY",
]);
const COMMAND_TYPES = new Set(["PUT", "GET", "DEL", "KEYS", "AUTH", "START", "COMMIT", "ROLLBACK", "PING", "STATS", "SAVE", "HELP", "QUIT", "INVALID"]);

const encoder = new TextEncoder();

// ---------------------------------------------------------------- generators

/** Bytes split into chunks at random points. */
const chunkedBytes = fc
  .tuple(fc.uint8Array({ maxLength: 3000, size: "max" }), fc.array(fc.nat(), { maxLength: 8 }))
  .map(([bytes, cuts]) => splitAt(bytes, cuts));

/** Bytes that look like protocol traffic more often than uniform noise would. */
const protocolishBytes = fc
  .array(
    fc.oneof(
      fc.uint8Array({ maxLength: 64 }),
      fc.constantFrom("\n", "\r\n", "\r", " ", "\t", "{", "}", '"', "PUT ", "GET ", "START\n", "COMMIT\n", "ROLLBACK\n").map((s) => encoder.encode(s)),
      fc.constantFrom([0xc3, 0x28], [0xe2, 0x82], [0xf0, 0x9f, 0x98], [0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80]).map((b) => new Uint8Array(b)),
      fc.string({ unit: "binary", maxLength: 40 }).map((s) => encoder.encode(s)),
    ),
    { maxLength: 60, size: "max" },
  )
  .map((parts) => Buffer.concat(parts));

const lonelySurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((c) => String.fromCharCode(c));
/** Strings with unicode, control characters and lone surrogates (valid inside JSON escapes). */
const wildString = fc.string({ unit: fc.oneof(fc.string({ unit: "binary", minLength: 1, maxLength: 1 }), lonelySurrogate), maxLength: 20 });
const plainWord = fc.stringMatching(/^[A-Za-z0-9:_.\-üé✓]{1,12}$/);
const blanks = fc.constantFrom(" ", "  ", "\t", " \t ");
const commandName = fc.constantFrom("PUT", "GET", "DEL", "KEYS", "START", "COMMIT", "ROLLBACK", "PING", "STATS", "SAVE", "HELP", "AUTH", "QUIT", "FOO", "").chain((name) => fc.mixedCase(fc.constant(name)));

/** A JSON argument: well-formed requests, wrong types, extra fields, any JSON, broken JSON. */
const jsonArgument = fc.oneof(
  fc.record({ key: fc.oneof(wildString, plainWord), value: fc.jsonValue({ maxDepth: 3 }) }).map((o) => JSON.stringify(o)),
  fc.record({ key: wildString }).map((o) => JSON.stringify(o)),
  fc.record({ prefix: wildString }, { requiredKeys: [] }).map((o) => JSON.stringify(o)),
  fc.record({ password: wildString }).map((o) => JSON.stringify(o)),
  fc.dictionary(fc.constantFrom("key", "value", "prefix", "password", "extra"), fc.jsonValue({ maxDepth: 2 })).map((o) => JSON.stringify(o)),
  fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
  fc.json({ maxDepth: 3 }).map((s) => "{" + s.slice(1, Math.max(1, s.length - 1))),
);

/** One request line (no LF): a command, blanks, words or JSON, sometimes far too long or HTTP. */
const requestLine = fc.oneof(
  { weight: 8, arbitrary: fc.tuple(fc.option(blanks, { nil: "" }), commandName, fc.array(fc.tuple(blanks, fc.oneof(plainWord, wildString, jsonArgument)), { maxLength: 3 }), fc.option(blanks, { nil: "" }), fc.option(fc.constant("\r"), { nil: "" })).map(([lead, name, args, trail, cr]) => lead + name + args.map(([b, a]) => b + a).join("") + trail + cr) },
  { weight: 2, arbitrary: fc.constantFrom("START", "COMMIT", "ROLLBACK", "start", " Commit ") },
  { weight: 1, arbitrary: wildString },
  { weight: 1, arbitrary: fc.tuple(commandName, fc.integer({ min: 1000, max: 3000 })).map(([name, n]) => `${name} k ${"x".repeat(n)}`) },
  { weight: 1, arbitrary: blanks },
).map((line) => line.replaceAll("\n", " "));

/** A request stream with the occasional QUIT or HTTP line. */
const requestLines = fc.array(
  fc.oneof({ weight: 30, arbitrary: requestLine }, { weight: 1, arbitrary: fc.constantFrom("QUIT", "POST / HTTP/1.1", "Host: localhost") }),
  { minLength: 1, maxLength: 40, size: "max" },
);

// ---------------------------------------------------------------- helpers

/** Frames a whole stream as the server does at end of input (complete lines, then the partial). */
function frameAll(chunks: Uint8Array[], maxRequestBytes: number): Frame[] {
  const framer = new LineFramer(maxRequestBytes);
  const frames: Frame[] = [];
  for (const chunk of chunks) {
    framer.push(chunk.slice()); // the framer may keep the chunk until retain()
    for (let f = framer.next(); f !== null; f = framer.next()) frames.push(f);
    framer.retain();
  }
  const partial = framer.takePartial();
  if (partial !== null) frames.push(partial);
  return frames;
}

/** Checks one reply line against PROTOCOL §2. */
function expectWellFormedReply(line: string): Reply {
  let reply: Reply;
  try {
    reply = JSON.parse(line) as Reply;
  } catch {
    throw new Error(`reply is not JSON: ${JSON.stringify(line)}`);
  }
  expect(typeof reply).toBe("object");
  expect(reply).not.toBeNull();
  if (reply.status === "Ok") {
    expect("result" in reply).toBe(true);
    expect(Object.keys(reply).every((k) => k === "status" || k === "result" || k === "message")).toBe(true);
  } else {
    expect(reply.status).toBe("Error");
    expect(ERROR_CODES.has(reply.code ?? "")).toBe(true);
    expect(typeof reply.message).toBe("string");
    expect(Object.keys(reply).sort()).toEqual(["code", "message", "status"]);
  }
  return reply;
}

/** Sends bytes, half-closes, and returns every reply line once the server has closed. */
async function exchange(port: number, bytes: Uint8Array): Promise<string[]> {
  const c = await LineClient.connect(port);
  c.write(bytes);
  c.shutdownWrite();
  let timer: Timer | undefined;
  const closedInTime = await Promise.race([
    c.closed.then(() => true),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), 10_000))),
  ]);
  clearTimeout(timer);
  if (!closedInTime) {
    c.close();
    throw new Error(`the server did not close the half-closed connection; got ${JSON.stringify(c.unread.slice(0, 500))}`);
  }
  const text = c.unread;
  if (text === "") return [];
  expect(text.endsWith("\n")).toBe(true);
  return text.slice(0, -1).split("\n");
}

/** How many replies a request stream gets: one per non-blank line, up to a QUIT (answered) or an HTTP line (not). */
function expectedReplyCount(lines: string[]): number {
  let count = 0;
  for (const raw of lines) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (encoder.encode(line).length > MAX_REQUEST_BYTES) {
      count++;
      continue;
    }
    if (/^[ \t]*$/.test(line)) continue;
    if (/^(post |host:)/i.test(line)) return count;
    count++;
    if (/^[ \t]*quit[ \t]*$/i.test(line)) return count;
  }
  return count;
}

// ---------------------------------------------------------------- (a) framing and parsing

describe("framing and parsing never throw and give typed results", () => {
  test("random bytes in random chunks: frames are strings without LF within the limit, or TOO_LARGE/INVALID_UTF8; commands are typed", () => {
    fc.assert(
      fc.property(fc.oneof(chunkedBytes, protocolishBytes.map((b) => [b])), fc.integer({ min: 16, max: 200 }), (chunks, limit) => {
        for (const frame of frameAll(chunks, limit)) {
          if (typeof frame === "string") {
            expect(frame.includes("\n")).toBe(false);
            expect(encoder.encode(frame).length).toBeLessThanOrEqual(limit);
            expect(/^[ \t]*$/.test(frame)).toBe(false);
          } else {
            expect(frame === TOO_LARGE || frame === INVALID_UTF8).toBe(true);
          }
          const cmd = commandFromFrame(frame, limit);
          expect(COMMAND_TYPES.has(cmd.type)).toBe(true);
          if (cmd.type === "INVALID") {
            expect(["BAD_REQUEST", "UNKNOWN_COMMAND", "TOO_LARGE"]).toContain(cmd.code);
            expect(cmd.message.length).toBeGreaterThan(0);
          }
        }
      }),
      { numRuns: RUNS * 5 },
    );
  });

  test("framing does not depend on how the bytes are split into chunks", () => {
    fc.assert(
      fc.property(protocolishBytes, fc.array(fc.nat(), { maxLength: 10 }), fc.integer({ min: 16, max: 64 }), (bytes, cuts, limit) => {
        expect(frameAll(splitAt(bytes, cuts), limit)).toEqual(frameAll([bytes], limit));
      }),
      { numRuns: RUNS * 5 },
    );
  });

  test("random request lines and JSON parse to typed commands without throwing", () => {
    fc.assert(
      fc.property(requestLine, (line) => {
        const frames = frameAll([encoder.encode(line + "\n")], MAX_REQUEST_BYTES);
        for (const frame of frames) expect(COMMAND_TYPES.has(commandFromFrame(frame, MAX_REQUEST_BYTES).type)).toBe(true);
      }),
      { numRuns: RUNS * 5 },
    );
  });
});

// ---------------------------------------------------------------- (b) and (c) against a live server

let server: ServerProcess;

beforeAll(async () => {
  // --partial-request-ms 0: these tests end their input by half-closing, so a
  // scheduling pause in the middle of a pipelined write is never taken for
  // the end of a request.
  server = await spawnServer([
    "--in-memory", "--log-level", "warn", "--partial-request-ms", "0",
    "--max-transaction-bytes", String(MAX_TRANSACTION_BYTES),
  ]);
});
afterAll(async () => {
  await server.kill("SIGTERM");
});

async function expectServerHealthy(): Promise<void> {
  expect(server.proc.exitCode).toBeNull();
  const c = await LineClient.connect(server.port);
  expect(await c.request("PING")).toEqual({ status: "Ok", result: "PONG" });
  c.close();
  // A handler that threw is logged at error level: input must never cause one.
  expect(server.stderr()).not.toContain('"level":"error"');
}

describe("a live server answers every input with well-formed replies and stays up", () => {
  test("random bytes", async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(protocolishBytes, fc.uint8Array({ maxLength: 4000, size: "max" })), async (bytes) => {
        for (const line of await exchange(server.port, bytes)) expectWellFormedReply(line);
      }),
      { numRuns: RUNS },
    );
    await expectServerHealthy();
  }, TEST_TIMEOUT_MS);

  test("random valid-looking commands, transactions, JSON forms, odd whitespace and unicode: one reply per request", async () => {
    await fc.assert(
      fc.asyncProperty(requestLines, async (lines) => {
        const replies = await exchange(server.port, encoder.encode(lines.join("\n") + "\n"));
        for (const line of replies) expectWellFormedReply(line);
        expect(replies.length).toBe(expectedReplyCount(lines));
      }),
      { numRuns: RUNS },
    );
    await expectServerHealthy();
  }, TEST_TIMEOUT_MS);

  test("random JSON after each command name", async () => {
    const line = fc.tuple(fc.constantFrom("PUT", "GET", "DEL", "KEYS", "AUTH", "START", "PING"), fc.oneof(jsonArgument, fc.json())).map(([name, json]) => `${name} ${json.replaceAll("\n", " ")}`);
    await fc.assert(
      fc.asyncProperty(fc.array(line, { minLength: 1, maxLength: 20 }), async (lines) => {
        const replies = await exchange(server.port, encoder.encode(lines.join("\n") + "\n"));
        for (const reply of replies) expectWellFormedReply(reply);
        expect(replies.length).toBe(expectedReplyCount(lines));
      }),
      { numRuns: RUNS },
    );
    await expectServerHealthy();
  }, TEST_TIMEOUT_MS);
});

// ---------------------------------------------------------------- (c) model check

const DELETED = Symbol("deleted");
type ModelValue = unknown;
interface ModelLevel {
  writes: Map<string, ModelValue | typeof DELETED>;
  bytes: number;
  failed: boolean;
}

/** What PROTOCOL §3-§4 say one connection, alone on its keys, should see. */
class Model {
  readonly committed = new Map<string, ModelValue>();
  levels: ModelLevel[] = [];

  private get failed(): boolean {
    return this.levels.length > 0 && this.levels[this.levels.length - 1]!.failed;
  }

  private get txBytes(): number {
    return this.levels.reduce((n, l) => n + l.bytes, 0);
  }

  private read(key: string): ModelValue | undefined {
    for (let i = this.levels.length - 1; i >= 0; i--) {
      const w = this.levels[i]!.writes.get(key);
      if (w === DELETED) return undefined;
      if (w !== undefined) return w;
    }
    return this.committed.get(key);
  }

  private innermost(): ModelLevel {
    return this.levels[this.levels.length - 1]!;
  }

  /** The expected reply (errors by code only) for one operation. */
  apply(op: Op): Partial<Reply> {
    const inTx = this.levels.length > 0;
    switch (op.kind) {
      case "BOGUS":
        if (inTx) this.innermost().failed = true;
        return { status: "Error", code: "UNKNOWN_COMMAND" };
      case "PUT": {
        if (this.failed) return { status: "Error", code: "ABORTED" };
        if (!inTx) {
          this.committed.set(op.key, op.value);
          return { status: "Ok", result: { key: op.key, value: op.value } };
        }
        const bytes = encoder.encode(op.line).length;
        if (this.txBytes + bytes > MAX_TRANSACTION_BYTES) {
          this.innermost().failed = true;
          return { status: "Error", code: "TOO_LARGE" };
        }
        this.innermost().writes.set(op.key, op.value);
        this.innermost().bytes += bytes;
        return { status: "Ok", result: { key: op.key, value: op.value } };
      }
      case "GET": {
        if (this.failed) return { status: "Error", code: "ABORTED" };
        const value = this.read(op.key);
        return value === undefined ? { status: "Error", code: "NOT_FOUND" } : { status: "Ok", result: { key: op.key, value } };
      }
      case "DEL": {
        if (this.failed) return { status: "Error", code: "ABORTED" };
        if (inTx) {
          const bytes = encoder.encode(op.line).length;
          if (this.txBytes + bytes > MAX_TRANSACTION_BYTES) {
            this.innermost().failed = true;
            return { status: "Error", code: "TOO_LARGE" };
          }
          this.innermost().bytes += bytes;
        }
        const value = this.read(op.key);
        if (value === undefined) return { status: "Error", code: "NOT_FOUND" };
        if (inTx) this.innermost().writes.set(op.key, DELETED);
        else this.committed.delete(op.key);
        return { status: "Ok", result: { key: op.key, value } };
      }
      case "KEYS": {
        if (this.failed) return { status: "Error", code: "ABORTED" };
        const visible = new Set<string>();
        for (const key of this.committed.keys()) visible.add(key);
        for (const level of this.levels) {
          for (const [key, w] of level.writes) {
            if (w === DELETED) visible.delete(key);
            else visible.add(key);
          }
        }
        return { status: "Ok", result: [...visible].filter((k) => k.startsWith(op.prefix)).sort() };
      }
      case "START":
        if (this.failed) return { status: "Error", code: "ABORTED" };
        this.levels.push({ writes: new Map(), bytes: 0, failed: false });
        return { status: "Ok", result: "Transaction started" };
      case "COMMIT": {
        if (!inTx) return { status: "Error", code: "NO_TRANSACTION" };
        if (this.failed) {
          this.levels = [];
          return { status: "Error", code: "ABORTED" };
        }
        const level = this.levels.pop()!;
        const target = this.levels.length > 0 ? this.innermost().writes : null;
        for (const [key, w] of level.writes) {
          if (target) target.set(key, w);
          else if (w === DELETED) this.committed.delete(key);
          else this.committed.set(key, w);
        }
        if (this.levels.length > 0) this.innermost().bytes += level.bytes;
        return { status: "Ok", result: "Transaction committed" };
      }
      case "ROLLBACK":
        if (!inTx) return { status: "Error", code: "NO_TRANSACTION" };
        this.levels.pop();
        return { status: "Ok", result: "Transaction rolled back" };
    }
  }
}

type Op =
  | { kind: "PUT"; key: string; value: ModelValue; line: string }
  | { kind: "GET" | "DEL"; key: string; line: string }
  | { kind: "KEYS"; prefix: string; line: string }
  | { kind: "START" | "COMMIT" | "ROLLBACK" | "BOGUS"; line: string };

/** Operations on keys under `ns`, in plain and JSON forms. */
function operations(ns: string): fc.Arbitrary<Op[]> {
  const suffix = fc.constantFrom("a", "b", "c", "ü", "k y", "{x");
  const plainSuffix = fc.constantFrom("a", "b", "c", "ü");
  const plainValue = fc.stringMatching(/^[a-z0-9ü✓{"][a-z0-9 ü✓{}"]{0,15}$/);
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 4, arbitrary: fc.tuple(plainSuffix, plainValue).map(([s, value]): Op => ({ kind: "PUT", key: ns + s, value, line: `PUT ${ns}${s} ${value}` })) },
    {
      weight: 3,
      arbitrary: fc.tuple(suffix, fc.jsonValue({ maxDepth: 2 })).map(([s, v]): Op => {
        const line = `PUT ${JSON.stringify({ key: ns + s, value: v })}`;
        return { kind: "PUT", key: ns + s, value: JSON.parse(JSON.stringify(v)), line };
      }),
    },
    { weight: 4, arbitrary: suffix.map((s): Op => ({ kind: "GET", key: ns + s, line: `GET ${JSON.stringify({ key: ns + s })}` })) },
    { weight: 2, arbitrary: plainSuffix.map((s): Op => ({ kind: "DEL", key: ns + s, line: `del\t${ns}${s}` })) },
    { weight: 1, arbitrary: suffix.map((s): Op => ({ kind: "DEL", key: ns + s, line: `DEL ${JSON.stringify({ key: ns + s })}` })) },
    { weight: 1, arbitrary: fc.constantFrom("", "a", "k").map((p): Op => ({ kind: "KEYS", prefix: ns + p, line: `KEYS ${ns}${p}` })) },
    { weight: 3, arbitrary: fc.constant<Op>({ kind: "START", line: "START" }) },
    { weight: 2, arbitrary: fc.constant<Op>({ kind: "COMMIT", line: "COMMIT" }) },
    { weight: 2, arbitrary: fc.constant<Op>({ kind: "ROLLBACK", line: "rollback" }) },
    { weight: 1, arbitrary: fc.constant<Op>({ kind: "BOGUS", line: "BOGUS" }) },
  );
  return fc.array(op, { minLength: 1, maxLength: 60, size: "max" });
}

/** Placeholder namespace in generated operations, replaced per execution. */
const NS = "@NS@";

function inNamespace(op: Op, ns: string): Op {
  const line = op.line.replaceAll(NS, ns);
  if ("key" in op) return { ...op, key: op.key.replaceAll(NS, ns), line };
  if ("prefix" in op) return { ...op, prefix: op.prefix.replaceAll(NS, ns), line };
  return { ...op, line };
}

describe("model check: one connection's replies and the committed state match a model", () => {
  let run = 0;
  test("random PUT/GET/DEL/KEYS/START/COMMIT/ROLLBACK sequences with nested and failed levels", async () => {
    await fc.assert(
      fc.asyncProperty(operations(NS), async (generated) => {
        // Each execution (shrinks too) gets its own key namespace, so it never sees another's keys.
        const ns = `m${++run}:`;
        const ops = generated.map((op) => inNamespace(op, ns));
        const model = new Model();
        const c = await LineClient.connect(server.port);
        const replies = await c.pipeline(ops.map((o) => o.line));
        ops.forEach((op, i) => {
          const expected = model.apply(op);
          if (expected.status === "Ok") expect({ i, line: op.line, reply: replies[i] }).toEqual({ i, line: op.line, reply: expected as Reply });
          else expect({ i, line: op.line, reply: replies[i] }).toMatchObject({ i, line: op.line, reply: expected });
        });
        c.close(); // an open transaction is rolled back
        // The committed state, read by a fresh connection.
        const d = await LineClient.connect(server.port);
        for (const s of ["a", "b", "c", "ü", "k y", "{x"]) {
          const key = ns + s;
          const reply = await d.request(`GET ${JSON.stringify({ key })}`);
          const value = model.committed.get(key);
          if (value === undefined) expect({ key, reply }).toMatchObject({ key, reply: { status: "Error", code: "NOT_FOUND" } });
          else expect({ key, reply }).toEqual({ key, reply: { status: "Ok", result: { key, value } } });
        }
        d.close();
      }),
      { numRuns: RUNS },
    );
    await expectServerHealthy();
  }, TEST_TIMEOUT_MS);
});
