/**
 * Unit tests of lib/replies.ts: every reply is one JSON object on one line
 * in PROTOCOL §2's shapes, messages and keys escaped whatever they hold, and
 * the fast path's byte replies equal the string ones (fast-path.test.ts
 * checks the same through the executor, for random keys and values).
 */
import { describe, expect, test } from "bun:test";
import { ByteBuffer } from "../lib/byte-buffer.ts";
import { entryWithValueOf, error, notFound, notFoundBytes, okEntry, okJson, REPLY, stringEntry } from "../lib/replies.ts";

const decode = (out: ByteBuffer) => new TextDecoder().decode(out.bytes.subarray(0, out.length));
const ascii = (text: string) => new TextEncoder().encode(text);

/** One line, ending in LF, holding one JSON object. */
function parsedLine(reply: string): unknown {
  expect(reply.endsWith("\n")).toBe(true);
  expect(reply.slice(0, -1)).not.toContain("\n");
  return JSON.parse(reply);
}

describe("replies", () => {
  test("Ok and Error replies in the contract's shapes, one line each", () => {
    expect(parsedLine(okJson("[1,2]"))).toEqual({ status: "Ok", result: [1, 2] });
    expect(parsedLine(okEntry("k", '{"a":1}'))).toEqual({ status: "Ok", result: { key: "k", value: { a: 1 } } });
    expect(parsedLine(error("CONFLICT", "retry it"))).toEqual({ status: "Error", code: "CONFLICT", message: "retry it" });
    expect(parsedLine(notFound("key9"))).toEqual({ status: "Error", code: "NOT_FOUND", message: "Key not found: key9" });
  });

  test("the constant replies say what the contract says", () => {
    const results: Record<keyof typeof REPLY, string> = {
      started: "Transaction started", committed: "Transaction committed", rolledBack: "Transaction rolled back",
      pong: "PONG", bye: "Bye", authenticated: "Authenticated", saved: "Saved",
    };
    for (const [name, reply] of Object.entries(REPLY)) {
      expect(parsedLine(reply)).toEqual({ status: "Ok", result: results[name as keyof typeof REPLY] });
    }
  });


  test("keys and messages holding quotes, backslashes, line breaks, controls and non-ASCII stay one escaped line", () => {
    const nasty = 'a"b\\c\nd\re\u0000f\u2028g😀';
    expect(parsedLine(okEntry(nasty, '"v"'))).toEqual({ status: "Ok", result: { key: nasty, value: "v" } });
    expect(parsedLine(notFound(nasty))).toEqual({ status: "Error", code: "NOT_FOUND", message: "Key not found: " + nasty });
    expect(parsedLine(error("BAD_REQUEST", nasty))).toMatchObject({ message: nasty });
  });

  test("the fast path's byte replies are the string replies' bytes, and stringEntry says where the value's JSON starts", () => {
    const src = ascii("PUT key:00000042 hello world");
    const out = new ByteBuffer();
    out.text("an earlier reply\n");
    const before = out.length;
    const valueAt = stringEntry(out, src, 4, 16, 17, src.length);
    expect(decode(out).slice(before)).toBe(okEntry("key:00000042", '"hello world"'));
    expect(new TextDecoder().decode(out.bytes.subarray(valueAt, valueAt + 13))).toBe('"hello world"');

    const get = ascii("GET missing:1");
    const miss = new ByteBuffer();
    notFoundBytes(miss, get, 4, get.length);
    expect(decode(miss)).toBe(notFound("missing:1"));

    // A key and an encoded value from two different buffers (a transaction's own write held as bytes).
    const held = ascii('xx"kept"yy');
    const own = new ByteBuffer();
    entryWithValueOf(own, get, 4, get.length, { keySrc: held, keyStart: 0, keyEnd: 0, valueSrc: held, valueStart: 2, valueEnd: 8 });
    expect(decode(own)).toBe(okEntry("missing:1", '"kept"'));
  });
});
