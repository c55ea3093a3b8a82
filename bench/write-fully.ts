/**
 * Socket writes for the benchmark clients and servers that never drop bytes:
 * `socket.write()` returns how many bytes it accepted, and the rest is kept
 * here and sent when the socket drains (wire `flushPending` to the `drain`
 * handler). Not part of txkv, whose server and client queue their own output.
 */
import type { Socket } from "bun";

const pending = new WeakMap<object, Uint8Array>();

/** Writes all of data: now what the socket accepts, the rest (in order) on drain. */
export function writeFully<Data>(socket: Socket<Data>, data: string | Uint8Array): void {
  const bytes = typeof data === "string" ? Buffer.from(data) : data;
  const queued = pending.get(socket);
  if (queued !== undefined) {
    pending.set(socket, Buffer.concat([queued, bytes]));
    return;
  }
  const accepted = socket.write(bytes);
  if (accepted < 0) return; // closed
  if (accepted < bytes.length) pending.set(socket, Buffer.from(bytes.subarray(accepted)));
}

/** The drain handler: sends what writeFully kept back. */
export function flushPending<Data>(socket: Socket<Data>): void {
  const queued = pending.get(socket);
  if (queued === undefined) return;
  pending.delete(socket);
  writeFully(socket, queued);
}
