/**
 * Acknowledging a client's bytes at once (Linux `TCP_QUICKACK`), the one
 * TCP option the server needs that Bun's sockets do not expose.
 *
 * Why: an unterminated request runs after a pause of `--partial-request-ms`
 * (10 ms by default, PROTOCOL §1). A client with Nagle's algorithm on (the
 * default for Python's and Node's sockets) that writes one request in two
 * pieces sends the second piece only once the first is acknowledged, and
 * once a connection has exchanged a request and a reply Linux delays that
 * acknowledgement by about 40 ms, hoping to send it with a reply. The pause
 * then ran the first piece as a request of its own. Asking for a quick ACK
 * when a read ends inside a line sends the acknowledgement now, so the rest
 * of the line comes a round trip later instead.
 *
 * Owns: that one `setsockopt` call, on the socket's fd (the C library is
 * opened by lib/libc.ts). Must not: be used for anything but this hint.
 * Where it cannot be made (not Linux, no C library loads) it does nothing:
 * such a request is then split as before, never refused.
 */
import { FFIType } from "bun:ffi";
import { openLibc } from "./libc.ts";

const IPPROTO_TCP = 6;
const TCP_QUICKACK = 12; // linux/tcp.h; the option exists on Linux only

const ON = new Int32Array([1]);

const libc =
  process.platform === "linux"
    ? openLibc({ setsockopt: { args: [FFIType.i32, FFIType.i32, FFIType.i32, FFIType.ptr, FFIType.u32], returns: FFIType.i32 } })
    : null;

/**
 * Asks the kernel to acknowledge what it received on this socket now
 * instead of delaying the ACK. Bun's sockets carry their descriptor as an
 * undocumented `fd` (TCP and TLS alike, checked on Bun 1.4.5); without one,
 * or on a failure (the socket just closed), nothing happens: it is a hint.
 */
export function acknowledgeNow(socket: object): void {
  if (libc === null) return;
  const fd = (socket as { fd?: unknown }).fd;
  if (typeof fd === "number" && fd >= 0) libc.symbols.setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, ON, 4);
}
