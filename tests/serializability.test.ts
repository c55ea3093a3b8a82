/**
 * Serializability across many concurrent connections, checked against the
 * journal (PROTOCOL §4, §5).
 *
 * A real server subprocess (persistence on, fresh data directory) serves
 * CONNS raw line connections (one request, its reply, the next), each running
 * a seeded script of random transactions over a small key space: GET, blind
 * PUT, read-modify-write, DEL, KEYS with a prefix, nested START/COMMIT/ROLLBACK
 * levels (now and then deeper than 8), failed levels (a malformed request,
 * then ABORTED answers, then ROLLBACK or an ABORTED COMMIT), connections
 * closed with a transaction open, plain and JSON forms (the fast and the
 * general path), ASCII, Latin-1 and wider keys and values, long transactions
 * of plain GETs (which fill lib/deferred-reads.ts's table), and single
 * requests outside transactions. Meanwhile one more connection pipelines
 * batches of PUT/DEL over hundreds of other keys (the store's map grows and
 * sweeps), and another sends SAVE a few times (compactions).
 * Every written value is unique, so each journal record names the request
 * that wrote it (a transaction whose net writes are only deletes adds a blind
 * PUT of a key of its own connection, "m<conn>", so that it too is named).
 *
 * Afterwards the journal gives the commit order (records carry seq and the
 * ops of one commit). It is replayed from the empty state, and:
 *  - every record is the commit of exactly one request answered Ok (nothing
 *    of a conflicted, rolled-back, aborted or dropped transaction, no half
 *    transaction), holding exactly the net writes the client made; every Ok
 *    write is in the journal; seqs run 1..N, N the server's commit count;
 *  - every read of the store is placed on the commit order: it saw the state
 *    after some seq, no earlier than what requests answered before it was
 *    sent saw, no later than what requests sent after its reply saw. This
 *    gives each read and COMMIT a window [lo, hi] of seqs;
 *  - a committed writing transaction at seq s read exactly the state s-1
 *    (every GET/DEL value or absence, every KEYS answer less the keys its own
 *    writes answered), and no key it read was changed, nor a key created or
 *    deleted under a KEYS prefix it read, between the read and the commit
 *    (PROTOCOL: that must conflict, even when changed back);
 *  - a committed read-only transaction read one state within its COMMIT's
 *    window, with the same must-conflict check;
 *  - a CONFLICT was given only when some key it read from the store (or any
 *    key under a KEYS prefix it read, less those its own writes answered) may
 *    have been changed between the read and the COMMIT: blind writes and
 *    reads answered from the transaction's own writes never conflict;
 *    except that a transaction past the server's --max-transaction-reads
 *    (READ_LIMIT distinct keys and KEYS prefixes read from the store) watches
 *    the whole store, so any commit after its (READ_LIMIT+1)-th distinct
 *    read justifies its CONFLICT (README "Transactions", "Big reads");
 *  - reads answered from the transaction's own writes show those writes;
 *  - the final state (KEYS + GET) equals the replay's, and so does the state
 *    after kill -9 and a restart (the last SAVE's snapshot plus the journal),
 *    and after a clean stop (SIGTERM, exit 0) and a restart.
 *
 * The journal is read before the stops: a clean stop folds it into a final
 * snapshot, and a SAVE deletes the generations it covers (README "Files",
 * "Compaction"), so every generation is hard-linked aside before each SAVE.
 * Under --fsync always (the default here) an acknowledged commit is in the
 * journal file when its reply arrives (PROTOCOL §5), so once every client is
 * done the journal is complete. (Under everysec and no, it is written in the
 * event-loop turn of the commit, which the final requests follow; the seq
 * count check would tell if not.)
 *
 * Environment, to hunt with other sizes: TXKV_SER_SEED (the script seed,
 * printed on failure), TXKV_SER_CONNS, TXKV_SER_TXS (transactions per
 * connection), TXKV_SER_KEYS (hot keys, 2-12), TXKV_SER_FSYNC
 * (always|everysec|no), TXKV_SER_READ_LIMIT (the server's
 * --max-transaction-reads, small so that some transactions pass it; 0: the
 * server's default), TXKV_SER_CHURN_KEYS, TXKV_SER_CHURN_BATCHES,
 * TXKV_SER_SAVES, TXKV_SER_PREFILL (keys written first, so that a SAVE's walk
 * spans many slices), TXKV_SER_VERBOSE=1 (counts and phase times). The
 * interleaving depends on timing, so a seed reproduces each connection's
 * script, not the exact interleaving: rerun it a few times.
 */
