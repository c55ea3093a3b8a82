/**
 * Microbenchmark of the request path without sockets, as the server walks
 * it: framing → the fast path for plain GET/PUT outside transactions (bytes
 * to reply bytes), else parse → execute → reply text, all into one
 * ByteBuffer; for pipelined GET/PUT batches and transactions like kvload's
 * (one batch each), and for transactions sent one request per round trip by
 * 50 connections at once (each of their requests a batch of its own, the
 * connections taking turns, so that commits fall between other
 * transactions' reads). Run: bun run bench/hotpath.ts. Reports ns per request (compare before/after
 * a change in one run on one machine; absolute numbers mean little).
 */
import { MemoryOnlyLog } from "../lib/commit-log.ts";
import { commandFromFrame, newPlainRequest, noArgCommandOf, parsePlainRequest } from "../lib/commands.ts";
import { Executor } from "../lib/execute.ts";
import { LINE, LineFramer } from "../lib/framing.ts";
import { ByteBuffer } from "../lib/byte-buffer.ts";
import { Session } from "../lib/session.ts";
import { ServerStats } from "../lib/stats.ts";
import { Store } from "../lib/store.ts";

const store = new Store();
const executor = new Executor(store, new MemoryOnlyLog(), new ServerStats(), {
  maxTransactionBytes: 1024,
  password: undefined,
  version: "bench",
});
const value = "x".repeat(32);
for (let i = 0; i < 10000; i++) store.put(`key:${String(i).padStart(8, "0")}`, JSON.stringify(value));

/**
 * The transactions measured, each sent as one batch, given its two keys a and b:
 * tx is kvload's (START, GET, PUT, COMMIT); the others are shapes a user's
 * transactions take (a transfer between two keys, reading back its own write).
 */
const TRANSACTIONS = {
  tx: (a: string, b: string) => `START\nGET ${a}\nPUT ${b} ${value}\nCOMMIT\n`,
  "tx-put-first": (a: string, b: string) => `START\nPUT ${b} ${value}\nGET ${a}\nCOMMIT\n`,
  "tx-two-puts": (a: string, b: string) => `START\nGET ${a}\nGET ${b}\nPUT ${a} ${value}\nPUT ${b} ${value}\nCOMMIT\n`,
  "tx-read-own-write": (a: string, b: string) => `START\nGET ${a}\nPUT ${b} ${value}\nGET ${b}\nCOMMIT\n`,
};
type TransactionKind = keyof typeof TRANSACTIONS;
type Kind = "get" | "put" | "mix" | TransactionKind;

function batch(kind: Kind, n: number, seed: number): Uint8Array {
  let text = "";
  for (let i = 0; i < n; i++) {
    const key = `key:${String((seed * 7919 + i * 104729) % 10000).padStart(8, "0")}`;
    const key2 = `key:${String((seed * 7907 + i * 7) % 10000).padStart(8, "0")}`;
    if (kind in TRANSACTIONS) text += TRANSACTIONS[kind as TransactionKind](key, key2);
    else if (kind === "put") text += `PUT ${key} ${value}\n`;
    else text += kind === "get" || i % 5 !== 0 ? `GET ${key}\n` : `PUT ${key} ${value}\n`;
  }
  return new TextEncoder().encode(text);
}

const out = new ByteBuffer();
const plain = newPlainRequest();

/** One connection's state as the server keeps it. */
interface Connection {
  framer: LineFramer;
  session: Session;
}

function connection(): Connection {
  return { framer: new LineFramer(1024), session: new Session(false) };
}

/** Runs one data event's bytes as the server does; returns the reply bytes made. */
function serve(conn: Connection, chunk: Uint8Array): number {
  const { framer, session } = conn;
  framer.push(chunk);
  out.clear();
  for (let found = framer.nextLine(); found !== null; found = framer.nextLine()) {
    const src = framer.bytes;
    if (found === LINE && parsePlainRequest(src, framer.lineStart, framer.lineEnd, plain)) {
      if (executor.executePlain(plain, src, session, out)) continue;
    }
    const cmd =
      found === LINE
        ? (noArgCommandOf(src, framer.lineStart, framer.lineEnd) ?? commandFromFrame(framer.lineText(), 1024))
        : commandFromFrame(found, 1024);
    out.text(executor.execute(cmd, session) as string);
  }
  framer.retain();
  return out.length;
}

function run(kind: Kind, pipeline: number, rounds: number): number {
  const batches = Array.from({ length: 64 }, (_, i) => batch(kind, pipeline, i));
  const conn = connection();
  let bytes = 0;
  const start = Bun.nanoseconds();
  for (let r = 0; r < rounds; r++) bytes += serve(conn, batches[r & 63]!);
  const ns = Bun.nanoseconds() - start;
  if (bytes === 0) throw new Error("no output");
  return ns / (rounds * pipeline);
}

const INTERLEAVED_CONNECTIONS = 50;

/** Transactions of 50 connections, one request per data event, the connections taking turns at each step. */
function runInterleaved(rounds: number): number {
  const steps = Array.from({ length: 64 }, (_, i) => {
    const text = new TextDecoder().decode(batch("tx", 1, i));
    return text.split(/(?<=\n)/).map((line) => new TextEncoder().encode(line));
  });
  const conns = Array.from({ length: INTERLEAVED_CONNECTIONS }, connection);
  let bytes = 0;
  const start = Bun.nanoseconds();
  for (let r = 0; r < rounds; r++) {
    for (let step = 0; step < 4; step++) {
      for (let c = 0; c < conns.length; c++) bytes += serve(conns[c]!, steps[(r * 13 + c) & 63]![step]!);
    }
  }
  const ns = Bun.nanoseconds() - start;
  if (bytes === 0) throw new Error("no output");
  return ns / (rounds * conns.length);
}

const kinds: [Kind, number][] = [["get", 1], ["get", 16], ["put", 1], ["mix", 16]];
for (const kind of Object.keys(TRANSACTIONS) as TransactionKind[]) kinds.push([kind, 1]);
for (const [kind, pipeline] of kinds) {
  run(kind, pipeline, 20000); // warm up
  const results = [0, 1, 2].map(() => run(kind, pipeline, Math.floor(400000 / pipeline)));
  const unit = kind in TRANSACTIONS ? `transaction (${TRANSACTIONS[kind as TransactionKind]("a", "b").trim().replaceAll("\n", " ").replaceAll(` ${value}`, " v")})` : "request";
  console.log(`${kind} pipeline ${pipeline}: ${Math.min(...results).toFixed(0)} ns/${unit} (best of 3)`);
}
runInterleaved(400); // warm up
const interleaved = [0, 1, 2].map(() => runInterleaved(2000));
console.log(
  `tx, ${INTERLEAVED_CONNECTIONS} connections, one request per data event: ${Math.min(...interleaved).toFixed(0)} ns/transaction (best of 3)`,
);
