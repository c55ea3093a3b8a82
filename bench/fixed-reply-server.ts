/**
 * The fastest possible Bun server on txkv's framing: it answers every line
 * with one fixed reply and does nothing else (one write per data event, like
 * txkv). bench/compare.ts measures txkv against it. Not part of txkv.
 *
 * Run: bun run bench/fixed-reply-server.ts <port>
 */
import { flushPending, writeFully } from "./write-fully.ts";

const REPLY = Buffer.from('{"status":"Ok","result":{"key":"key:00000001","value":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}\n');
const LF = 10;

const listener = Bun.listen({
  hostname: "127.0.0.1",
  port: Number(process.argv[2] ?? 0),
  socket: {
    data(socket, chunk) {
      let lines = 0;
      for (let i = chunk.indexOf(LF); i !== -1; i = chunk.indexOf(LF, i + 1)) lines++;
      if (lines === 0) return;
      const out = Buffer.allocUnsafe(REPLY.length * lines);
      for (let i = 0; i < lines; i++) out.set(REPLY, i * REPLY.length);
      writeFully(socket, out);
    },
    drain: flushPending,
  },
});
process.stdout.write(`fixed-reply server listening on 127.0.0.1:${listener.port}\n`);