import { expect, test } from "bun:test";
import { existsSync, linkSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { LineClient, pick, seededRandom, spawnServer, tempDir, type ServerProcess } from "./helpers.ts";

function envInt(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === "") return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a whole number, got ${JSON.stringify(text)}`);
  return n;
}

const SEED = envInt("TXKV_SER_SEED", Math.floor(Math.random() * 2 ** 31));
const CONNS = envInt("TXKV_SER_CONNS", 32);
const TXS = envInt("TXKV_SER_TXS", 40);
const KEY_COUNT = Math.min(12, Math.max(2, envInt("TXKV_SER_KEYS", 8)));
const FSYNC = process.env.TXKV_SER_FSYNC || "always";
/** One more connection churns CHURN_KEYS other keys ("z..."), pipelining batches of writes outside transactions. */
const CHURN_KEYS = envInt("TXKV_SER_CHURN_KEYS", 400);
const CHURN_BATCHES = envInt("TXKV_SER_CHURN_BATCHES", 20);
/** SAVEs (compactions) spread over the run; the journal generations they retire are kept by hard links. */
const SAVES = envInt("TXKV_SER_SAVES", 2);
/** Keys ("y...") written before the run, so that a SAVE's walk of the store spans many slices (then KEYS "" is not read). */
const PREFILL = envInt("TXKV_SER_PREFILL", 0);
/** The server's --max-transaction-reads: small, so that long transactions pass it and watch the whole store. */
const READ_LIMIT = envInt("TXKV_SER_READ_LIMIT", 4);

/**
 * The hot keys: two families under prefixes "a" and "b", with keys the fast path leaves to the general path
 * (non-ASCII: "bé" is stored one byte per code unit, "b€1" two) and a key too long for lib/deferred-reads.ts
 * (watched at once).
 */
const KEYS = ["a0", "b0", "a1", "bé", "a2", "b€1", `a3${"x".repeat(70)}`, "b1", "a4", "b2", "a5", "b3"].slice(0, KEY_COUNT);
/** Keys rarely written, read mostly by the long transactions (which thus often get to commit). */
const COLD_KEYS = ["c0", "c1", "c2"];
/** KEYS prefixes: everything, each family, single keys, and one matching nothing. */
const PREFIXES = ["", "a", "b", "a1", "bé", "b€", "a3", "c", "d"].filter((p) => PREFILL === 0 || p !== "");

/** Reply wait: a hang guard only, nothing is timed. */
const REPLY_WAIT_MS = 60_000;

/** A value as compared here: a string as itself, anything else as its JSON text. */
type Value = string;
const canonical = (v: unknown): Value => (typeof v === "string" ? v : JSON.stringify(v));

interface Step {
  readonly line: string;
  readonly reply: string;
}

/**
 * When a request was sent (ts) and its reply read (tr), on one clock of the
 * test process: when tr(A) < ts(B), the server executed A before B.
 */
interface Span {
  readonly ts: number;
  readonly tr: number;
}
let clock = 0;

/** A read answered by the store (not by the transaction's own writes). */
type StoreRead = Span &
  (
  | { readonly kind: "get"; readonly key: string; readonly value: Value | null; readonly line: string }
  | {
      readonly kind: "keys";
      readonly prefix: string;
      /** The listed keys the store answered for (sorted): those the transaction had not written. */
      readonly keys: readonly string[];
      /** Keys the transaction had written (under the prefix) when it read: answered by its own writes. */
      readonly exempt: ReadonlySet<string>;
      readonly line: string;
    }
  );

/** A transaction, or one request outside a transaction. */
interface Unit {
  readonly conn: number;
  readonly index: number;
  readonly auto: boolean;
  readonly steps: Step[];
  readonly reads: StoreRead[];
  /** The net writes of an outermost COMMIT, or of an auto-committed PUT/DEL (null: delete). */
  writes: Map<string, Value | null>;
  /** rolledback: by ROLLBACK or by closing the connection; aborted: COMMIT of a failed level answered ABORTED. */
  outcome: "committed" | "conflict" | "rolledback" | "aborted" | "pending";
  /** Its outermost COMMIT (or its own request, for a PUT/DEL outside one that wrote); null: none. */
  commit: Span | null;
  /** Its journal record's seq, once attributed (0: none). */
  seq: number;
}

interface Conn {
  readonly id: number;
  readonly units: Unit[];
}

/** Everything the clients did, shared by the connections. */
interface Run {
  readonly conns: Conn[];
  /** Every value a PUT sent, by the unit that sent it. */
  readonly valueOwner: Map<Value, Unit>;
  /** PUT/DEL outside transactions answered Ok for a delete: by key and deleted value. */
  readonly autoDeletes: Map<string, Unit>;
  readonly problems: string[];
  /** Units the transaction connections have finished, and who waits for that count to grow (the churn). */
  progress: number;
  readonly progressWaiters: (() => void)[];
}

function advance(run: Run): void {
  run.progress++;
  for (const wake of run.progressWaiters.splice(0)) wake();
}

async function untilProgress(run: Run, target: number): Promise<void> {
  while (run.progress < target) await new Promise<void>((resolve) => run.progressWaiters.push(resolve));
}

/** One connection's transaction stack, as the client knows it. */
class TxModel {
  readonly levels: Map<string, Value | null>[] = [new Map()];

  get depth(): number {
    return this.levels.length;
  }

  /** The transaction's own latest write of key (null: deleted), or undefined. */
  own(key: string): Value | null | undefined {
    for (let i = this.levels.length - 1; i >= 0; i--) {
      const level = this.levels[i]!;
      if (level.has(key)) return level.get(key) as Value | null;
    }
    return undefined;
  }

  ownWithPrefix(prefix: string): Map<string, Value | null> {
    const out = new Map<string, Value | null>();
    for (const level of this.levels) for (const [k, v] of level) if (k.startsWith(prefix)) out.set(k, v);
    return out;
  }

  write(key: string, value: Value | null): void {
    this.levels[this.levels.length - 1]!.set(key, value);
  }

  begin(): void {
    this.levels.push(new Map());
  }

  commitNested(): void {
    const child = this.levels.pop()!;
    for (const [k, v] of child) this.levels[this.levels.length - 1]!.set(k, v);
  }

  rollbackNested(): void {
    this.levels.pop();
  }
}

function keyArg(rng: () => number, key: string, plain = 0.75): string {
  return rng() < plain ? key : JSON.stringify({ key });
}

function keysLine(rng: () => number, prefix: string): string {
  if (rng() < 0.25) return `KEYS ${JSON.stringify({ prefix })}`;
  return prefix === "" ? "KEYS" : `KEYS ${prefix}`;
}

/** A PUT line of a unique value, in one of the forms, and the value as compared. */
function putLine(rng: () => number, key: string, id: string): { line: string; value: Value } {
  // Values of varied lengths and widths: a longer one moves its record (lib/compact-map.ts), leaving garbage to sweep.
  let text = id;
  if (rng() < 0.2) text += "é";
  if (rng() < 0.05) text += "€";
  if (rng() < 0.2) text += ":" + "p".repeat(Math.floor(rng() * 400));
  const r = rng();
  if (r < 0.65) return { line: `PUT ${key} ${text}`, value: text };
  if (r < 0.85) return { line: `PUT ${JSON.stringify({ key, value: text })}`, value: text };
  const value = { id: text, n: 1 };
  return { line: `PUT ${JSON.stringify({ key, value })}`, value: canonical(value) };
}

/** Runs one connection's script; records what it saw. */
async function runConnection(port: number, id: number, run: Run): Promise<void> {
  const rng = seededRandom((SEED ^ Math.imul(id + 1, 0x9e3779b1)) | 0);
  let client = await LineClient.connect(port);
  const conn: Conn = { id, units: [] };
  let last: Span = { ts: 0, tr: 0 };
  run.conns[id] = conn;
  let unit!: Unit;
  const problem = (what: string) => run.problems.push(`conn ${id} ${unit.auto ? "request" : "tx"} ${unit.index}: ${what}`);
  const send = async (line: string): Promise<{ status: string; result?: unknown; code?: string }> => {
    const ts = ++clock;
    client.write(line + "\n");
    const text = await client.readLine(REPLY_WAIT_MS);
    last = { ts, tr: ++clock };
    unit.steps.push({ line, reply: text });
    return JSON.parse(text) as { status: string; result?: unknown; code?: string };
  };
  const unexpected = (line: string, reply: { status: string; code?: string }) => {
    problem(`unexpected reply to ${JSON.stringify(line)}: ${reply.status} ${reply.code ?? ""}`);
  };
  /** The last request's read from the store. */
  const storeRead = (read: Omit<Extract<StoreRead, { kind: "get" }>, "ts" | "tr"> | Omit<Extract<StoreRead, { kind: "keys" }>, "ts" | "tr">) => {
    unit.reads.push({ ...read, ...last } as StoreRead);
  };
  /** GET or DEL reply: the value (canonical), null for NOT_FOUND, undefined (and a problem) for anything else. */
  const valueOf = (line: string, reply: { status: string; result?: unknown; code?: string }, key: string): Value | null | undefined => {
    if (reply.status === "Ok") {
      const result = reply.result as { key?: unknown; value?: unknown };
      if (result.key !== key) problem(`reply to ${JSON.stringify(line)} names key ${JSON.stringify(result.key)}`);
      return canonical(result.value);
    }
    if (reply.code === "NOT_FOUND") return null;
    unexpected(line, reply);
    return undefined;
  };
  /** Ends the innermost nested level: COMMIT with probability commitChance, else ROLLBACK. */
  const endNestedLevel = async (model: TxModel, commitChance: number) => {
    const commit = rng() < commitChance;
    const line = commit ? "COMMIT" : "ROLLBACK";
    const reply = await send(line);
    if (reply.status !== "Ok") unexpected(line, reply);
    if (commit) model.commitNested();
    else model.rollbackNested();
  };
  const keysOf = (line: string, reply: { status: string; result?: unknown }): string[] | undefined => {
    if (reply.status !== "Ok" || !Array.isArray(reply.result)) {
      unexpected(line, reply);
      return undefined;
    }
    const keys = reply.result as string[];
    const sorted = [...new Set(keys)].sort();
    if (sorted.join("\0") !== keys.join("\0")) problem(`KEYS answer not sorted or has duplicates: ${JSON.stringify(keys)}`);
    return keys;
  };

  for (let t = 0; t < TXS; t++, advance(run)) {
    const auto = rng() < 0.2;
    unit = { conn: id, index: t, auto, steps: [], reads: [], writes: new Map(), outcome: "pending", commit: null, seq: 0 };
    conn.units.push(unit);
    if (auto) {
      // One request outside a transaction: its own transaction, applied at once.
      const r = rng();
      const key = pick(rng, rng() < 0.005 ? COLD_KEYS : KEYS);
      if (r < 0.3) {
        const line = `GET ${keyArg(rng, key)}`;
        const value = valueOf(line, await send(line), key);
        if (value !== undefined) storeRead({ kind: "get", key, value, line });
      } else if (r < 0.5) {
        const prefix = pick(rng, PREFIXES);
        const line = keysLine(rng, prefix);
        const keys = keysOf(line, await send(line));
        if (keys) storeRead({ kind: "keys", prefix, keys, exempt: new Set(), line });
      } else if (r < 0.8) {
        const { line, value } = putLine(rng, key, `c${id}t${t}o0`);
        run.valueOwner.set(value, unit);
        const reply = await send(line);
        if (reply.status !== "Ok") unexpected(line, reply);
        unit.writes.set(key, value);
        unit.commit = last;
      } else {
        const line = `DEL ${keyArg(rng, key)}`;
        const value = valueOf(line, await send(line), key);
        if (value === null) {
          storeRead({ kind: "get", key, value: null, line });
        } else if (value !== undefined) {
          unit.writes.set(key, null);
          run.autoDeletes.set(`${key}\0${value}`, unit);
          unit.commit = last;
        }
      }
      unit.outcome = "committed";
      continue;
    }

    const model = new TxModel();
    const readOnly = rng() < 0.2;
    // A few long transactions of plain GETs (each noted in lib/deferred-reads.ts's table): while several run,
    // the table fills up and its reads become watches.
    const long = rng() < 0.08;
    // Now and then deeper than the levels a connection keeps for reuse (8, lib/transaction.ts).
    const deep = !long && rng() < 0.05;
    const maxDepth = deep ? 12 : 4;
    const start = await send("START");
    if (start.status !== "Ok") unexpected("START", start);
    const ops = long ? 60 + Math.floor(rng() * 100) : deep ? 20 + Math.floor(rng() * 20) : 1 + Math.floor(rng() * 9);
    for (let o = 1; o <= ops; o++) {
      const r = rng();
      const key = pick(rng, rng() < (long ? 0.99 : 0.005) ? COLD_KEYS : KEYS);
      let kind: "get" | "rmw" | "put" | "del" | "keys" | "start" | "end" | "fail" | "drop";
      if (!long && rng() < 0.01) kind = rng() < 0.7 ? "fail" : "drop";
      else if (deep && r < 0.3 && model.depth < maxDepth) kind = "start";
      else if (long) kind = o === ops && !readOnly && r < 0.5 ? "rmw" : "get";
      else if (r < 0.2) kind = "get";
      else if (r < 0.32) kind = readOnly ? "get" : "rmw";
      else if (r < 0.47) kind = readOnly ? "get" : "put";
      else if (r < 0.6) kind = readOnly ? "keys" : "del";
      else if (r < 0.72) kind = "keys";
      else if (r < 0.84) kind = model.depth < maxDepth ? "start" : "get";
      else kind = model.depth > 1 ? "end" : "get";
      if (kind === "get" || kind === "rmw") {
        const line = `GET ${keyArg(rng, key, long ? 0.95 : 0.75)}`;
        const own = model.own(key);
        const value = valueOf(line, await send(line), key);
        if (value !== undefined) {
          if (own === undefined) storeRead({ kind: "get", key, value, line });
          else if (own !== value) problem(`read-your-writes: ${line} answered ${JSON.stringify(value)}, its own write was ${JSON.stringify(own)}`);
        }
      }
      if (kind === "rmw" || kind === "put") {
        const put = putLine(rng, key, `c${id}t${t}o${o}`);
        run.valueOwner.set(put.value, unit);
        const reply = await send(put.line);
        if (reply.status !== "Ok") unexpected(put.line, reply);
        model.write(key, put.value);
      } else if (kind === "del") {
        const line = `DEL ${keyArg(rng, key)}`;
        const own = model.own(key);
        const value = valueOf(line, await send(line), key);
        if (value !== undefined) {
          if (own === undefined) storeRead({ kind: "get", key, value, line });
          else if (own !== value) problem(`read-your-writes: ${line} answered ${JSON.stringify(value)}, its own write was ${JSON.stringify(own)}`);
          if (value !== null) model.write(key, null);
        }
      } else if (kind === "keys") {
        const prefix = pick(rng, PREFIXES);
        const line = keysLine(rng, prefix);
        const own = model.ownWithPrefix(prefix);
        const keys = keysOf(line, await send(line));
        if (keys) {
          for (const [k, v] of own) {
            if ((v !== null) !== keys.includes(k)) {
              problem(`read-your-writes: ${line} answered ${JSON.stringify(keys)}, but its own write of ${k} is ${v === null ? "a delete" : JSON.stringify(v)}`);
            }
          }
          storeRead({ kind: "keys", prefix, keys: keys.filter((k) => !own.has(k)), exempt: new Set(own.keys()), line });
        }
      } else if (kind === "start") {
        const reply = await send("START");
        if (reply.status !== "Ok") unexpected("START", reply);
        model.begin();
      } else if (kind === "end") {
        await endNestedLevel(model, 0.6);
      } else if (kind === "fail") {
        // A malformed request fails the level (PROTOCOL §4): what follows answers ABORTED, without effect,
        // until ROLLBACK ends the level, or COMMIT discards the whole transaction.
        const bad = await send(pick(rng, ["PUT", "GET", `DEL ${key} extra`]));
        if (bad.code !== "BAD_REQUEST") unexpected("(malformed)", bad);
        const put = putLine(rng, key, `c${id}t${t}o${o}x`);
        run.valueOwner.set(put.value, unit);
        for (const line of [put.line, `GET ${keyArg(rng, key)}`, keysLine(rng, pick(rng, PREFIXES)), "START"]) {
          if (rng() < 0.5) continue;
          const reply = await send(line);
          if (reply.code !== "ABORTED") unexpected(line, reply);
        }
        if (model.depth > 1) {
          const reply = await send("ROLLBACK");
          if (reply.status !== "Ok") unexpected("ROLLBACK", reply);
          model.rollbackNested();
        } else {
          const reply = await send("COMMIT");
          if (reply.code !== "ABORTED") unexpected("COMMIT", reply);
          unit.outcome = "aborted";
          break;
        }
      } else if (kind === "drop") {
        // The connection closes with the transaction open: nothing of it is applied.
        client.close();
        client = await LineClient.connect(port);
        unit.steps.push({ line: "(connection closed)", reply: "" });
        unit.outcome = "rolledback";
        break;
      }
    }
    if (unit.outcome !== "pending") continue;
    while (model.depth > 1) await endNestedLevel(model, 0.7);
    const net = model.levels[0]!;
    if (net.size > 0 && ![...net.values()].some((v) => v !== null)) {
      // Only deletes: a blind PUT of a key of this connection's own names the journal record.
      const marker = `c${id}t${t}m`;
      run.valueOwner.set(marker, unit);
      const line = `PUT m${id} ${marker}`;
      const reply = await send(line);
      if (reply.status !== "Ok") unexpected(line, reply);
      model.write(`m${id}`, marker);
    }
    unit.writes = new Map(net);
    if (rng() < 0.1) {
      const reply = await send("ROLLBACK");
      if (reply.status !== "Ok") unexpected("ROLLBACK", reply);
      unit.outcome = "rolledback";
    } else {
      const reply = await send("COMMIT");
      unit.commit = last;
      if (reply.status === "Ok") unit.outcome = "committed";
      else if (reply.code === "CONFLICT") unit.outcome = "conflict";
      else {
        unexpected("COMMIT", reply);
        unit.outcome = "rolledback";
      }
    }
  }
  client.close();
}

/**
 * The churn connection: batches of 50 PUTs and DELs outside transactions over
 * many keys, each batch sent in one write, so that the store's map grows, rehashes,
 * moves and sweeps records (lib/compact-map.ts) while the transactions run.
 */
async function runChurn(port: number, id: number, run: Run): Promise<void> {
  const rng = seededRandom((SEED ^ Math.imul(id + 1, 0x9e3779b1)) | 0);
  const client = await LineClient.connect(port);
  const conn: Conn = { id, units: [] };
  run.conns[id] = conn;
  for (let b = 0; b < CHURN_BATCHES; b++) {
    // Spread over the run: each batch once the transaction connections have done their next share.
    await untilProgress(run, Math.floor((b * CONNS * TXS) / CHURN_BATCHES));
    const batch: { unit: Unit; key: string; del: boolean }[] = [];
    const lines: string[] = [];
    for (let i = 0; i < 50; i++) {
      const key = `z${Math.floor(rng() * CHURN_KEYS)}`;
      const unit: Unit = { conn: id, index: b * 50 + i, auto: true, steps: [], reads: [], writes: new Map(), outcome: "committed", commit: null, seq: 0 };
      conn.units.push(unit);
      const del = rng() < 0.3;
      if (del) {
        lines.push(`DEL ${key}`);
      } else {
        const put = putLine(rng, key, `c${id}t${unit.index}o0`);
        run.valueOwner.set(put.value, unit);
        unit.writes.set(key, put.value);
        lines.push(put.line);
      }
      batch.push({ unit, key, del });
    }
    const ts = ++clock;
    client.write(lines.map((l) => l + "\n").join(""));
    for (let i = 0; i < batch.length; i++) {
      const { unit, key, del } = batch[i]!;
      const text = await client.readLine(REPLY_WAIT_MS);
      const span = { ts, tr: ++clock };
      unit.steps.push({ line: lines[i]!, reply: text });
      const reply = JSON.parse(text) as { status: string; result?: { value: unknown }; code?: string };
      if (!del) {
        if (reply.status !== "Ok") run.problems.push(`churn ${lines[i]}: ${text}`);
        unit.commit = span;
      } else if (reply.status === "Ok") {
        const value = canonical(reply.result!.value);
        unit.writes.set(key, null);
        run.autoDeletes.set(`${key}\0${value}`, unit);
        unit.commit = span;
      } else if (reply.code === "NOT_FOUND") {
        unit.reads.push({ kind: "get", key, value: null, line: lines[i]!, ...span });
      } else run.problems.push(`churn ${lines[i]}: ${text}`);
    }
  }
  client.close();
}

interface JournalRecord {
  readonly seq: number;
  readonly ops: readonly (readonly [string, Value | null])[];
  readonly file: string;
}

/** Hard-links every journal generation beside dataPath into keptDir (once each): a compaction deletes them. */
function keepJournals(dataPath: string, keptDir: string): void {
  const prefix = `${basename(dataPath)}.journal.`;
  for (const name of readdirSync(dirname(dataPath))) {
    if (name.startsWith(prefix) && !existsSync(join(keptDir, name))) linkSync(join(dirname(dataPath), name), join(keptDir, name));
  }
}

/** Every record of every journal generation of dataPath's name in dir, in generation order. */
function readJournal(dir: string, dataPath: string): JournalRecord[] {
  const prefix = `${basename(dataPath)}.journal.`;
  const files = readdirSync(dir)
    .filter((name) => name.startsWith(prefix) && /^\d+$/.test(name.slice(prefix.length)))
    .sort((a, b) => Number(a.slice(prefix.length)) - Number(b.slice(prefix.length)));
  const records: JournalRecord[] = [];
  for (const file of files) {
    const text = readFileSync(join(dir, file), "utf8");
    for (const line of text.split("\n")) {
      if (line === "") continue;
      const parsed = JSON.parse(line) as { seq: number; ops: unknown[][] };
      const ops = parsed.ops.map((op) => [op[0] as string, op.length === 1 ? null : canonical(op[1])] as const);
      records.push({ seq: parsed.seq, ops, file });
    }
  }
  return records;
}

/** The committed state after each seq, as each key's changes. */
class History {
  /** key → [seq, value after it (null: deleted), created or deleted], ascending seq; a key starts absent at seq 0. */
  private readonly changes = new Map<string, [number, Value | null, boolean][]>();
  readonly current = new Map<string, Value>();
  seq = 0;

  /** Applies one commit (a delete of an absent key changes nothing). */
  apply(seq: number, ops: readonly (readonly [string, Value | null])[]): void {
    this.seq = seq;
    for (const [key, value] of ops) {
      const existed = this.current.has(key);
      if (value === null && !existed) continue;
      if (value === null) this.current.delete(key);
      else this.current.set(key, value);
      let list = this.changes.get(key);
      if (!list) this.changes.set(key, (list = []));
      list.push([seq, value, value === null || !existed]);
    }
  }

  valueAt(key: string, seq: number): Value | null {
    const list = this.changes.get(key);
    if (!list) return null;
    let lo = 0;
    let hi = list.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid]![0] <= seq) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found < 0 ? null : list[found]![1];
  }

  /** Every key ever written under each prefix asked for (once all commits are applied). */
  private readonly underPrefix = new Map<string, string[]>();

  private keysUnder(prefix: string): string[] {
    let keys = this.underPrefix.get(prefix);
    if (!keys) this.underPrefix.set(prefix, (keys = [...this.changes.keys()].filter((k) => k.startsWith(prefix))));
    return keys;
  }

  keysAt(prefix: string, seq: number, exempt: ReadonlySet<string>): string[] {
    const keys: string[] = [];
    for (const key of this.keysUnder(prefix)) {
      if (!exempt.has(key) && this.valueAt(key, seq) !== null) keys.push(key);
    }
    return keys.sort();
  }

  /** True when the store answered read this way at seq. */
  matches(read: StoreRead, seq: number): boolean {
    if (read.kind === "get") return this.valueAt(read.key, seq) === read.value;
    return this.keysAt(read.prefix, seq, read.exempt).join("\0") === read.keys.join("\0");
  }

  /**
   * The first seq in (from, to] that changed what read looked at, or 0: its
   * key, or a key under its prefix that its own writes did not answer for.
   * For a KEYS read, `names` counts only creations and deletions (what the
   * answer showed); else a new value of a listed key counts too.
   */
  changeIn(read: StoreRead, from: number, to: number, names = false): number {
    let first = 0;
    const onlyNames = names && read.kind === "keys";
    const consider = (key: string) => {
      for (const [seq, , membership] of this.changes.get(key) ?? []) {
        if (seq > from && seq <= to && (first === 0 || seq < first) && (membership || !onlyNames)) first = seq;
      }
    };
    if (read.kind === "get") consider(read.key);
    else for (const key of this.keysUnder(read.prefix)) if (!read.exempt.has(key)) consider(key);
    return first;
  }

  describe(read: StoreRead, seq: number): string {
    return read.kind === "get"
      ? JSON.stringify(this.valueAt(read.key, seq))
      : JSON.stringify(this.keysAt(read.prefix, seq, read.exempt));
  }
}

function describeRead(read: StoreRead): string {
  return read.kind === "get"
    ? `${read.line} saw ${JSON.stringify(read.value)}`
    : `${read.line} saw ${JSON.stringify(read.keys)} (besides its own ${JSON.stringify([...read.exempt])})`;
}

function transcript(unit: Unit): string {
  return unit.steps.map((s) => `      ${s.line}  ->  ${s.reply}`).join("\n");
}

/** Checks the run against the journal; returns the violations found. */
function check(run: Run, records: JournalRecord[], serverSeq: number): { problems: string[]; history: History } {
  const problems = [...run.problems];
  const history = new History();
  const unitName = (u: Unit) => `conn ${u.conn} ${u.auto ? "request" : "tx"} ${u.index}`;
  const flag = (u: Unit, what: string) => problems.push(`${unitName(u)}: ${what}\n${transcript(u)}`);

  // 1. The journal: seqs 1..N, each record one Ok commit with exactly its net writes.
  records.forEach((rec, i) => {
    if (rec.seq !== i + 1) problems.push(`journal: record ${i + 1} has seq ${rec.seq} (${rec.file})`);
  });
  const n = records.length;
  if (n !== serverSeq) problems.push(`journal holds ${n} records, the server reports commit_seq ${serverSeq}`);
  for (const rec of records) {
    const owners = new Set<Unit>();
    let unknown = false;
    for (const [, value] of rec.ops) {
      if (value === null) continue;
      const owner = run.valueOwner.get(value);
      if (owner) owners.add(owner);
      else unknown = true;
    }
    if (owners.size === 0 && !unknown && rec.ops.length === 1) {
      const [key] = rec.ops[0]!;
      const before = history.current.get(key);
      const owner = before === undefined ? undefined : run.autoDeletes.get(`${key}\0${before}`);
      if (owner) owners.add(owner);
    }
    if (unknown || owners.size !== 1) {
      problems.push(`journal seq ${rec.seq}: ${JSON.stringify(rec.ops)} is not the commit of one request (${owners.size} owners${unknown ? ", a value nobody wrote" : ""})`);
    } else {
      const owner = [...owners][0]!;
      if (owner.seq !== 0) flag(owner, `is in the journal twice (seq ${owner.seq} and ${rec.seq})`);
      else owner.seq = rec.seq;
      if (owner.outcome !== "committed") flag(owner, `answered ${owner.outcome} but its writes are in the journal at seq ${rec.seq}`);
      const expected = [...owner.writes].sort().map((op) => JSON.stringify(op)).join(",");
      const actual = [...rec.ops].sort().map((op) => JSON.stringify(op)).join(",");
      if (expected !== actual) flag(owner, `journal seq ${rec.seq} holds ${actual}, its net writes were ${expected}`);
    }
    history.apply(rec.seq, rec.ops);
  }
  for (const conn of run.conns) {
    for (const unit of conn.units) {
      if (unit.outcome === "committed" && unit.writes.size > 0 && unit.seq === 0) flag(unit, `committed writes ${JSON.stringify([...unit.writes])} are not in the journal`);
    }
  }

  // 2. Every request on the commit order: the window [lo, hi] of seqs each may have seen (a write: the seq
  // before its own). A request whose reply was read before another was sent ran first. Only reads of the
  // store and COMMITs (and writes outside transactions) are placed: other requests add nothing.
  interface Placed {
    readonly span: Span;
    readonly read: StoreRead | null;
    readonly unit: Unit;
    lo: number;
    hi: number;
  }
  const placed: Placed[] = [];
  const commitOf = new Map<Unit, Placed>();
  const readOf = new Map<StoreRead, Placed>();
  for (const conn of run.conns) {
    for (const unit of conn.units) {
      for (const read of unit.reads) {
        const p: Placed = { span: read, read, unit, lo: 0, hi: n };
        placed.push(p);
        readOf.set(read, p);
      }
      if (unit.commit) {
        const p: Placed = { span: unit.commit, read: null, unit, lo: 0, hi: n };
        placed.push(p);
        commitOf.set(unit, p);
      }
    }
  }
  const written = (p: Placed) => (p.read === null && p.unit.seq > 0 ? p.unit.seq : 0);
  const bySent = [...placed].sort((a, b) => a.span.ts - b.span.ts);
  const byAnswered = [...placed].sort((a, b) => a.span.tr - b.span.tr);
  let placeable = true;
  // Forward: at least the state after everything answered before it was sent.
  let floor = 0;
  let j = 0;
  for (const p of bySent) {
    for (; j < byAnswered.length && byAnswered[j]!.span.tr < p.span.ts; j++) {
      const q = byAnswered[j]!;
      floor = Math.max(floor, written(q) || q.lo);
    }
    const seq = written(p);
    if (seq > 0) {
      if (seq - 1 < floor) {
        flag(p.unit, `committed at seq ${seq}, but requests answered before its COMMIT was sent saw seq ${floor} already`);
        placeable = false;
      }
      p.lo = seq - 1;
    } else if (p.read) {
      let s = floor;
      while (s <= n && !history.matches(p.read, s)) s++;
      if (s > n) {
        flag(p.unit, `${describeRead(p.read)}: no state at or after seq ${floor} (what requests answered before it was sent saw) has that`);
        placeable = false;
      }
      p.lo = s;
    } else p.lo = floor;
  }
  // Backward: at most the state before everything sent after it was answered.
  let ceiling = n;
  j = bySent.length - 1;
  for (let i = byAnswered.length - 1; i >= 0; i--) {
    const p = byAnswered[i]!;
    for (; j >= 0 && bySent[j]!.span.ts > p.span.tr; j--) ceiling = Math.min(ceiling, bySent[j]!.hi);
    const seq = written(p);
    if (seq > 0) {
      if (seq > ceiling) {
        flag(p.unit, `committed at seq ${seq}, but requests sent after its COMMIT was answered saw seq ${ceiling}`);
        placeable = false;
      }
      p.hi = seq - 1;
    } else if (p.read) {
      let s = ceiling;
      while (s >= 0 && !history.matches(p.read, s)) s--;
      if (s < p.lo) {
        flag(p.unit, `${describeRead(p.read)}: no state between seq ${p.lo} and ${ceiling} (what requests around it saw) has that`);
        placeable = false;
      }
      p.hi = s;
    } else p.hi = ceiling;
  }
  if (!placeable) return { problems, history };

  // 3. Transactions against the commit order.
  for (const conn of run.conns) {
    for (const unit of conn.units) {
      const commit = commitOf.get(unit);
      if (unit.auto || !commit) continue;
      if (unit.outcome === "committed" && unit.seq > 0) {
        const at = unit.seq - 1;
        for (const read of unit.reads) {
          if (!history.matches(read, at)) {
            flag(unit, `committed at seq ${unit.seq}, but ${describeRead(read)} where the state before its commit has ${history.describe(read, at)}`);
          } else {
            const changed = history.changeIn(read, readOf.get(read)!.hi, at, true);
            if (changed) flag(unit, `committed at seq ${unit.seq}, but after ${describeRead(read)}, seq ${changed} changed it: that must conflict`);
          }
        }
      } else if (unit.outcome === "committed" && unit.reads.length > 0) {
        const { lo: from, hi: to } = commit;
        let s = from;
        while (s <= to && !unit.reads.every((read) => history.matches(read, s))) s++;
        if (s > to) flag(unit, `committed without writes, but no state in seqs ${from}..${to} (its COMMIT's window) matches all its reads`);
        for (const read of unit.reads) {
          const changed = history.changeIn(read, readOf.get(read)!.hi, from, true);
          if (changed) flag(unit, `committed, but after ${describeRead(read)}, seq ${changed} changed it before the COMMIT (seq >= ${from}): that must conflict`);
        }
      } else if (unit.outcome === "conflict") {
        const to = commit.hi;
        const wholeStore = readPastLimit(unit.reads);
        const justified =
          unit.reads.some((read) => history.changeIn(read, readOf.get(read)!.lo, to) !== 0) ||
          (wholeStore !== undefined && to > readOf.get(wholeStore)!.lo);
        if (!justified) {
          const windows = unit.reads.map((read) => `${describeRead(read)} (read at seq >= ${readOf.get(read)!.lo})`);
          flag(unit, `CONFLICT, but nothing it read from the store was changed between its reads and its COMMIT (seq <= ${to}): ${windows.length === 0 ? "it read nothing from the store" : windows.join("; ")}`);
        }
      }
    }
  }
  return { problems, history };
}

