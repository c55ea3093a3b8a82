/**
 * Crash consistency as a prefix (PROTOCOL §5), checked exactly: after a
 * SIGKILL at any moment, with automatic compaction running all the time
 * (`--compact-min-bytes 0 --compact-percent 1`), the state a restart
 * recovers is the result of a prefix of the commits in commit order.
 *
 * How commit order is known from outside: every transaction reads the
 * counter key `n` and writes n+1 (besides PUTs and DELs of a few shared
 * keys, sometimes in a nested level that is merged or rolled back), so
 * committed transactions are totally ordered by their counter (concurrent
 * ones get CONFLICT and retry). A recovered `n` = N then fixes what every
 * shared key must hold: what the last transaction with counter <= N wrote
 * to it. Standalone PUT/DELs (one connection each, on keys of their own)
 * are placed against the counter by real time: one sent after counter c was
 * acknowledged comes after c; one acknowledged before counter c's COMMIT was
 * sent comes before it. Under `always` nothing acknowledged may be missing.
 *
 * Each mode runs five kill cycles on one data directory (compactions,
 * snapshot temp files, journal generations and torn tails pile up), killed
 * at a seeded choice of moments that depend on progress, not on time: after
 * a number of commits, while STATS shows a compaction running, while a SAVE
 * is pending, or right after it answered. Values are unicode with inner
 * spaces (plain form) and non-string JSON (JSON form), on keys with spaces.
 * A few thousand keys nobody changes make each snapshot's walk take several
 * slices with commits between them, so that a fuzzy snapshot is only right
 * through the journal's replay: a snapshot labelled with the seq at the end
 * of its walk instead of the start fails this test in every run tried.
 * tests/torture/crash-torture.py is the longer, manual crash torture.
 */
import { afterEach, describe, expect, test } from "bun:test";
import path from "node:path";
import { parseJsonExact } from "../lib/exact-json.ts";
import { LineClient, pick, seededRandom, spawnServer, tempDir, type Reply, type ServerProcess } from "./helpers.ts";

