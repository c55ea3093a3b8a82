/**
 * The fastest possible Bun server on txkv's framing: it answers every line
 * with one fixed reply and does nothing else. bench/compare.ts measures txkv
 * against it. Not part of txkv.
 *
 * It writes as txkv does since BENCHMARKS item 30: each data event's replies
 * go into one buffer shared by all connections, and one `setImmediate` per
 * event-loop turn writes each connection's range of it (what the kernel does
 * not take is copied out by writeFully before the buffer is reused). A turn
 * whose replies would overflow the buffer is written early.
 *
 * Run: bun run bench/fixed-reply-server.ts <port>
 */
import type { Socket } from "bun";
import { flushPending, writeFully } from "./write-fully.ts";

const REPLY = Buffer.from('{"status":"Ok","result":{"key":"key:00000001","value":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}\n');
const LF = 10;
const TURN_BYTES = 1 << 20;

/** This turn's replies, of every connection, in the order their data events came. */
const turn = Buffer.allocUnsafe(TURN_BYTES);
let turnUsed = 0;
/** Each queued batch: its connection and its range of `turn`. */
const batches: { socket: Socket<undefined>; start: number; end: number }[] = [];
let flushArmed = false;

function writeTurn(): void {
  flushArmed = false;
  for (const { socket, start, end } of batches) writeFully(socket, turn.subarray(start, end));
  batches.length = 0;
  turnUsed = 0;
}

const listener = Bun.listen({
  hostname: "127.0.0.1",
  port: Number(process.argv[2] ?? 0),
  socket: {
    data(socket, chunk) {
      let lines = 0;
      for (let i = chunk.indexOf(LF); i !== -1; i = chunk.indexOf(LF, i + 1)) lines++;
      if (lines === 0) return;
      const bytes = REPLY.length * lines;
      if (turnUsed + bytes > TURN_BYTES) writeTurn();
      if (bytes > TURN_BYTES) {
        // Larger than a turn's buffer: a buffer of its own, written at once.
        const out = Buffer.allocUnsafe(bytes);
        for (let i = 0; i < lines; i++) out.set(REPLY, i * REPLY.length);
        writeFully(socket, out);
        return;
      }
      const start = turnUsed;
      for (let i = 0; i < lines; i++, turnUsed += REPLY.length) turn.set(REPLY, turnUsed);
      batches.push({ socket, start, end: turnUsed });
      if (!flushArmed) {
        flushArmed = true;
        setImmediate(writeTurn);
      }
    },
    drain: flushPending,
  },
});
process.stdout.write(`fixed-reply server listening on 127.0.0.1:${listener.port}\n`);