/**
 * The read after which the server may watch the whole store for this
 * transaction: its (READ_LIMIT+1)-th distinct key or prefix (undefined: it
 * read no more than READ_LIMIT). The server switches then, or later for
 * plain-form reads still in its table of deferred reads.
 */
function readPastLimit(reads: readonly StoreRead[]): StoreRead | undefined {
  if (READ_LIMIT === 0) return undefined;
  const distinct = new Set<string>();
  for (const read of reads) {
    distinct.add(read.kind === "get" ? `key ${read.key}` : `prefix ${read.prefix}`);
    if (distinct.size > READ_LIMIT) return read;
  }
  return undefined;
}

/** The server's whole state, by KEYS and a GET of each key. */
async function dumpState(port: number): Promise<Map<string, Value>> {
  const client = await LineClient.connect(port);
  try {
    const keys = (await client.request("KEYS")).result as string[];
    const state = new Map<string, Value>();
    for (let i = 0; i < keys.length; i += 500) {
      const chunk = keys.slice(i, i + 500);
      const replies = await client.pipeline(chunk.map((key) => `GET ${JSON.stringify({ key })}`));
      replies.forEach((reply, j) => {
        if (reply.status !== "Ok") throw new Error(`GET ${chunk[j]} of a listed key answered ${JSON.stringify(reply)}`);
        state.set(chunk[j]!, canonical((reply.result as { value: unknown }).value));
      });
    }
    return state;
  } finally {
    client.close();
  }
}

