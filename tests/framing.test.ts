import { describe, expect, test } from "bun:test";
import { HTTP_REQUEST, INVALID_UTF8, LineFramer, TOO_LARGE, startsHttpRequest, type Frame } from "../lib/framing.ts";

const enc = new TextEncoder();

function drain(framer: LineFramer): Frame[] {
  const out: Frame[] = [];
  for (let f = framer.next(); f !== null; f = framer.next()) out.push(f);
  return out;
}

function feed(framer: LineFramer, ...chunks: (string | Uint8Array)[]): Frame[] {
  const out: Frame[] = [];
  for (const chunk of chunks) {
    framer.push(typeof chunk === "string" ? enc.encode(chunk) : chunk);
    out.push(...drain(framer));
    framer.retain();
  }
  return out;
}

describe("LineFramer", () => {
  test("splits on LF and drops a CR before it", () => {
    expect(feed(new LineFramer(1024), "PUT a 1\r\nGET a\nPING\r\n")).toEqual(["PUT a 1", "GET a", "PING"]);
  });

  test("a request spanning chunks is joined, even a CRLF split between chunks", () => {
    expect(feed(new LineFramer(1024), "PU", "T a 1", "\r", "\nGET", " a\n")).toEqual(["PUT a 1", "GET a"]);
  });

  test("blank lines (empty, spaces, tabs) are not requests", () => {
    expect(feed(new LineFramer(1024), "\n  \n\t \r\nPING\n\n")).toEqual(["PING"]);
  });

  test("a line of exactly the limit passes; one byte more is TOO_LARGE and the next line is served", () => {
    const f = new LineFramer(10);
    expect(feed(f, "x".repeat(10) + "\r\n")).toEqual(["x".repeat(10)]);
    expect(feed(f, "y".repeat(11) + "\nPING\n")).toEqual([TOO_LARGE, "PING"]);
  });

  test("an unterminated first word that could still become POST or Host: is held from the pause rule; a decided one is not", () => {
    const held = (text: string) => {
      const f = new LineFramer(1024);
      feed(f, text);
      return f.partialMayBecomeHttpRequest();
    };
    for (const text of ["P", "po", "POS", " \tPo", "h", "HOS", "host"]) expect(held(text), text).toBe(true);
    for (const text of ["POST", "post\r", "Host:", "PU", "PING", "GET a", "   ", "POSTAL", "hostx"]) expect(held(text), text).toBe(false);
  });

  test("an unterminated request over the limit is answered at once and discarded up to its LF", () => {
    const f = new LineFramer(10);
    expect(feed(f, "z".repeat(12))).toEqual([TOO_LARGE]);
    expect(feed(f, "z".repeat(5000))).toEqual([]);
    expect(f.bufferedBytes).toBe(0);
    expect(feed(f, "zz\nGET a\n")).toEqual(["GET a"]);
  });

  test("holds at most about one limit of an incomplete request", () => {
    const f = new LineFramer(100);
    for (let i = 0; i < 1000; i++) feed(f, "a".repeat(50));
    expect(f.bufferedBytes).toBeLessThanOrEqual(101);
  });

  test("a long request arriving in many chunks is moved into a new buffer a few times in all, not at every chunk", () => {
    const f = new LineFramer(8 * 1024 * 1024);
    const chunk = enc.encode("x".repeat(4096));
    const buffers = new Set<ArrayBufferLike>();
    f.push(enc.encode("PUT k "));
    expect(drain(f)).toEqual([]);
    f.retain();
    for (let i = 0; i < 1000; i++) {
      f.push(chunk);
      expect(f.nextLine()).toBeNull();
      f.retain();
      buffers.add(f.bytes.buffer);
    }
    // Doubling from 256 bytes to 4 MB: 15 buffers, where copying at each chunk made 1000.
    expect(buffers.size).toBeLessThanOrEqual(16);
    expect(feed(f, "\nPING\n")).toEqual(["PUT k " + "x".repeat(4096 * 1000), "PING"]);
    // The room is let go once the request is read.
    expect(f.bytes.length).toBe(0);
  });

  test("a request growing to near the limit keeps about one limit of room, not the two doubling would reach", () => {
    // The room is 4,102 bytes after the first chunk; plain doubling goes 1,050,112 then 2,100,224, twice this limit.
    const limit = 1_060_352;
    const f = new LineFramer(limit);
    const chunk = enc.encode("x".repeat(4096));
    f.push(enc.encode("PUT k "));
    f.retain();
    let sent = 6;
    while (sent + chunk.length <= limit) {
      f.push(chunk);
      expect(f.nextLine()).toBeNull();
      f.retain();
      sent += chunk.length;
    }
    expect(f.bufferedBytes).toBe(sent);
    expect(f.bytes.buffer.byteLength).toBeLessThanOrEqual(limit + 512 * 1024);
    expect(feed(f, "\n")).toEqual(["PUT k " + "x".repeat(sent - 6)]);
  });

  test("between reads it keeps only about its leftover: reads ending mid-line, after a long request too, hold no read-sized room", () => {
    const f = new LineFramer(4 * 1024 * 1024);
    const heldAfterRetain = () => f.bytes.buffer.byteLength;
    // One long request, then pipelined 64 KiB reads of short lines, each read ending inside a line.
    expect(feed(f, "PUT big " + "x".repeat(1024 * 1024), "\n")).toHaveLength(1);
    const line = "PUT key:00000001 " + "v".repeat(80) + "\n"; // 98 bytes: 64 KiB reads end mid-line
    const stream = enc.encode(line.repeat(2000));
    let taken = 0;
    for (let at = 0; at < stream.length; at += 65536) {
      taken += feed(f, stream.subarray(at, at + 65536)).length;
      expect(f.bufferedBytes).toBeLessThan(line.length);
      expect(heldAfterRetain()).toBeLessThanOrEqual(4096);
    }
    expect(taken).toBe(2000);
  });

  test("invalid UTF-8 is reported for that line only", () => {
    const bad = new Uint8Array([0x47, 0x45, 0x54, 0x20, 0xff, 0xfe, 0x0a]);
    expect(feed(new LineFramer(1024), bad, "GET é\n")).toEqual([INVALID_UTF8, "GET é"]);
  });

  test("a lone continuation byte (0x80, the first byte that is not ASCII) is invalid UTF-8, alone or after ASCII", () => {
    expect(feed(new LineFramer(1024), new Uint8Array([0x80, 0x0a]), "PING\n")).toEqual([INVALID_UTF8, "PING"]);
    expect(feed(new LineFramer(1024), new Uint8Array([0x47, 0x45, 0x54, 0x20, 0x80, 0x0a]))).toEqual([INVALID_UTF8]);
  });

  test("a multi-byte character split across chunks decodes", () => {
    const bytes = enc.encode("PUT k ü\n");
    expect(feed(new LineFramer(1024), bytes.subarray(0, 7), bytes.subarray(7))).toEqual(["PUT k ü"]);
  });

  test("takePartial returns the unterminated request once, without a trailing CR", () => {
    const f = new LineFramer(1024);
    expect(feed(f, "GET a\nPUT k v\r")).toEqual(["GET a"]);
    expect(f.hasPartial()).toBe(true);
    expect(f.takePartial()).toBe("PUT k v");
    expect(f.hasPartial()).toBe(false);
    expect(f.takePartial()).toBeNull();
  });

  test("takePartial of a blank or discarded request gives nothing", () => {
    const f = new LineFramer(4);
    feed(f, "   ");
    expect(f.takePartial()).toBeNull();
    expect(feed(f, "toolong")).toEqual([TOO_LARGE]);
    expect(f.takePartial()).toBeNull();
  });

  test("a blank line longer than the limit is still no request, whole or in pieces, with its bytes not held", () => {
    const f = new LineFramer(10);
    expect(feed(f, " ".repeat(11) + "\nPING\n")).toEqual(["PING"]);
    expect(feed(f, " \t".repeat(30), "\t".repeat(30) + "\r", "\n", "PING\n")).toEqual(["PING"]);
    expect(f.bufferedBytes).toBe(0);
    // Blanks count towards a request that follows them on the same line.
    expect(feed(f, " ".repeat(30), "PING\nGET a\n")).toEqual([TOO_LARGE, "GET a"]);
    expect(feed(f, " ".repeat(6), "PING\n")).toEqual(["      PING"]);
    // A pause ends a blank unterminated request: its dropped blanks are not charged to the next line.
    feed(f, " ".repeat(30));
    expect(f.bufferedBytes).toBeLessThanOrEqual(11);
    expect(f.hasPartial()).toBe(true);
    expect(f.takePartial()).toBeNull();
    expect(feed(f, "GET a\n")).toEqual(["GET a"]);
  });

  test("an HTTP request line is its own frame, before the size and UTF-8 checks", () => {
    const f = new LineFramer(16);
    expect(feed(f, "GET a\nPOST / HTTP/1.1\r\nGET b\n")).toEqual(["GET a", HTTP_REQUEST, "GET b"]);
    expect(feed(new LineFramer(16), "POST /" + "a".repeat(100) + " HTTP/1.1\r\n")).toEqual([HTTP_REQUEST]);
    expect(feed(new LineFramer(16), "Host: " + "h".repeat(100))).toEqual([HTTP_REQUEST]);
    expect(feed(new LineFramer(16), enc.encode("POST /"), new Uint8Array([0xff, 0x0a]))).toEqual([HTTP_REQUEST]);
    expect(feed(new LineFramer(16), enc.encode("Host: "), new Uint8Array([0xff, 0x0a]))).toEqual([HTTP_REQUEST]);
    const paused = new LineFramer(16);
    expect(feed(paused, "POST")).toEqual([]);
    expect(paused.takePartial()).toBe(HTTP_REQUEST);
  });

  test("an over-long line's first word is judged whole, wherever the chunks were cut", () => {
    // Six tabs of a limit of 8 push the first word past the limit: its few deciding bytes are awaited.
    const judge = (...chunks: string[]) => feed(new LineFramer(8), ...chunks, "PUT k v\n");
    expect(judge("\t".repeat(6) + "POST", "MAN x\n")).toEqual([TOO_LARGE, "PUT k v"]);
    // (The framer goes on after HTTP_REQUEST; the server closes the connection there.)
    expect(judge("\t".repeat(6) + "Hos", "t: x\n")).toEqual([HTTP_REQUEST, "PUT k v"]);
    expect(judge("\t".repeat(6) + "POST\r", "\n")).toEqual([HTTP_REQUEST, "PUT k v"]);
    expect(judge("\t".repeat(6) + "POSTMAN x\n")).toEqual([TOO_LARGE, "PUT k v"]);
  });

  test("startsHttpRequest: the first word is POST or begins with Host:, in any case, after any blanks", () => {
    const http = (line: string) => startsHttpRequest(enc.encode(line), 0, enc.encode(line).length);
    for (const line of ["POST / HTTP/1.1", "post /x", "POST", "POST\t/", "  POST /", "Host: localhost", "HOST:x", "host:", "\tHost: a"]) {
      expect(http(line)).toBe(true);
    }
    for (const line of ["POSTAL code", "POS", "PUT Host: x", "PUT k v", "Host :x", "Hostname: x", "GET / HTTP/1.1", "", "   "]) {
      expect(http(line)).toBe(false);
    }
  });

  test("retain copies unconsumed bytes so the caller may reuse its chunk (a Buffer, as Bun delivers, too)", () => {
    for (const chunk of [enc.encode("GET a\nGET b"), Buffer.from("GET a\nGET b")]) {
      const f = new LineFramer(1024);
      f.push(chunk);
      expect(drain(f)).toEqual(["GET a"]);
      f.retain();
      chunk.fill(0x41);
      expect(feed(f, "\n")).toEqual(["GET b"]);
    }
  });
});
