/**
 * Microbenchmark of the request path without sockets, as the server walks
 * it: framing → the fast path for plain GET/PUT outside transactions (bytes
 * to reply bytes), else parse → execute → reply text, all into one
 * ByteBuffer; for pipelined GET/PUT batches and transactions like kvload's.
 * Run: bun run bench/hotpath.ts. Reports ns per request (compare before/after
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

type Kind = "get" | "mix" | "tx";

function batch(kind: Kind, n: number, seed: number): Uint8Array {
  let text = "";
  for (let i = 0; i < n; i++) {
    const key = `key:${String((seed * 7919 + i * 104729) % 10000).padStart(8, "0")}`;
    const key2 = `key:${String((seed * 7907 + i * 7) % 10000).padStart(8, "0")}`;
    if (kind === "tx") text += `START\nGET ${key}\nPUT ${key2} ${value}\nCOMMIT\n`;
    else text += kind === "get" || i % 5 !== 0 ? `GET ${key}\n` : `PUT ${key} ${value}\n`;
  }
  return new TextEncoder().encode(text);
}

function run(kind: Kind, pipeline: number, rounds: number): number {
  const batches = Array.from({ length: 64 }, (_, i) => batch(kind, pipeline, i));
  const framer = new LineFramer(1024);
  const session = new Session(false);
  const out = new ByteBuffer();
  const plain = newPlainRequest();
  let bytes = 0;
  const start = Bun.nanoseconds();
  for (let r = 0; r < rounds; r++) {
    framer.push(batches[r & 63]!);
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
    bytes += out.length;
    framer.retain();
  }
  const ns = Bun.nanoseconds() - start;
  if (bytes === 0) throw new Error("no output");
  return ns / (rounds * pipeline);
}

for (const [kind, pipeline] of [["get", 1], ["get", 16], ["mix", 16], ["tx", 1]] as const) {
  run(kind, pipeline, 20000); // warm up
  const results = [0, 1, 2].map(() => run(kind, pipeline, Math.floor(400000 / pipeline)));
  const unit = kind === "tx" ? "transaction (START GET PUT COMMIT)" : "request";
  console.log(`${kind} pipeline ${pipeline}: ${Math.min(...results).toFixed(0)} ns/${unit} (best of 3)`);
}