function sameState(a: ReadonlyMap<string, Value>, b: ReadonlyMap<string, Value>): string | null {
  const keys = [...new Set([...a.keys(), ...b.keys()])].sort();
  const diffs = keys.filter((k) => a.get(k) !== b.get(k)).map((k) => `${k}: ${JSON.stringify(a.get(k) ?? null)} vs ${JSON.stringify(b.get(k) ?? null)}`);
  return diffs.length === 0 ? null : diffs.join("; ");
}

/** SAVEs spread over the run, each after keeping the journal generations it may delete. */
async function runSaves(port: number, dataPath: string, keptDir: string, run: Run): Promise<void> {
  const client = await LineClient.connect(port);
  for (let k = 1; k <= SAVES; k++) {
    await untilProgress(run, Math.floor((k * CONNS * TXS) / (SAVES + 1)));
    keepJournals(dataPath, keptDir);
    client.write("SAVE\n");
    const reply = JSON.parse(await client.readLine(REPLY_WAIT_MS)) as { status: string };
    if (reply.status !== "Ok") run.problems.push(`SAVE ${k} answered ${JSON.stringify(reply)}`);
  }
  client.close();
}

/** PREFILL keys written before the run, in pipelined batches outside transactions. */
async function prefill(port: number, id: number, run: Run): Promise<void> {
  const client = await LineClient.connect(port);
  const conn: Conn = { id, units: [] };
  run.conns[id] = conn;
  for (let i = 0; i < PREFILL; i += 1000) {
    const lines: string[] = [];
    const units: Unit[] = [];
    for (let k = i; k < Math.min(PREFILL, i + 1000); k++) {
      const value = `c${id}t${k}o0`;
      const unit: Unit = { conn: id, index: k, auto: true, steps: [], reads: [], writes: new Map([[`y${k}`, value]]), outcome: "committed", commit: null, seq: 0 };
      conn.units.push(unit);
      units.push(unit);
      run.valueOwner.set(value, unit);
      lines.push(`PUT y${k} ${value}`);
    }
    const ts = ++clock;
    const replies = await client.pipeline(lines);
    const tr = ++clock;
    replies.forEach((reply, j) => {
      if (reply.status !== "Ok") run.problems.push(`prefill ${lines[j]}: ${JSON.stringify(reply)}`);
      units[j]!.commit = { ts, tr };
    });
  }
  client.close();
}