const cleanups: (() => void | Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

type Mode = "always" | "everysec" | "no";
type Trigger = "commits" | "compacting" | "save-pending" | "save-answered";
/** key -> canonical JSON text of its value */
type State = Map<string, string>;
type Rng = () => number;

/** Untouched keys, about 0.6 MB of snapshot. */
const FILLER_KEYS = 4000;
const SHARED_KEYS = ["k0", "k1", "k2", "k3", "k4", "k 5 é", "k6.日本", "k{7", "k8", "k9", "k10", "k 11"];
const UNICODE = ["é", "✓", "𝄞", "日本", "\u2028", "🙂"];

/** One committed (or, with no reply, maybe committed) transaction. */
interface Txn {
  counter: number;
  /** Effective writes besides n, in order: [key, canonical value | null for a delete]. */
  ops: [string, string | null][];
  nText: string;
  commitSentAt: number;
  acked: boolean;
}

/** One standalone PUT or DEL of a private writer. */
interface PrivateOp {
  key: string;
  value: string | null;
  /** Highest counter acknowledged before it was sent: it comes after that one. */
  after: number;
  ackedAt: number;
  acked: boolean;
}

interface History {
  txns: Txn[];
  writers: PrivateOp[][];
  /** Logical clock of sends and replies. */
  clock: number;
  maxAcked: number;
}

const canon = (jsonText: string) => JSON.stringify(parseJsonExact(jsonText));
const plainKey = (key: string) => /^[A-Za-z0-9_.:-]+$/.test(key);

/** A PUT request and the canonical JSON text of the value it stores. */
function putRequest(rng: Rng, key: string, tag: string): [string, string] {
  const kind = Math.floor(rng() * 6);
  if (kind <= 1 && plainKey(key)) {
    const value = kind === 0 ? tag : `${pick(rng, UNICODE)} ${tag} with  inner spaces ${pick(rng, UNICODE)}`;
    return [`PUT ${key} ${value}`, JSON.stringify(value)];
  }
  const texts = [
    `{"a":[1,2],"tag":${JSON.stringify(tag)}}`,
    `[${JSON.stringify(tag)}, 1.5, true, null, {"x": []}]`,
    `{"tag":${JSON.stringify(tag)},"big":123456789012345678901,"s":"  ${pick(rng, UNICODE)} "}`,
    JSON.stringify(`${tag} "quoted" \\ back\nslash ${pick(rng, UNICODE)}`),
  ];
  const text = pick(rng, texts);
  return [`PUT {"key":${JSON.stringify(key)},"value":${text}}`, canon(text)];
}

const delRequest = (key: string) => (plainKey(key) ? `DEL ${key}` : `DEL ${JSON.stringify({ key })}`);

/** The canonical JSON text of a reply's value. */
function replyValue(reply: Reply): string {
  return JSON.stringify((reply.result as { value: unknown }).value);
}

/** One transaction, retried on CONFLICT; ends when it committed or the connection dropped. */
async function counterTransaction(c: LineClient, rng: Rng, h: History, id: number): Promise<void> {
  for (;;) {
    const [started, got] = await c.pipeline(["START", rng() < 0.5 ? "GET n" : 'GET {"key":"n"}']);
    expect(started!.status).toBe("Ok");
    if (got!.status !== "Ok") expect(got!.code).toBe("NOT_FOUND");
    const counter = (got!.status === "Ok" ? Number(JSON.parse(replyValue(got!))) : 0) + 1;
    const plainN = rng() < 0.5;
    const nRequest = plainN ? `PUT n ${counter}` : `PUT {"key":"n","value":${counter}}`;
    const lines: string[] = [];
    const effect = new Map<string, string | null>();
    const writes = (count: number, into: Map<string, string | null>, tag: string) => {
      for (let i = 0; i < count; i++) {
        const key = pick(rng, SHARED_KEYS);
        if (rng() < 0.2) {
          lines.push(delRequest(key));
          into.set(key, null);
        } else {
          const [line, value] = putRequest(rng, key, `${tag}${counter}.${id}.${i}`);
          lines.push(line);
          into.set(key, value);
        }
      }
    };
    // Sometimes only n: the one-PUT transaction that commits from its bytes.
    if (rng() < 0.8) writes(1 + Math.floor(rng() * 4), effect, "v");
    if (rng() < 0.3) {
      const inner = new Map<string, string | null>();
      const rolledBack = rng() < 0.5;
      lines.push("START");
      writes(1 + Math.floor(rng() * 2), inner, rolledBack ? "RB" : "in");
      lines.push(rolledBack ? "ROLLBACK" : "COMMIT");
      if (!rolledBack) for (const [key, value] of inner) {
        effect.delete(key);
        effect.set(key, value);
      }
    }
    lines.push(nRequest, "COMMIT");
    const txn: Txn = { counter, ops: [...effect], nText: plainN ? JSON.stringify(String(counter)) : String(counter), commitSentAt: ++h.clock, acked: false };
    h.txns.push(txn); // with no reply it stays, as maybe committed
    c.write(lines.map((line) => line + "\n").join(""));
    for (const line of lines.slice(0, -1)) {
      const reply = await c.readReply();
      if (reply.status !== "Ok" && !(line.startsWith("DEL") && reply.code === "NOT_FOUND")) {
        throw new Error(`${line} -> ${JSON.stringify(reply)}`);
      }
    }
    const committed = await c.readReply();
    if (committed.status === "Ok") {
      txn.acked = true;
      ++h.clock;
      h.maxAcked = Math.max(h.maxAcked, counter);
      return;
    }
    h.txns.splice(h.txns.indexOf(txn), 1);
    expect(committed.code).toBe("CONFLICT");
  }
}

/** A batch of standalone PUT/DELs on the writer's own keys, pipelined. */
async function privateWrites(c: LineClient, rng: Rng, h: History, writer: number, cycle: number): Promise<void> {
  const ops = h.writers[writer]!;
  const lines: string[] = [];
  const batch: PrivateOp[] = [];
  for (let i = 1 + Math.floor(rng() * 8); i > 0; i--) {
    const key = `p${writer}.${Math.floor(rng() * 40)}${rng() < 0.2 ? " é" : ""}`;
    let value: string | null = null;
    if (rng() < 0.2) lines.push(delRequest(key));
    else {
      const [line, stored] = putRequest(rng, key, `s${writer}c${cycle}.${ops.length + batch.length}`);
      lines.push(line);
      value = stored;
    }
    batch.push({ key, value, after: h.maxAcked, ackedAt: Infinity, acked: false });
    ++h.clock;
  }
  ops.push(...batch);
  c.write(lines.map((line) => line + "\n").join(""));
  for (const op of batch) {
    const reply = await c.readReply();
    if (reply.status !== "Ok" && !(op.value === null && reply.code === "NOT_FOUND")) throw new Error(JSON.stringify(reply));
    op.acked = true;
    op.ackedAt = ++h.clock;
  }
}

/** Every key and value the server holds (values parsed exactly: integers beyond 2^53 too). */
async function readState(server: ServerProcess): Promise<State> {
  const c = await LineClient.connect(server.port);
  const keys = (await c.request("KEYS")).result as string[];
  c.write(keys.map((key) => `GET ${JSON.stringify({ key })}\n`).join(""));
  const state: State = new Map();
  for (const key of keys) {
    const reply = parseJsonExact(await c.readLine()) as Reply;
    expect(reply.status).toBe("Ok");
    state.set(key, JSON.stringify((reply.result as { value: unknown }).value));
  }
  c.close();
  return state;
}

const counterOf = (state: State) => Number(JSON.parse(state.get("n") ?? "0"));

/**
 * The recovered state against the history since `baseline` (the state the
 * load started from): the problems found, none when it is a prefix.
 */
function checkPrefix(baseline: State, recovered: State, h: History, always: boolean): string[] {
  const problems: string[] = [];
  const n0 = counterOf(baseline);
  const n = counterOf(recovered);
  if (!(n >= n0)) return [`n went from ${n0} to ${n}`];
  if (always && n < h.maxAcked) problems.push(`acknowledged counter ${h.maxAcked} lost: recovered n=${n}`);
  const byCounter = new Map<number, Txn[]>();
  for (const t of h.txns) byCounter.set(t.counter, [...(byCounter.get(t.counter) ?? []), t]);
  for (const [counter, txns] of byCounter) {
    if (txns.filter((t) => t.acked).length > 1) problems.push(`two acknowledged transactions wrote counter ${counter}`);
  }
  // Per counter up to n: the acknowledged transaction, else the ones with no reply (maybe committed).
  const choices: Txn[][] = [];
  for (let counter = n0 + 1; counter <= n; counter++) {
    const txns = byCounter.get(counter) ?? [];
    const acked = txns.filter((t) => t.acked);
    if (txns.length === 0) return [...problems, `recovered n=${n}, but no transaction wrote counter ${counter}`];
    choices.push(acked.length > 0 ? acked : txns);
  }
  const privateKeys = new Set(h.writers.flat().map((op) => op.key));
  const shared = (state: State) => new Map([...state].filter(([key]) => !privateKeys.has(key)));
  const got = shared(recovered);
  const combinations = choices.reduce((product, c) => product * c.length, 1);
  let firstDiff: string | null = null;
  for (let combination = 0; combination < Math.min(combinations, 1024); combination++) {
    const expected = shared(baseline);
    let rest = combination;
    for (const candidates of choices) {
      const t = candidates[rest % candidates.length]!;
      rest = Math.floor(rest / candidates.length);
      for (const [key, value] of t.ops) {
        if (value === null) expected.delete(key);
        else expected.set(key, value);
      }
      expected.set("n", t.nText);
    }
    const diff = difference(expected, got);
    if (diff === null) {
      firstDiff = null;
      break;
    }
    firstDiff ??= diff;
  }
  if (firstDiff !== null) problems.push(`shared keys are not the prefix up to counter ${n}: ${firstDiff}`);

  // A private op acknowledged before the COMMIT of counter c was sent comes before c.
  const acked = h.txns.filter((t) => t.acked).sort((a, b) => a.commitSentAt - b.commitSentAt);
  const beforeCounter = (op: PrivateOp) => {
    let least = Infinity;
    for (let i = acked.length - 1; i >= 0 && acked[i]!.commitSentAt > op.ackedAt; i--) least = Math.min(least, acked[i]!.counter);
    return least;
  };
  h.writers.forEach((ops, writer) => {
    // The writer's keys after its first j ops, for the j that n allows (ops j.. not in the prefix).
    const keys = [...new Set(ops.map((op) => op.key))];
    const state = new Map(keys.map((key) => [key, baseline.get(key)]));
    const lastAcked = ops.findLastIndex((op) => op.acked);
    let matched = -1;
    for (let j = 0; j <= ops.length; j++) {
      if (j > 0) state.set(ops[j - 1]!.key, ops[j - 1]!.value ?? undefined);
      if (j > 0 && n < ops[j - 1]!.after) break;
      if (j < ops.length && n >= beforeCounter(ops[j]!)) continue;
      if (keys.every((key) => state.get(key) === recovered.get(key))) matched = j;
    }
    if (matched === -1) problems.push(`writer ${writer}: its keys are no prefix of its ops consistent with n=${n}`);
    else if (always && matched <= lastAcked) problems.push(`writer ${writer}: acknowledged writes lost (${matched} of ${lastAcked + 1} present)`);
  });
  return problems;
}

function difference(expected: State, got: State): string | null {
  const diffs: string[] = [];
  for (const [key, value] of expected) if (got.get(key) !== value) diffs.push(`${JSON.stringify(key)}: expected ${value}, got ${got.get(key) ?? "nothing"}`);
  for (const [key, value] of got) if (!expected.has(key)) diffs.push(`${JSON.stringify(key)}: expected nothing, got ${value}`);
  return diffs.length === 0 ? null : diffs.slice(0, 4).join("; ");
}

async function start(dataFile: string, mode: Mode): Promise<ServerProcess> {
  const server = await spawnServer([
    "--data", dataFile, "--fsync", mode, "--compact-min-bytes", "0", "--compact-percent", "1",
    "--max-transaction-bytes", "65536", "--log-level", "info",
  ]);
  cleanups.push(async () => {
    server.proc.kill("SIGKILL");
    await server.exited;
  });
  return server;
}

/**
 * Load until the trigger's moment, then SIGKILL. Transaction clients and
 * private writers run until their connection drops; the trigger is
 * progress-based (commits acknowledged, a compaction seen in STATS, a SAVE).
 */
async function loadAndKill(server: ServerProcess, h: History, rng: Rng, trigger: Trigger, cycle: number): Promise<void> {
  let killed = false;
  let failure: unknown = null;
  const seeds = Array.from({ length: 6 }, () => Math.floor(rng() * 2 ** 31));
  const run = async (step: (c: LineClient) => Promise<void>) => {
    const c = await LineClient.connect(server.port);
    try {
      while (!killed) await step(c);
    } catch (err) {
      if (!killed) failure ??= err;
    } finally {
      c.close();
    }
  };
  const clients = [
    ...seeds.slice(0, 4).map((seed, id) => {
      const r = seededRandom(seed);
      return run((c) => counterTransaction(c, r, h, id));
    }),
    ...seeds.slice(4).map((seed, i) => {
      const r = seededRandom(seed);
      return run((c) => privateWrites(c, r, h, i, cycle));
    }),
  ];
  const startCounter = h.maxAcked;
  const monitor = await LineClient.connect(server.port);
  const saver = await LineClient.connect(server.port);
  /** Lets the load run for one more round trip; false once `commits` more were acknowledged. */
  const before = async (commits: number) => {
    if (failure !== null) throw failure;
    if (h.maxAcked - startCounter >= commits) return false;
    await monitor.request("PING");
    return true;
  };
  try {
    // Some load first, so that the kill lands among journals and compactions.
    const warmUp = 10 + Math.floor(rng() * 60);
    while (await before(warmUp));
    if (trigger === "compacting") {
      while (await before(warmUp + 1000)) {
        const stats = (await monitor.request("STATS")).result as { persistence: { compacting: boolean } };
        if (stats.persistence.compacting) break;
      }
    } else if (trigger === "save-pending") {
      saver.write("SAVE\n");
      // A few more commits while the SAVE runs (unless it answers first).
      const more = warmUp + Math.floor(rng() * 10);
      while (saver.unread === "" && (await before(more)));
    } else if (trigger === "save-answered") {
      expect((await saver.request("SAVE")).status).toBe("Ok");
    }
  } finally {
    killed = true;
    server.proc.kill("SIGKILL");
    await server.exited;
    monitor.close();
    saver.close();
  }
  await Promise.all(clients);
  if (failure !== null) throw failure;
}

async function killCycles(mode: Mode, seed: number, triggers: Trigger[]): Promise<{ commits: number; autoCompactions: number }> {
  const dir = tempDir();
  cleanups.push(dir.cleanup);
  const dataFile = path.join(dir.path, "data.json");
  const rng = seededRandom(seed);
  let server = await start(dataFile, mode);
  // The keys the load changes are created first, so that a snapshot's walk (in creation order)
  // passes them first; then keys nobody changes make the walk take many more slices, with commits
  // between them: keys changed after the walk passed them are right only through the journal's replay.
  const filler = await LineClient.connect(server.port);
  const loadKeys = [...SHARED_KEYS, ...[0, 1].flatMap((w) => Array.from({ length: 40 }, (_, i) => [`p${w}.${i}`, `p${w}.${i} é`]).flat())];
  const created = await filler.pipeline(loadKeys.map((key) => `PUT ${JSON.stringify({ key, value: "initial" })}`));
  expect(created.every((reply) => reply.status === "Ok")).toBe(true);
  for (let i = 0; i < FILLER_KEYS; i += 500) {
    const replies = await filler.pipeline(Array.from({ length: 500 }, (_, j) => `PUT f${i + j} ${"filler ".repeat(20)}${i + j}`));
    expect(replies.every((reply) => reply.status === "Ok")).toBe(true);
  }
  filler.close();
  let baseline = await readState(server);
  expect(baseline.size).toBe(loadKeys.length + FILLER_KEYS);
  let autoCompactions = 0;
  for (const [cycle, trigger] of triggers.entries()) {
    const h: History = { txns: [], writers: [[], []], clock: 0, maxAcked: counterOf(baseline) };
    await loadAndKill(server, h, rng, trigger, cycle);
    autoCompactions += server.stderr().split('"trigger":"journal size"').length - 1;
    // The restart must accept the files the killed server left (never refuse its own files).
    server = await start(dataFile, mode);
    const recovered = await readState(server);
    const problems = checkPrefix(baseline, recovered, h, mode === "always");
    expect({ mode, cycle, trigger, problems }).toEqual({ mode, cycle, trigger, problems: [] });
    baseline = recovered;
  }
  expect(await server.kill("SIGTERM")).toBe(0);
  return { commits: counterOf(baseline), autoCompactions };
}

describe("SIGKILL with compaction racing the writes: the recovered state is a prefix in commit order", () => {
  const triggers: Trigger[] = ["commits", "compacting", "save-pending", "save-answered"];
  for (const [i, mode] of (["always", "everysec", "no"] as const).entries()) {
    test(`--fsync ${mode}`, async () => {
      const rng = seededRandom(1000 + i);
      // A seeded order of the kill moments, each at least once, and one more.
      const order = [...[...triggers].sort(() => rng() - 0.5), pick(rng, triggers)];
      const done = await killCycles(mode, 2000 + i, order);
      expect(done.commits).toBeGreaterThan(0);
      // The automatic compactions the kills raced (logged by the killed servers).
      expect(done.autoCompactions).toBeGreaterThan(0);
    }, 30000);
  }
});

describe("the prefix checker", () => {
  // Counter 1 writes k0 and k1; counter 2 rewrites k1 and deletes k0; writer 0's PUT was
  // acknowledged after counter 1 and before counter 2's COMMIT was sent.
  const history = (): History => ({
    txns: [
      { counter: 1, ops: [["k0", '"a"'], ["k1", '"b"']], nText: '"1"', commitSentAt: 1, acked: true },
      { counter: 2, ops: [["k1", "[1]"], ["k0", null]], nText: "2", commitSentAt: 5, acked: true },
      { counter: 3, ops: [["k2", '"maybe"']], nText: "3", commitSentAt: 7, acked: false },
    ],
    writers: [[{ key: "p0.0", value: '"s"', after: 1, ackedAt: 4, acked: true }]],
    clock: 8,
    maxAcked: 2,
  });
  const state = (entries: Record<string, string>): State => new Map(Object.entries(entries));

  test("accepts every prefix, the unacknowledged commit with or without it", () => {
    expect(checkPrefix(state({}), state({}), history(), false)).toEqual([]);
    expect(checkPrefix(state({}), state({ n: '"1"', k0: '"a"', k1: '"b"' }), history(), false)).toEqual([]);
    expect(checkPrefix(state({}), state({ n: '"1"', k0: '"a"', k1: '"b"', "p0.0": '"s"' }), history(), false)).toEqual([]);
    expect(checkPrefix(state({}), state({ n: "2", k1: "[1]", "p0.0": '"s"' }), history(), true)).toEqual([]);
    expect(checkPrefix(state({}), state({ n: "3", k1: "[1]", k2: '"maybe"', "p0.0": '"s"' }), history(), true)).toEqual([]);
  });

  test("flags half a transaction, a hole, a write out of order, a rolled-back value and a lost acknowledged write", () => {
    const flagged = (recovered: Record<string, string>, always: boolean, problem: string) =>
      expect(checkPrefix(state({}), state(recovered), history(), always)).toContainEqual(expect.stringContaining(problem));
    flagged({ n: "2", k0: '"a"', k1: "[1]", "p0.0": '"s"' }, false, "shared keys are not the prefix up to counter 2");
    flagged({ n: "2", "p0.0": '"s"' }, false, "shared keys are not the prefix up to counter 2");
    flagged({ n: "2", k1: "[1]" }, false, "writer 0: its keys are no prefix of its ops consistent with n=2");
    flagged({ k0: '"a"', k1: '"b"' }, false, "shared keys are not the prefix up to counter 0");
    flagged({ n: '"1"', k0: '"a"', k1: '"RB1"' }, false, "shared keys are not the prefix up to counter 1");
    flagged({ n: '"1"', k0: '"a"', k1: '"b"' }, true, "acknowledged counter 2 lost: recovered n=1");
  });
});