test(`${CONNS} connections × ${TXS} random transactions over ${KEY_COUNT} keys are serializable in journal order (seed from TXKV_SER_SEED)`, async () => {
  const dir = tempDir();
  const dataPath = join(dir.path, "data.json");
  const args = ["--data", dataPath, "--fsync", FSYNC, "--compact-min-bytes", String(2 ** 40), "--max-transaction-bytes", "1000000"];
  if (READ_LIMIT > 0) args.push("--max-transaction-reads", String(READ_LIMIT));
  const servers: ServerProcess[] = [];
  try {
    const phases: string[] = [];
    let phaseStart = performance.now();
    const phase = (name: string) => {
      phases.push(`${name} ${Math.round(performance.now() - phaseStart)} ms`);
      phaseStart = performance.now();
    };
    const keptDir = join(dir.path, "kept-journals");
    mkdirSync(keptDir);
    const server = await spawnServer(args);
    servers.push(server);
    const run: Run = { conns: [], valueOwner: new Map(), autoDeletes: new Map(), problems: [], progress: 0, progressWaiters: [] };
    if (PREFILL > 0) await prefill(server.port, CONNS + 1, run);
    await Promise.all([
      ...Array.from({ length: CONNS }, (_, id) => runConnection(server.port, id, run)),
      ...(CHURN_KEYS > 0 && CHURN_BATCHES > 0 ? [runChurn(server.port, CONNS, run)] : []),
      ...(SAVES > 0 ? [runSaves(server.port, dataPath, keptDir, run)] : []),
    ]);
    run.conns.splice(0, run.conns.length, ...run.conns.filter((c) => c !== undefined));
    phase("run");

    // Every client is done: the server's state and commit count, then the journal (complete under --fsync always).
    const final = await dumpState(server.port);
    const statsClient = await LineClient.connect(server.port);
    const stats = await statsClient.request("STATS");
    statsClient.close();
    const serverSeq = (stats.result as { stats: { commit_seq: number } }).stats.commit_seq;
    keepJournals(dataPath, keptDir);
    const records = readJournal(keptDir, dataPath);
    phase("final state and journal");
    const { problems, history } = check(run, records, serverSeq);
    phase("check");
    const finalDiff = sameState(final, history.current);
    if (finalDiff) problems.push(`final state (server vs journal replay): ${finalDiff}`);

    // A crash (the last SAVE's snapshot plus the journal after it), then a clean stop (its final snapshot):
    // each restart loads the same state.
    server.proc.kill("SIGKILL");
    await server.exited;
    const recovered = await spawnServer(args);
    servers.push(recovered);
    const recoveredDiff = sameState(await dumpState(recovered.port), history.current);
    if (recoveredDiff) problems.push(`state after kill -9 and restart (reloaded vs journal replay): ${recoveredDiff}`);
    expect(await recovered.kill("SIGTERM")).toBe(0);
    const restarted = await spawnServer(args);
    servers.push(restarted);
    const reloadDiff = sameState(await dumpState(restarted.port), history.current);
    if (reloadDiff) problems.push(`state after a clean stop and restart (reloaded vs journal replay): ${reloadDiff}`);
    phase("restarts");

    const units = run.conns.flatMap((c) => c.units);
    const count = (outcome: Unit["outcome"]) => units.filter((u) => !u.auto && u.outcome === outcome).length;
    if (problems.length > 0) {
      throw new Error(
        `${problems.length} violation(s), seed ${SEED} (TXKV_SER_SEED=${SEED} TXKV_SER_CONNS=${CONNS} TXKV_SER_TXS=${TXS} TXKV_SER_KEYS=${KEY_COUNT} TXKV_SER_FSYNC=${FSYNC} TXKV_SER_CHURN_KEYS=${CHURN_KEYS} TXKV_SER_CHURN_BATCHES=${CHURN_BATCHES} TXKV_SER_SAVES=${SAVES} TXKV_SER_PREFILL=${PREFILL} TXKV_SER_READ_LIMIT=${READ_LIMIT}):\n` +
          problems.slice(0, 20).join("\n"),
      );
    }
    // The run raced for real: some transactions conflicted, some committed writes.
    expect(count("conflict")).toBeGreaterThan(0);
    // Some transactions passed the read limit (so the whole-store watch was checked), and some did not
    // (so their CONFLICTs were checked key by key).
    const pastLimit = (stats.result as { transactions: { read_limit_reached: number } }).transactions.read_limit_reached;
    if (READ_LIMIT > 0) expect(pastLimit).toBeGreaterThan(0);
    expect(units.filter((u) => !u.auto && u.outcome === "conflict" && readPastLimit(u.reads) === undefined).length).toBeGreaterThan(0);
    expect(units.filter((u) => !u.auto && u.seq > 0).length).toBeGreaterThan(0);
    if (process.env.TXKV_SER_VERBOSE) {
      console.log(`seed ${SEED}: ${records.length} commits in ${new Set(records.map((r) => r.file)).size} journal file(s); transactions committed ${count("committed")}, conflicted ${count("conflict")}, rolled back ${count("rolledback")}, aborted ${count("aborted")}; ${pastLimit} past the read limit; ${phases.join(", ")}`);
    }
  } catch (err) {
    console.error(`serializability test failed with seed ${SEED} (rerun with TXKV_SER_SEED=${SEED})`);
    throw err;
  } finally {
    for (const s of servers) {
      s.proc.kill("SIGKILL");
      await s.exited;
    }
    dir.cleanup();
  }
}, 120_000);
