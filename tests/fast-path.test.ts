/**
 * The fast path for plain GET/PUT (commit 98d660f; inside transactions since
 * 4b385db): each piece against the general path it must agree with, then end to end.
 *
 * (1) parsePlainRequest vs parseCommand: a property over random request lines
 *     (plain GET/PUT in random case, blanks, tabs, keys and values of any
 *     bytes: quotes, backslashes, `{`, non-ASCII, invalid UTF-8, control
 *     characters, CR) framed by a LineFramer in random chunks: it accepts
 *     exactly the plain GET/PUT lines whose key and value need no JSON
 *     escaping, and then means what parseCommand means; plus specific lines;
 * (2) the byte replies (stringEntry, entryHead/entryTail, notFoundBytes) are
 *     byte for byte the string replies (okEntry, notFound);
 * (3) ByteBuffer: growth, UTF-8 text, undoing by length, dropFront, copy, clear;
 * (4) CompactMap byte access (findAscii, valueByteLength, copyAsciiValue)
 *     against get/has through growth, deletes and compaction;
 * (5) LineFramer.nextLine/lineText: positions, CR, blank lines, invalid
 *     UTF-8, a long line in many chunks, and next() ≡ nextLine() + lineText();
 * (6) Executor.executePlain vs execute: random request mixes (transactions
 *     on three sessions included) on two executors give the same reply bytes,
 *     journal records, stats and store; overwrites with ever longer values;
 *     transaction semantics whichever path answers; every refusal (not
 *     authenticated, a stored value that is not ASCII, persistence failing,
 *     and in a transaction its own write read back, a failed level, the byte
 *     budget) writes and changes nothing, and the general path answers;
 * (7) end to end through real in-process servers on port 0: non-ASCII and
 *     nested values read back with plain GET, NOT_FOUND, pipelined batches
 *     mixed with transactions (own writes, CONFLICT from a plain PUT), AUTH,
 *     STATS counters, big batches, --fsync always and a restart.
 *
 * Runs per property: TXKV_FUZZ_RUNS (default 100), as in fuzz.test.ts.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import fc from "fast-check";
import type { RunningServer } from "../lib/app.ts";
import { MemoryOnlyLog, type CommitLog, type CommitOp, type CommitRecord } from "../lib/commit-log.ts";
import { CompactMap } from "../lib/compact-map.ts";
import { DEFERRED_KEY_MAX_BYTES, DEFERRED_READS_MAX } from "../lib/deferred-reads.ts";
import { newPlainRequest, parseCommand, parsePlainRequest, type Command } from "../lib/commands.ts";
import { Executor } from "../lib/execute.ts";
import { INVALID_UTF8, LINE, LineFramer, TOO_LARGE, type Frame } from "../lib/framing.ts";
import { ByteBuffer, bytesEqual, copyBytes, textEqualsBytes } from "../lib/byte-buffer.ts";
import { entryHead, entryTail, notFound, notFoundBytes, okEntry, stringEntry } from "../lib/replies.ts";
import { Session } from "../lib/session.ts";
import { ServerStats } from "../lib/stats.ts";
import { Store } from "../lib/store.ts";
import { LineClient, seededRandom, splitAt, startInProcess, tempDir, type Reply } from "./helpers.ts";

const RUNS = Math.max(1, Number(process.env.TXKV_FUZZ_RUNS ?? 100) || 100);
const TEST_TIMEOUT_MS = 30_000 + RUNS * 20;

const encoder = new TextEncoder();
/** Printable ASCII but quote and backslash: the bytes the fast path takes (JSON.stringify leaves them alone). */
const SAFE_CHARS = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i)).filter((c) => c !== '"' && c !== "\\");
const SAFE_WORD_CHARS = SAFE_CHARS.filter((c) => c !== " ");
const SAFE_SET = new Set(SAFE_CHARS);

const latin1 = (bytes: Uint8Array, start: number, end: number): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1", start, end);
const needsNoEscape = (text: string): boolean => [...text].every((c) => SAFE_SET.has(c));

/**
 * The oracle for parsePlainRequest, from parseCommand alone: a plain-form (not
 * JSON-form) GET or PUT whose key and value are all printable ASCII without
 * quote or backslash.
 */
function fastPathMeaning(text: string): Extract<Command, { type: "GET" | "PUT" }> | null {
  const cmd = parseCommand(text);
  if (cmd.type !== "GET" && cmd.type !== "PUT") return null;
  if (/^[ \t]*[^ \t]+[ \t]+\{/.test(text)) return null; // the JSON form
  if (!needsNoEscape(cmd.key)) return null;
  if (cmd.type === "PUT" && !needsNoEscape(JSON.parse(cmd.value) as string)) return null;
  return cmd;
}

// ---------------------------------------------------------------- (1) parsePlainRequest

/** Parses `line` placed inside other bytes (which would change its meaning if read): the parser must keep to [start, end). */
function plain(line: string): { type: string; key: string; value?: string } | null {
  const body = encoder.encode(line);
  const before = encoder.encode("GET x\n");
  const src = Buffer.concat([before, body, encoder.encode(' y"\\\n')]);
  const req = newPlainRequest();
  if (!parsePlainRequest(src, before.length, before.length + body.length, req)) return null;
  const key = latin1(src, req.keyStart, req.keyEnd);
  if (req.type === "GET") return { type: "GET", key };
  expect(req.valueEnd).toBe(before.length + body.length);
  return { type: "PUT", key, value: latin1(src, req.valueStart, req.valueEnd) };
}

/** Bytes of one piece of a key or value: mostly plain text, sometimes anything. */
const fieldPiece = fc.oneof(
  { weight: 6, arbitrary: fc.string({ unit: fc.constantFrom(...SAFE_WORD_CHARS), minLength: 1, maxLength: 8 }).map((s) => encoder.encode(s)) },
  {
    weight: 3,
    arbitrary: fc
      .constantFrom('"', "\\", "{", "}", " ", "\t", "\r", "\u0000", "\u001f", "\u007f", "é", "ÿ", "✓", "😀", "\u2028", "\u00a0")
      .map((s) => encoder.encode(s)),
  },
  { weight: 1, arbitrary: fc.constantFrom([0xff], [0xc3], [0x80], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xe2, 0x82]).map((b) => new Uint8Array(b)) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }).map((b) => new Uint8Array([b])) },
);
const field = fc.array(fieldPiece, { maxLength: 5 }).map((parts) => Buffer.concat(parts));
const blanksOrNone = fc.constantFrom("", " ", "\t", "  ", " \t ");
const someBlanks = fc.constantFrom(" ", "\t", "  ", " \t ");
const anyName = fc.constantFrom("get", "put", "getx", "pu", "ge", "del", "keys", "puts", "g", "").chain((n) => fc.mixedCase(fc.constant(n)));

/** A line likely to be plain GET/PUT, with anything in its key and value. */
const wildLine = fc
  .tuple(blanksOrNone, anyName, blanksOrNone, field, blanksOrNone, fc.option(field, { nil: new Uint8Array(0) }), fc.constantFrom("", " ", "\t", "\r", " \r"))
  .map(([lead, name, sep1, key, sep2, value, trail]) => Buffer.concat([encoder.encode(lead + name + sep1), key, encoder.encode(sep2), value, encoder.encode(trail)]));
/** A simple plain GET or PUT: always for the fast path. */
const simpleWord = fc.string({ unit: fc.constantFrom(...SAFE_WORD_CHARS), minLength: 1, maxLength: 12 }).filter((w) => w[0] !== "{");
const simpleLine = fc.oneof(
  fc.tuple(blanksOrNone, fc.mixedCase(fc.constant("get")), someBlanks, simpleWord, blanksOrNone).map((p) => p.join("")),
  fc.tuple(blanksOrNone, fc.mixedCase(fc.constant("put")), someBlanks, simpleWord, someBlanks, simpleWord, fc.string({ unit: fc.constantFrom(...SAFE_CHARS), maxLength: 10 })).map((p) => p.join("")),
);

describe("parsePlainRequest means what parseCommand means", () => {
  test("each of the 256 byte values inside a PUT's value and a GET's key: accepted exactly when printable ASCII other than quote and backslash", () => {
    const req = newPlainRequest();
    for (let b = 0; b < 256; b++) {
      const plain = b >= 0x20 && b < 0x7f && b !== 0x22 && b !== 0x5c;
      const value = Buffer.from([...encoder.encode("PUT k x"), b, ...encoder.encode("y")]);
      expect({ b, ok: parsePlainRequest(value, 0, value.length, req) }).toEqual({ b, ok: plain });
      // In a key, a blank ends it: a GET then has a second word, which is no plain GET either.
      const key = Buffer.from([...encoder.encode("GET k"), b, ...encoder.encode("y")]);
      expect({ b, ok: parsePlainRequest(key, 0, key.length, req) }).toEqual({ b, ok: plain && b !== 0x20 });
    }
  });

  test(
    "random lines in random chunks: it accepts exactly the plain GET/PUT lines needing no escaping, with parseCommand's type, key and value",
    () => {
      let accepted = 0;
      let rejected = 0;
      let runs = 0;
      fc.assert(
        fc.property(
          simpleLine,
          fc.array(fc.oneof({ weight: 3, arbitrary: wildLine }, { weight: 1, arbitrary: simpleLine.map((s) => encoder.encode(s)) }), { maxLength: 8 }),
          fc.array(fc.nat(), { maxLength: 6 }),
          (first, rest, cuts) => {
            runs++;
            const lf = new Uint8Array([0x0a]);
            const stream = Buffer.concat([encoder.encode(first), lf, ...rest.flatMap((line) => [line, lf])]);
            const framer = new LineFramer(4096);
            const req = newPlainRequest();
            let firstSeen = false;
            for (const chunk of splitAt(stream, cuts)) {
              framer.push(chunk);
              for (let found = framer.nextLine(); found !== null; found = framer.nextLine()) {
                expect(found).toBe(LINE);
                const src = framer.bytes;
                const text = framer.lineText();
                const ok = parsePlainRequest(src, framer.lineStart, framer.lineEnd, req);
                const meaning = typeof text === "string" ? fastPathMeaning(text) : null;
                if (!firstSeen) {
                  firstSeen = true;
                  expect({ line: text, ok }).toEqual({ line: first, ok: true });
                }
                expect({ line: text, accepted: ok }).toEqual({ line: text, accepted: meaning !== null });
                if (!ok) {
                  rejected++;
                  continue;
                }
                accepted++;
                const cmd = meaning!;
                expect(typeof text).toBe("string");
                expect(cmd.type).toBe(req.type);
                expect(cmd.key).toBe(latin1(src, req.keyStart, req.keyEnd));
                expect(req.keyEnd).toBeGreaterThan(req.keyStart);
                if (cmd.type === "PUT") {
                  const value = latin1(src, req.valueStart, req.valueEnd);
                  expect(req.valueEnd).toBe(framer.lineEnd);
                  expect(cmd.value).toBe(JSON.stringify(value));
                  // What putPlain stores: the value's JSON text, quotes around the bytes.
                  expect(cmd.value).toBe('"' + value + '"');
                }
              }
              framer.retain();
            }
          },
        ),
        { numRuns: RUNS * 5 },
      );
      // Not vacuous: every run's first line is a simple GET/PUT, and the wild lines are mostly refused.
      expect(accepted).toBeGreaterThanOrEqual(runs);
      expect(rejected).toBeGreaterThan(0);
    },
    TEST_TIMEOUT_MS,
  );

  test("accepts plain GET/PUT in any case, with spaces or tabs, leading blanks, and trailing blanks after a GET key", () => {
    const cases: [string, { type: string; key: string; value?: string }][] = [
      ["GET k", { type: "GET", key: "k" }],
      ["get k", { type: "GET", key: "k" }],
      ["gEt key:1", { type: "GET", key: "key:1" }],
      ["GET\tk", { type: "GET", key: "k" }],
      [" \t GET \t k", { type: "GET", key: "k" }],
      ["GET k  \t ", { type: "GET", key: "k" }],
      ["GET a{b}", { type: "GET", key: "a{b}" }],
      ["PUT k v", { type: "PUT", key: "k", value: "v" }],
      ["put\tk\tv", { type: "PUT", key: "k", value: "v" }],
      ["PuT  k   hello   big world  ", { type: "PUT", key: "k", value: "hello   big world  " }],
      ["PUT k {a:1} [x] ~!@#$%^&*()", { type: "PUT", key: "k", value: "{a:1} [x] ~!@#$%^&*()" }],
      ["PUT k} v", { type: "PUT", key: "k}", value: "v" }],
      ["PUT k 42", { type: "PUT", key: "k", value: "42" }],
    ];
    for (const [line, expected] of cases) {
      expect({ line, got: plain(line) }).toEqual({ line, got: expected });
      const cmd = parseCommand(line);
      expect(cmd).toMatchObject(expected.type === "GET" ? { type: "GET", key: expected.key } : { type: "PUT", key: expected.key, value: JSON.stringify(expected.value) });
    }
  });

  test("refuses everything else: other commands, wrong arity, JSON forms, bytes needing escaping, non-ASCII, control characters", () => {
    const refused = [
      "GET a b", // two words: BAD_REQUEST on the general path
      "GET",
      "GET ",
      "GET\t\t",
      "PUT",
      "PUT k",
      "PUT k  \t ",
      'GET {"key":"a"}',
      'PUT {"key":"a","value":1}',
      "GET {a}",
      "PUT {k v",
      'PUT k a"b',
      "PUT k a\\b",
      "PUT k a\tb",
      "PUT k v\t",
      'GET a"b',
      "GET a\\b",
      "PUT k héllo",
      "GET é",
      "PUT k ✓",
      "GET k\u0000",
      "PUT k v\r",
      "PUT k v\u007f",
      "GET k\u00a0",
      "GETX a",
      "GE a",
      "PUTS a b",
      "DEL a",
      "KEYS a",
      "G ET a",
      "xGET a",
      "GET\u000ba",
      "PING",
    ];
    for (const line of refused) expect({ line, got: plain(line) }).toEqual({ line, got: null });
  });

  test("the bytes of an invalid UTF-8 line are never read as a plain request", () => {
    const req = newPlainRequest();
    for (const bytes of [[0x47, 0x45, 0x54, 0x20, 0xff], [0x50, 0x55, 0x54, 0x20, 0x6b, 0x20, 0xc3, 0x28], [0x47, 0x45, 0x54, 0x20, 0xed, 0xa0, 0x80]]) {
      expect(parsePlainRequest(new Uint8Array(bytes), 0, bytes.length, req)).toBe(false);
    }
  });
});

// ---------------------------------------------------------------- (2) byte replies

describe("byte replies equal the string replies", () => {
  const safeKey = fc.string({ unit: fc.constantFrom(...SAFE_CHARS), minLength: 1, maxLength: 80 });
  const safeText = fc.string({ unit: fc.constantFrom(...SAFE_CHARS), maxLength: 300 });
  const asciiJson = fc
    .jsonValue({ maxDepth: 3 })
    .map((v) => JSON.stringify(v))
    .filter((t) => /^[\x00-\x7f]*$/.test(t));

  test("stringEntry, entryHead + value + entryTail and notFoundBytes give Buffer.from(okEntry(...)) and Buffer.from(notFound(key)), appended after earlier replies", () => {
    fc.assert(
      fc.property(safeKey, safeText, asciiJson, fc.nat({ max: 70 }), (key, value, encoded, padLength) => {
        const pad = "#".repeat(padLength);
        const src = Buffer.from(pad + key + pad + value + pad, "latin1");
        const keyStart = padLength;
        const keyEnd = keyStart + key.length;
        const valueStart = keyEnd + padLength;
        const valueEnd = valueStart + value.length;
        const out = new ByteBuffer();
        const earlier = Buffer.from('{"status":"Ok","result":"héllo ✓"}\n');
        out.text(earlier.toString());
        const start = out.length;

        stringEntry(out, src, keyStart, keyEnd, valueStart, valueEnd);
        const first = Buffer.from(okEntry(key, JSON.stringify(value)));
        expect(out.length - start).toBe(first.length);
        entryHead(out, src, keyStart, keyEnd);
        out.range(Buffer.from(encoded, "latin1"), 0, encoded.length);
        entryTail(out);
        notFoundBytes(out, src, keyStart, keyEnd);

        const expected = Buffer.concat([earlier, first, Buffer.from(okEntry(key, encoded)), Buffer.from(notFound(key))]);
        const got = Buffer.from(out.bytes.subarray(0, out.length));
        expect(got.toString("latin1")).toBe(expected.toString("latin1"));
        expect(Buffer.compare(got, expected)).toBe(0);
      }),
      { numRuns: RUNS * 5 },
    );
  });
});

// ---------------------------------------------------------------- (3) ByteBuffer

describe("ByteBuffer", () => {
  test("growing past the initial 64 KiB keeps everything written, through text, constant, byte and range", () => {
    const out = new ByteBuffer();
    const initial = out.bytes.length;
    const expected: Buffer[] = [];
    const src = Buffer.from("0123456789abcdefghijklmnopqrstuvwxyz".repeat(10));
    for (let i = 0; out.length < 300 * 1024; i++) {
      const text = `{"n":${i},"s":"héllo ✓ 😀"}\n`;
      out.text(text);
      expected.push(Buffer.from(text));
      const constant = Buffer.from(`const-${i};`);
      out.constant(constant);
      expected.push(constant);
      out.byte(0x7c);
      expected.push(Buffer.from("|"));
      const start = i % 50;
      const end = start + ((i * 37) % 300); // short and long ranges
      out.range(src, start, end);
      expected.push(src.subarray(start, end));
    }
    expect(initial).toBeLessThanOrEqual(64 * 1024);
    expect(out.bytes.length).toBeGreaterThan(initial);
    expect(Buffer.compare(Buffer.from(out.bytes.subarray(0, out.length)), Buffer.concat(expected))).toBe(0);
  });

  test("decimal() appends an integer's digits as String() writes them, at every digit count and across a growth", () => {
    // Around the nine-digit chunks too: 999,999,999 / 1,000,000,000, inner zeros padded, and a random sample.
    const next = seededRandom(9);
    const sample = Array.from({ length: 2000 }, () => Math.floor(next() * 2 ** (1 + Math.floor(next() * 53))));
    const values = [0, 1, 9, 10, 99, 100, 12_345, 1_000_000, 999_999_999, 1_000_000_000, 1_000_000_001, 2 ** 31, 2 ** 32 - 1, 2 ** 32 + 7, 10 ** 15, 10 ** 15 + 5, Number.MAX_SAFE_INTEGER, ...sample];
    const out = new ByteBuffer(8); // small, so the digits also land across a growth of the buffer
    for (const value of values) {
      out.decimal(value);
      out.byte(0x2c);
    }
    expect(out.bytes.toString("latin1", 0, out.length)).toBe(values.map((v) => `${v},`).join(""));
  });

  test("bytesEqual compares two ranges at their offsets: equal, one byte apart, and empty", () => {
    const a = encoder.encode("xxkey:1yy");
    const b = encoder.encode("key:1");
    expect(bytesEqual(a, 2, b, 0, 5)).toBe(true);
    expect(bytesEqual(a, 1, b, 0, 5)).toBe(false);
    expect(bytesEqual(a, 2, encoder.encode("key:2"), 0, 5)).toBe(false);
    expect(bytesEqual(a, 0, b, 0, 0)).toBe(true);
  });

  test("copyBytes copies exactly src[start, end) to dest at pos, for every length up to past the native copy's threshold, at any offsets", () => {
    const src = Uint8Array.from({ length: 160 }, (_, i) => i + 1);
    for (let length = 0; length <= 140; length++) {
      for (const [start, pos] of [[0, 0], [1, 3], [3, 1], [7, 0], [0, 5]] as const) {
        const dest = new Uint8Array(160).fill(0xee);
        copyBytes(src, start, start + length, dest, pos);
        const expected = new Uint8Array(160).fill(0xee);
        expected.set(src.subarray(start, start + length), pos);
        expect(dest).toEqual(expected); // nothing before pos or after pos + length is touched
      }
    }
  });

  test("textEqualsBytes compares a string's code units with bytes at an offset, for the string's length", () => {
    const bytes = encoder.encode("..key:1..");
    expect(textEqualsBytes("key:1", bytes, 2)).toBe(true);
    expect(textEqualsBytes("key:", bytes, 2)).toBe(true); // a prefix: only text.length bytes are compared
    expect(textEqualsBytes("key:2", bytes, 2)).toBe(false);
    expect(textEqualsBytes("key:1", bytes, 1)).toBe(false);
    expect(textEqualsBytes("", bytes, 0)).toBe(true);
    expect(textEqualsBytes("\u00e9", Uint8Array.of(0xe9), 0)).toBe(true); // Latin-1: one byte per code unit
  });

  test("reserve(n) gives room for n more bytes after the current length", () => {
    const out = new ByteBuffer();
    out.text("abc");
    out.reserve(200_000);
    expect(out.bytes.length).toBeGreaterThanOrEqual(3 + 200_000);
    expect(out.bytes.toString("latin1", 0, 3)).toBe("abc");
  });

  test("text() appends UTF-8; setting length back undoes what came after; dropFront keeps the rest in order", () => {
    const out = new ByteBuffer();
    out.text("first\n");
    const mark = out.length;
    out.text("héllo ✓ 😀\n");
    out.constant(Buffer.from("tail\n"));
    expect(out.bytes.toString("utf8", mark, out.length)).toBe("héllo ✓ 😀\ntail\n");
    out.length = mark;
    out.text("next\n");
    expect(out.bytes.toString("utf8", 0, out.length)).toBe("first\nnext\n");
    out.dropFront(6);
    expect(out.bytes.toString("utf8", 0, out.length)).toBe("next\n");
    out.dropFront(out.length);
    expect(out.length).toBe(0);
  });

  test("clear() after a huge batch empties it and lets go of the grown buffer; a moderate one is kept for reuse", () => {
    const out = new ByteBuffer();
    const block = Buffer.alloc(64 * 1024, 0x61);
    for (let i = 0; i < 48; i++) out.constant(block); // 3 MiB
    expect(out.bytes.length).toBeGreaterThanOrEqual(3 * 1024 * 1024);
    out.clear();
    expect(out.length).toBe(0);
    expect(out.bytes.length).toBeLessThanOrEqual(1024 * 1024);
    out.text("after\n");
    expect(out.bytes.toString("utf8", 0, out.length)).toBe("after\n");

    for (let i = 0; i < 3; i++) out.constant(block); // ~192 KiB: grown, but not huge
    const grown = out.bytes;
    out.clear();
    expect(out.length).toBe(0);
    expect(out.bytes).toBe(grown);
  });
});

// ---------------------------------------------------------------- (4) CompactMap byte access

/** findAscii with the key's bytes in the middle of other bytes. */
function findAscii(map: CompactMap, key: string): number {
  const src = Buffer.from("~~k" + key + "~~", "latin1");
  return map.findAscii(src, 3, 3 + key.length);
}

/** The value of entry through copyAsciiValue (null when it answers -1), checking it writes only within its room. */
function copyValue(map: CompactMap, entry: number): string | null {
  const pos = 5;
  const room = map.valueByteLength(entry);
  const dest = new Uint8Array(pos + room + 3).fill(0x23);
  const end = map.copyAsciiValue(entry, dest, pos);
  expect(Buffer.from(dest.subarray(0, pos)).toString("latin1")).toBe("#####");
  if (end < 0) return null;
  expect(end).toBe(pos + room);
  expect(Buffer.from(dest.subarray(end)).toString("latin1")).toBe("###");
  return Buffer.from(dest).toString("latin1", pos, end);
}

const isAscii = (text: string): boolean => /^[\x00-\x7f]*$/.test(text);

describe("CompactMap byte access", () => {
  test("findAscii agrees with has/get for present and absent keys through overwrites, deletes, growth and compaction", () => {
    const VALUE_PIECES = ["v", "plain value ", '"q"', "é", "ÿ", "✓", "😀", "x".repeat(200), "", "{\"a\":[1,2]}"];
    for (const seed of [11, 12, 13]) {
      const next = seededRandom(seed);
      const map = new CompactMap();
      const model = new Map<string, string>();
      const asciiKeys = Array.from({ length: 300 }, (_, i) => (i % 5 === 0 ? `key:${i}` : i % 7 === 0 ? "x".repeat(i) : `k${i}`));
      asciiKeys.push("", "a", "ab", "abc", "abcd", "abcde");
      // Non-ASCII keys share the index and arena, but are never looked up by bytes.
      const otherKeys = Array.from({ length: 60 }, (_, i) => (i % 2 === 0 ? `é${i}` : `✓${i}`));
      const value = () => {
        let text = "";
        const pieces = Math.floor(next() * 4);
        for (let i = 0; i < pieces; i++) text += VALUE_PIECES[Math.floor(next() * VALUE_PIECES.length)]!;
        return text;
      };
      const check = () => {
        for (const key of asciiKeys) {
          const entry = findAscii(map, key);
          expect({ key, found: entry >= 0 }).toEqual({ key, found: model.has(key) });
          expect(map.has(key)).toBe(model.has(key));
          if (entry < 0) continue;
          const expected = model.get(key)!;
          expect({ key, value: copyValue(map, entry) }).toEqual({ key, value: isAscii(expected) ? expected : null });
          expect(map.get(key)).toBe(expected);
        }
      };
      const phases: [ops: number, setShare: number][] = [
        [4000, 0.75], // growth: mostly sets
        [4000, 0.1], // mostly deletes: garbage outweighs the live records, compaction
        [3000, 0.6],
      ];
      for (const [ops, setShare] of phases) {
        for (let op = 0; op < ops; op++) {
          const pool = next() < 0.85 ? asciiKeys : otherKeys;
          const key = pool[Math.floor(next() * pool.length)]!;
          if (next() < setShare) {
            const v = value();
            map.set(key, v);
            model.set(key, v);
          } else {
            map.delete(key);
            model.delete(key);
          }
          if (op % 500 === 499) check();
        }
        check();
      }
    }
  });

  test("copyAsciiValue copies an ASCII value and returns its end; -1 for a value with é (stored narrow) or a wide character", () => {
    const map = new CompactMap();
    const values = ["plain", "", '"json text"', "x".repeat(1000), "é", "café", "abc\u00ff", "\u0080", "✓", "tick ✓", "😀", "\u0100"];
    values.forEach((v, i) => map.set(`key${i}`, v));
    values.forEach((v, i) => {
      const entry = findAscii(map, `key${i}`);
      expect(entry).toBeGreaterThanOrEqual(0);
      expect({ v, got: copyValue(map, entry) }).toEqual({ v, got: isAscii(v) ? v : null });
    });
    expect(map.valueByteLength(findAscii(map, "key4"))).toBe(1); // é: one byte, narrow
    expect(map.valueByteLength(findAscii(map, "key8"))).toBe(2); // ✓: one wide code unit
    expect(map.valueByteLength(findAscii(map, "key10"))).toBe(4); // 😀: two wide code units
  });

  test("findAscii never matches a key stored wide or holding a unit above 255, even when the bytes match", () => {
    const map = new CompactMap();
    map.set("a\u0100", "wide");
    map.set("\u0161bcd", "wide too");
    map.set("é", "narrow latin-1");
    expect(map.findAscii(new Uint8Array([0x61, 0x00, 0x00, 0x01]), 0, 4)).toBe(-1);
    expect(map.findAscii(new Uint8Array([0x61, 0x00, 0x01]), 0, 3)).toBe(-1);
    expect(findAscii(map, "abcd")).toBe(-1);
    expect(findAscii(map, "a")).toBe(-1);
    map.set("abcd", "ascii");
    expect(copyValue(map, findAscii(map, "abcd"))).toBe("ascii");
  });

  test("a handle found after the value changed in place, moved to a bigger record, or after a compaction reads the new value", () => {
    const map = new CompactMap();
    map.set("k", "v1");
    expect(copyValue(map, findAscii(map, "k"))).toBe("v1");
    map.set("k", "v2");
    expect(copyValue(map, findAscii(map, "k"))).toBe("v2");
    map.set("k", "longer value ".repeat(50));
    expect(copyValue(map, findAscii(map, "k"))).toBe("longer value ".repeat(50));
    map.set("k", "✓");
    expect(copyValue(map, findAscii(map, "k"))).toBeNull();
    for (let i = 0; i < 5000; i++) map.set(`filler${i}`, "f".repeat(i % 40));
    for (let i = 0; i < 5000; i++) map.delete(`filler${i}`);
    map.set("k", "after compaction");
    expect(copyValue(map, findAscii(map, "k"))).toBe("after compaction");
    expect(findAscii(map, "filler1")).toBe(-1);
  });
});

// ---------------------------------------------------------------- (5) LineFramer.nextLine / lineText

/** Every line the framer finds in chunks, as lineText() (TOO_LARGE as such), with its chunk index. */
function findLines(framer: LineFramer, chunks: Uint8Array[]): { frame: Frame; chunk: number }[] {
  const found: { frame: Frame; chunk: number }[] = [];
  chunks.forEach((chunk, i) => {
    framer.push(chunk.slice());
    for (let f = framer.nextLine(); f !== null; f = framer.nextLine()) {
      if (f === TOO_LARGE) {
        found.push({ frame: TOO_LARGE, chunk: i });
        continue;
      }
      expect(framer.lineStart).toBeLessThanOrEqual(framer.lineEnd);
      expect(framer.lineEnd).toBeLessThanOrEqual(framer.bytes.length);
      expect(framer.bytes.subarray(framer.lineStart, framer.lineEnd).includes(0x0a)).toBe(false);
      found.push({ frame: framer.lineText(), chunk: i });
    }
    framer.retain();
  });
  return found;
}

describe("LineFramer.nextLine and lineText", () => {
  test("a found line's bytes are at bytes[lineStart, lineEnd), CR before LF dropped, blank lines skipped", () => {
    const f = new LineFramer(1024);
    f.push(encoder.encode("PUT a 1\r\n\n  \n\t\r\nGET b\nPING"));
    expect(f.nextLine()).toBe(LINE);
    expect([f.lineStart, f.lineEnd]).toEqual([0, 7]);
    expect(latin1(f.bytes, f.lineStart, f.lineEnd)).toBe("PUT a 1");
    expect(f.lineText()).toBe("PUT a 1");
    expect(f.nextLine()).toBe(LINE);
    expect([f.lineStart, f.lineEnd]).toEqual([16, 21]);
    expect(f.lineText()).toBe("GET b");
    expect(f.nextLine()).toBeNull(); // "PING" has no LF yet
    f.retain();
    f.push(encoder.encode("\r\n"));
    expect(f.nextLine()).toBe(LINE);
    expect(latin1(f.bytes, f.lineStart, f.lineEnd)).toBe("PING");
    expect(f.nextLine()).toBeNull();
  });

  test("only a CR right before the LF is dropped", () => {
    const f = new LineFramer(1024);
    f.push(encoder.encode("PUT k a\rb\r\r\nGET \rk\n"));
    expect(f.nextLine()).toBe(LINE);
    expect(f.lineText()).toBe("PUT k a\rb\r");
    expect(f.nextLine()).toBe(LINE);
    expect(f.lineText()).toBe("GET \rk");
  });

  test("invalid UTF-8 makes lineText() INVALID_UTF8 for that line only; valid non-ASCII lines decode", () => {
    const bytes = Buffer.concat([
      encoder.encode("GET a\n"),
      new Uint8Array([0x47, 0x45, 0x54, 0x20, 0xff, 0x0a]),
      encoder.encode("PUT é ✓ 😀\n"),
      new Uint8Array([0x50, 0x55, 0x54, 0x20, 0x6b, 0x20, 0xed, 0xa0, 0x80, 0x0a]), // an encoded surrogate
      new Uint8Array([0x47, 0x45, 0x54, 0x20, 0xc0, 0x80, 0x0d, 0x0a]), // overlong NUL
      encoder.encode("PUT k v\n"),
    ]);
    expect(findLines(new LineFramer(1024), [bytes]).map((l) => l.frame)).toEqual(["GET a", INVALID_UTF8, "PUT é ✓ 😀", INVALID_UTF8, INVALID_UTF8, "PUT k v"]);
    // Split anywhere, the same lines.
    for (let cut = 1; cut < bytes.length; cut += 3) {
      expect(findLines(new LineFramer(1024), [bytes.subarray(0, cut), bytes.subarray(cut)]).map((l) => l.frame)).toEqual([
        "GET a", INVALID_UTF8, "PUT é ✓ 😀", INVALID_UTF8, INVALID_UTF8, "PUT k v",
      ]);
    }
  });

  test("a long line arriving in many chunks is found once, when its LF arrives, whole (CRLF split between chunks too)", () => {
    const line = "PUT long " + "abcdefghij".repeat(20_000);
    const bytes = encoder.encode(line + "\r\nGET x\n");
    const chunks: Uint8Array[] = [];
    for (let at = 0; at < bytes.length; at += 997) chunks.push(bytes.subarray(at, at + 997));
    const lfChunk = Math.floor((line.length + 1) / 997);
    const found = findLines(new LineFramer(1_000_000), chunks);
    expect(found.map((l) => l.frame)).toEqual([line, "GET x"]);
    expect(found[0]!.chunk).toBe(lfChunk);

    // The LF alone in the last chunk, after the CR.
    const again = findLines(new LineFramer(1_000_000), [encoder.encode(line.slice(0, 100_000)), encoder.encode(line.slice(100_000) + "\r"), encoder.encode("\n")]);
    expect(again).toEqual([{ frame: line, chunk: 2 }]);
  });

  test("a line over the limit is TOO_LARGE from nextLine() as from next(), and the next line is found", () => {
    const f = new LineFramer(10);
    f.push(encoder.encode("y".repeat(11) + "\nGET a\n"));
    expect(f.nextLine()).toBe(TOO_LARGE);
    expect(f.nextLine()).toBe(LINE);
    expect(f.lineText()).toBe("GET a");
  });

  test("next() gives what nextLine() + lineText() give, for random bytes in random chunks", () => {
    const piece = fc.oneof(
      fc.uint8Array({ maxLength: 24 }),
      fc.constantFrom("\n", "\r\n", "\r", " ", "\t", "GET a", "PUT k v", "é", "✓").map((s) => encoder.encode(s)),
      fc.constantFrom([0xff], [0xc3], [0xed, 0xa0, 0x80]).map((b) => new Uint8Array(b)),
    );
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 40 }), fc.array(fc.nat(), { maxLength: 6 }), fc.integer({ min: 4, max: 64 }), (pieces, cuts, limit) => {
        const chunks = splitAt(Buffer.concat(pieces), cuts);
        const viaNext: Frame[] = [];
        const framer = new LineFramer(limit);
        for (const chunk of chunks) {
          framer.push(chunk.slice());
          for (let f = framer.next(); f !== null; f = framer.next()) viaNext.push(f);
          framer.retain();
        }
        expect(findLines(new LineFramer(limit), chunks).map((l) => l.frame)).toEqual(viaNext);
      }),
      { numRuns: RUNS * 5 },
    );
  });
});

// ---------------------------------------------------------------- (6) Executor.executePlain

class RecordingLog extends MemoryOnlyLog {
  override readonly enabled = true;
  readonly records: { seq: number; ops: CommitOp[] }[] = [];
  /** What append() answers: the seq a reply must wait for (0: none). */
  constructor(private readonly waitFor: (seq: number) => number = () => 0) {
    super();
  }
  override append(record: CommitRecord): number {
    this.records.push({ seq: record.seq, ops: record.ops.map((op) => [op[0], op[1]] as const) });
    return this.waitFor(record.seq);
  }
}

class FailingLog extends MemoryOnlyLog {
  override readonly unavailableReason = "disk full (test)" as unknown as null;
}

/** An executor with its store, log and stats, run as the server runs lines: one ByteBuffer per batch. */
class Harness {
  readonly store: Store;
  readonly stats = new ServerStats();
  readonly executor: Executor;
  readonly out = new ByteBuffer();
  private readonly req = newPlainRequest();

  constructor(
    readonly log: CommitLog = new RecordingLog(),
    options: { password?: string; initial?: [string, string][]; maxTransactionBytes?: number } = {},
  ) {
    this.store = new Store(options.initial ?? []);
    this.executor = new Executor(this.store, log, this.stats, {
      maxTransactionBytes: options.maxTransactionBytes ?? 1 << 20,
      password: options.password,
      version: "test",
    });
  }

  /**
   * One line: the fast path when it takes it, else execute() (its reply
   * appended as the server does). Checks that a refusal wrote and changed nothing.
   */
  run(session: Session, line: string, useFastPath = true): { reply: string; fast: boolean } {
    const src = this.src(line);
    const mark = this.out.length;
    if (useFastPath && parsePlainRequest(src, 5, src.length - 9, this.req)) {
      if (this.tryFast(session, src)) return { reply: this.out.bytes.toString("utf8", mark, this.out.length), fast: true };
    }
    const reply = this.executor.execute(parseCommand(line), session);
    if (typeof reply !== "string") throw new Error("unexpected async reply");
    this.out.text(reply);
    return { reply, fast: false };
  }

  /** executePlain for a line parsePlainRequest accepts; on false, checks nothing was written or changed. */
  fast(session: Session, line: string): boolean {
    const src = this.src(line);
    expect({ line, plain: parsePlainRequest(src, 5, src.length - 9, this.req) }).toEqual({ line, plain: true });
    return this.tryFast(session, src);
  }

  /** The text of the replies in the buffer. */
  get batch(): string {
    return this.out.bytes.toString("utf8", 0, this.out.length);
  }

  private tryFast(session: Session, src: Uint8Array): boolean {
    const mark = this.out.length;
    const before = this.out.bytes.toString("latin1", 0, mark);
    const commands = this.stats.commands;
    const errors = JSON.stringify(this.stats.errorsByCode);
    const seq = this.store.seq;
    const size = this.store.size;
    const tx = session.tx;
    if (this.executor.executePlain(this.req, src, session, this.out)) return true;
    expect(this.out.length).toBe(mark);
    expect(this.out.bytes.toString("latin1", 0, mark)).toBe(before);
    expect(this.stats.commands).toBe(commands);
    expect(JSON.stringify(this.stats.errorsByCode)).toBe(errors);
    expect(this.store.seq).toBe(seq);
    expect(this.store.size).toBe(size);
    expect(session.tx).toBe(tx);
    return false;
  }

  /** The line inside a bigger buffer, as in a framer's chunk: "PING\n" + line + "\nGET x y\n". */
  private src(line: string): Uint8Array {
    return encoder.encode("PING\n" + line + "\nGET x y\n");
  }
}

const KEYS = ["a", "b", "key:1", "k{x}", "k}", "user:42:name", "x".repeat(60), "~!#$%&'()*+,-./", "é", "✓"];
const anyKey = fc.constantFrom(...KEYS);
/** Values of 1 to 300 bytes as a repeated piece: varied lengths, yet quick to shrink (a piece and a count, not 300 characters). */
const asciiValue = fc
  .tuple(fc.string({ unit: fc.constantFrom(...SAFE_CHARS), minLength: 1, maxLength: 6 }), fc.integer({ min: 1, max: 100 }))
  .map(([piece, count]) => piece.repeat(count).slice(0, 300));
const anyJsonValue = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.jsonValue({ maxDepth: 2, stringUnit: "grapheme" }),
  fc.constantFrom<unknown>("héllo", "✓", "😀 emoji", { n: "ü", l: [1, null] }, 'q"b\\s\n\t', { a: [1, { b: "x" }] }, 42, null),
);
const requestLine = fc.oneof(
  { weight: 6, arbitrary: fc.tuple(fc.mixedCase(fc.constant("put")), anyKey, asciiValue).map(([n, k, v]) => `${n} ${k} ${v}`) },
  { weight: 6, arbitrary: fc.tuple(fc.mixedCase(fc.constant("get")), anyKey).map(([n, k]) => `${n} ${k}`) },
  { weight: 2, arbitrary: fc.tuple(anyKey, anyJsonValue).map(([key, value]) => `PUT ${JSON.stringify({ key, value })}`) },
  { weight: 1, arbitrary: anyKey.map((k) => `DEL ${k}`) },
  { weight: 1, arbitrary: fc.constantFrom("GET a b", "PUT a", "PUT a \t", 'GET {"key":"a"}', "PUT a tab\there", 'PUT a q"uote', "PUT a é", "PING", "KEYS", "KEYS k") },
  { weight: 3, arbitrary: fc.constantFrom("START", "START", "COMMIT", "COMMIT", "ROLLBACK") },
);
/**
 * A request and which of three sessions sends it (so transactions meet other
 * sessions' writes, and deferred reads of several open transactions meet commits).
 */
const sessionRequest = fc.tuple(fc.constantFrom(0, 0, 1, 2), requestLine);
const anySession = fc.constantFrom(0, 0, 1, 2);
/** A run of one session's requests dense in START/COMMIT/ROLLBACK: nested levels, their rollbacks and commits. */
const nestedRun = fc
  .tuple(anySession, fc.array(fc.oneof(requestLine, fc.constantFrom("START", "START", "COMMIT", "ROLLBACK")), { maxLength: 10 }))
  .map(([who, lines]) => lines.map((line): [number, string] => [who, line]));
/** Single requests of any session, and runs of one session's nested transactions, interleaved. */
const requestMix = fc
  .array(fc.oneof({ weight: 4, arbitrary: sessionRequest.map((r) => [r]) }, { weight: 1, arbitrary: nestedRun }), { maxLength: 40, size: "max" })
  .map((chunks) => chunks.flat());

describe("Executor.executePlain does what execute does", () => {
  test(
    "random plain GET/PUT, JSON-form PUTs (non-ASCII, nested), DELs, errors and transactions on three sessions: same reply bytes, journal records, stats and store",
    () => {
      let fastTotal = 0;
      let runs = 0;
      fc.assert(
        fc.property(requestMix, (rest) => {
          runs++;
          const requests: [number, string][] = [[0, "PUT a v"], [0, "GET a"], ...rest];
          // A small transaction budget, so that PUTs inside transactions also run out of it.
          const fast = new Harness(new RecordingLog(), { maxTransactionBytes: 2000 });
          const general = new Harness(new RecordingLog(), { maxTransactionBytes: 2000 });
          const fastSessions = [new Session(false), new Session(false), new Session(false)];
          const generalSessions = [new Session(false), new Session(false), new Session(false)];
          for (const [who, line] of requests) {
            const a = fast.run(fastSessions[who]!, line);
            const b = general.run(generalSessions[who]!, line, false);
            if (a.fast) fastTotal++;
            expect({ who, line, reply: a.reply }).toEqual({ who, line, reply: b.reply });
          }
          for (const field of ["txOpen", "txCommitted", "txRolledBack", "txConflicted", "txAborted"] as const) {
            expect({ field, n: fast.stats[field] }).toEqual({ field, n: general.stats[field] });
          }
          expect(fast.batch).toBe(general.batch);
          expect((fast.log as RecordingLog).records).toEqual((general.log as RecordingLog).records);
          expect({ ...fast.stats.commandsByType }).toEqual({ ...general.stats.commandsByType });
          expect({ ...fast.stats.errorsByCode }).toEqual({ ...general.stats.errorsByCode });
          expect(fast.stats.commands).toBe(general.stats.commands);
          expect(new Map(fast.store.entries())).toEqual(new Map(general.store.entries()));
          expect(fast.store.seq).toBe(general.store.seq);
        }),
        { numRuns: RUNS },
      );
      expect(fastTotal).toBeGreaterThanOrEqual(2 * runs);
    },
    TEST_TIMEOUT_MS,
  );

  test("overwriting keys with ever longer plain PUTs (records moving, the arena growing and compacting) reads back exactly", () => {
    const h = new Harness();
    const s = new Session(false);
    for (let i = 0; i < 1500; i++) {
      const key = `g${i % 7}`;
      const value = "v".repeat(i % 400) + i;
      expect(h.fast(s, `PUT ${key} ${value}`)).toBe(true);
      expect(h.store.get(key)).toBe(JSON.stringify(value));
      expect(h.run(s, `GET ${key}`)).toEqual({ reply: okEntry(key, JSON.stringify(value)), fast: true });
    }
  }, 20_000); // about 1 s alone; a loaded machine has taken it past the 5 s default

  test("a GET of a missing key: NOT_FOUND bytes, counted as a GET and a NOT_FOUND error", () => {
    const h = new Harness();
    const s = new Session(false);
    expect(h.run(s, "GET nope")).toEqual({ reply: notFound("nope"), fast: true });
    expect(h.stats.commandsByType.GET).toBe(1);
    expect(h.stats.errorsByCode.NOT_FOUND).toBe(1);
  });

  test("refuses, writing and changing nothing, before AUTH; the general path then answers AUTH_REQUIRED", () => {
    const h = new Harness(new RecordingLog(), { password: "pw", initial: [["a", '"1"']] });
    const s = new Session(true);
    h.out.text("an earlier reply\n");
    expect(h.fast(s, "GET a")).toBe(false);
    expect(h.fast(s, "PUT a 2")).toBe(false);
    expect(JSON.parse(h.run(s, "GET a").reply)).toMatchObject({ code: "AUTH_REQUIRED" });
    expect(h.run(s, "AUTH pw").reply).toContain("Authenticated");
    expect(h.fast(s, "GET a")).toBe(true);
  });

  test("inside a transaction, plain GET/PUT (whichever path takes them) read own writes, stay out of the store until COMMIT, and watch what they read", () => {
    const h = new Harness(new RecordingLog(), { initial: [["a", '"1"']] });
    const s = new Session(false);
    const other = new Session(false);
    const reply = (session: Session, line: string) => h.run(session, line).reply;
    h.run(s, "START");
    expect(reply(s, "GET a")).toBe(okEntry("a", '"1"'));
    expect(reply(s, "PUT a 2")).toBe(okEntry("a", '"2"'));
    expect(reply(s, "GET a")).toBe(okEntry("a", '"2"'));
    expect(reply(s, "GET none")).toBe(notFound("none"));
    expect(h.store.get("a")).toBe('"1"');
    expect(reply(other, "GET a")).toBe(okEntry("a", '"1"'));
    expect(reply(other, "PUT unrelated x")).toBe(okEntry("unrelated", '"x"'));
    expect(reply(s, "COMMIT")).toContain("Transaction committed");
    expect(h.store.get("a")).toBe('"2"');
    expect(reply(other, "GET a")).toBe(okEntry("a", '"2"'));

    h.run(s, "START");
    expect(reply(s, "GET a")).toBe(okEntry("a", '"2"'));
    expect(reply(other, "PUT a 3")).toBe(okEntry("a", '"3"'));
    expect(reply(s, "PUT b 1")).toBe(okEntry("b", '"1"'));
    expect(JSON.parse(reply(s, "COMMIT"))).toMatchObject({ code: "CONFLICT" });
    expect(h.store.get("b")).toBeUndefined();

    h.run(s, "START");
    expect(reply(s, "GET absent")).toBe(notFound("absent"));
    expect(reply(other, "PUT absent now")).toBe(okEntry("absent", '"now"'));
    expect(JSON.parse(reply(s, "COMMIT"))).toMatchObject({ code: "CONFLICT" });
  });

  test("refuses, writing and changing nothing, where a transaction needs the general path: its own write held as strings read back, a failed level, the byte budget exceeded", () => {
    const h = new Harness(new RecordingLog(), { initial: [["a", '"1"']], maxTransactionBytes: 30 });
    const s = new Session(false);
    h.run(s, "START");
    expect(h.run(s, 'PUT {"key":"a","value":2}')).toEqual({ reply: okEntry("a", "2"), fast: false });
    expect(h.fast(s, "GET a")).toBe(false);
    expect(h.run(s, "GET a").reply).toBe(okEntry("a", "2"));
    expect(h.fast(s, "PUT b " + "x".repeat(40))).toBe(false);
    expect(JSON.parse(h.run(s, "PUT b " + "x".repeat(40)).reply)).toMatchObject({ code: "TOO_LARGE" });
    // The level failed: GET and PUT are ABORTED until ROLLBACK.
    expect(h.fast(s, "GET a")).toBe(false);
    expect(h.fast(s, "PUT c 1")).toBe(false);
    expect(JSON.parse(h.run(s, "GET a").reply)).toMatchObject({ code: "ABORTED" });
    expect(JSON.parse(h.run(s, "PUT c 1").reply)).toMatchObject({ code: "ABORTED" });
    expect(h.run(s, "ROLLBACK").reply).toContain("rolled back");
    expect(h.run(s, "GET a")).toEqual({ reply: okEntry("a", '"1"'), fast: true });
  });

  test("a PUT in a transaction is charged its whole request line, as the general path charges it: one at the budget passes, one byte over is refused", () => {
    const h = new Harness(new RecordingLog(), { maxTransactionBytes: 30 });
    const s = new Session(false);
    h.run(s, "START");
    expect(h.fast(s, "PUT k " + "x".repeat(24))).toBe(true); // 30 bytes
    h.run(s, "ROLLBACK");
    h.run(s, "START");
    expect(h.fast(s, "PUT k " + "x".repeat(25))).toBe(false); // 31 bytes
    expect(JSON.parse(h.run(s, "PUT k " + "x".repeat(25)).reply)).toMatchObject({ code: "TOO_LARGE" });
  });

  test("a fast-path PUT of any key conflicts a transaction past the read limit (it watches the whole store)", () => {
    const h = new Harness(new RecordingLog());
    h.store.maxWatchesPerTransaction = 2;
    const [reader, writer] = [new Session(false), new Session(false)];
    h.run(reader, "START");
    // General-path reads count towards the limit (fast-path ones are deferred, a small table's worth, not counted).
    for (const key of ["r1", "r2", "r3"]) h.run(reader, `GET {"key":"${key}"}`);
    expect(h.store.watchCounts.everything).toBe(1);
    expect(h.fast(writer, "PUT unrelated 1")).toBe(true);
    h.run(reader, "PUT r1 mine");
    expect(JSON.parse(h.run(reader, "COMMIT").reply)).toMatchObject({ code: "CONFLICT" });
    expect(h.store.get("r1")).toBeUndefined();
  });

  test("STATS watched_keys counts reads noted as bytes (deferred) with the real watches", () => {
    const h = new Harness(new RecordingLog(), { initial: [["a", '"1"']] });
    const s = new Session(false);
    h.run(s, "START");
    expect(h.run(s, "GET a").fast).toBe(true);
    expect(h.run(s, 'GET {"key":"b"}').fast).toBe(false);
    expect(h.store.watchCounts).toMatchObject({ keys: 1, deferredReads: 1 });
    expect((h.executor.statsReport().transactions as { watched_keys: number }).watched_keys).toBe(2);
  });

  test("refuses a GET whose stored value is not ASCII (é, a wide character) and leaves earlier replies intact; an ASCII JSON value is copied", () => {
    const h = new Harness();
    const s = new Session(false);
    for (const [key, value] of [["u", "héllo"], ["w", "tick ✓"], ["n", { a: ["ü"] }], ["e", "😀"]] as const) {
      h.run(s, `PUT ${JSON.stringify({ key, value })}`);
      h.out.text("an earlier reply ✓\n");
      expect(h.fast(s, `GET ${key}`)).toBe(false);
      expect(h.run(s, `GET ${key}`)).toEqual({ reply: okEntry(key, JSON.stringify(value)), fast: false });
    }
    const nested = { n: 1.5, l: [true, null, "q\"b\\s"], o: { k: "v\n" } };
    h.run(s, `PUT ${JSON.stringify({ key: "j", value: nested })}`);
    expect(h.run(s, "GET j")).toEqual({ reply: okEntry("j", JSON.stringify(nested)), fast: true });
  });

  test("refuses a PUT while persistence is failing (the general path answers PERSISTENCE); GETs are still served", () => {
    const h = new Harness(new FailingLog(), { initial: [["a", '"1"']] });
    const s = new Session(false);
    expect(h.fast(s, "PUT a 2")).toBe(false);
    expect(JSON.parse(h.run(s, "PUT a 2").reply)).toMatchObject({ code: "PERSISTENCE" });
    expect(h.run(s, "GET a")).toEqual({ reply: okEntry("a", '"1"'), fast: true });
  });

  test("a COMMIT of several plain PUTs held as bytes is refused as the general path refuses it, applying nothing: past --max-data-bytes, or while persistence fails", () => {
    const value = "v".repeat(1500);
    for (const useFastPath of [true, false]) {
      const log = new RecordingLog();
      const h = new Harness(log);
      h.store.dataLimitBytes = 4096;
      const s = new Session(false);
      h.run(s, "START", useFastPath);
      // Each fits alone; together they do not.
      for (const key of ["a", "b", "c"]) expect(h.run(s, `PUT ${key} ${value}`, useFastPath).fast).toBe(useFastPath);
      expect(JSON.parse(h.run(s, "COMMIT").reply)).toMatchObject({ code: "TOO_LARGE", message: expect.stringContaining("Store full") });
      expect([h.store.size, h.store.seq, log.records.length]).toEqual([0, 0, 0]);
      h.run(s, "START", useFastPath);
      for (const key of ["a", "b"]) h.run(s, `PUT ${key} 1`, useFastPath);
      (log as { unavailableReason: string | null }).unavailableReason = "disk full (test)";
      expect(JSON.parse(h.run(s, "COMMIT").reply)).toMatchObject({ code: "PERSISTENCE", message: expect.stringContaining("disk full (test)") });
      expect([h.store.size, h.store.seq, log.records.length, s.tx]).toEqual([0, 0, 0, null]);
    }
  });

  test("a fast-path PUT sets the durability wait and journals the record exactly as the general path does", () => {
    const fast = new Harness(new RecordingLog((seq) => seq));
    const general = new Harness(new RecordingLog((seq) => seq));
    const a = new Session(false);
    const b = new Session(false);
    for (const line of ["PUT k v", "PUT k {x} y z ", "PUT other 1"]) {
      expect(fast.fast(a, line)).toBe(true);
      general.run(b, line, false);
      expect(a.waitSeq).toBe(fast.store.seq);
      expect(a.waitSeq).toBe(b.waitSeq);
    }
    expect((fast.log as RecordingLog).records).toEqual((general.log as RecordingLog).records);
    expect((fast.log as RecordingLog).records[1]).toEqual({ seq: 2, ops: [["k", '"{x} y z "']] });
  });

  test("a fast-path PUT conflicts a transaction exactly as a general-path PUT does (read keys, absent keys, KEYS prefixes)", () => {
    const scenarios: { name: string; watch: string; put: string; expected: "CONFLICT" | "committed" }[] = [
      { name: "read a present key", watch: "GET w:a", put: "PUT w:a new", expected: "CONFLICT" },
      { name: "read an absent key", watch: "GET w:none", put: "PUT w:none new", expected: "CONFLICT" },
      { name: "KEYS, then a new key under the prefix", watch: "KEYS w:", put: "PUT w:new x", expected: "CONFLICT" },
      { name: "read a different key", watch: "GET w:a", put: "PUT other x", expected: "committed" },
    ];
    for (const scenario of scenarios) {
      const outcomes: string[] = [];
      for (const useFastPath of [true, false]) {
        const h = new Harness(new RecordingLog(), { initial: [["w:a", '"old"']] });
        const tx = new Session(false);
        const writer = new Session(false);
        h.run(tx, "START");
        h.run(tx, scenario.watch);
        h.run(tx, "PUT w:mine 1");
        expect(h.run(writer, scenario.put, useFastPath).fast).toBe(useFastPath);
        const commit = h.run(tx, "COMMIT").reply;
        outcomes.push(commit.includes("CONFLICT") ? "CONFLICT" : commit.includes("committed") ? "committed" : commit);
      }
      expect({ scenario: scenario.name, outcomes }).toEqual({ scenario: scenario.name, outcomes: [scenario.expected, scenario.expected] });
    }
  });
});

describe("deferred watches and transaction writes held as bytes", () => {
  const reply = (h: Harness, session: Session, line: string) => h.run(session, line).reply;
  const codeOf = (text: string) => (JSON.parse(text) as { code?: string }).code ?? "Ok";

  test("a fast-path read in a transaction is noted as bytes, stays so across commits of other keys, and a commit of its key conflicts it", () => {
    const h = new Harness(new RecordingLog(), { initial: [["k", '"1"']] });
    const [reader, writer] = [new Session(false), new Session(false)];
    h.run(reader, "START");
    expect(h.run(reader, "GET k")).toEqual({ reply: okEntry("k", '"1"'), fast: true });
    expect(h.store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 1, everything: 0 });
    expect(h.run(writer, "PUT other 2").fast).toBe(true);
    // Nothing became a watch: the commit looked for its key among the deferred reads.
    expect(h.store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 1, everything: 0 });
    expect(h.run(writer, "PUT k 2").fast).toBe(true);
    expect(codeOf(reply(h, reader, "COMMIT"))).toBe("CONFLICT");
    expect(h.store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
  });

  test("a deferred read conflicts with every kind of commit of its key: plain PUT, general PUT, DEL, and a transaction's PUT or DEL", () => {
    const commits: [string, string[]][] = [
      ["plain PUT", ["PUT k 2"]],
      ["general PUT", ['PUT k "2"']],
      ["DEL", ["DEL k"]],
      ["one-PUT transaction", ["START", "PUT k 2", "COMMIT"]],
      ["transaction of several writes", ["START", "PUT a 1", "DEL k", "PUT b 2", "COMMIT"]],
      ["transaction reading k as well", ["START", "GET k", "PUT k 3", "COMMIT"]],
    ];
    for (const [name, lines] of commits) {
      const h = new Harness(new RecordingLog(), { initial: [["k", '"1"']] });
      const [reader, writer] = [new Session(false), new Session(false)];
      h.run(reader, "START");
      expect(h.run(reader, "GET k").fast).toBe(true);
      for (const line of lines) h.run(writer, line);
      expect({ name, outcome: codeOf(reply(h, reader, "COMMIT")) }).toEqual({ name, outcome: "CONFLICT" });
      expect(h.store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
    }
  });

  test("a commit of another key of the same length and hash filter does not conflict a deferred read", () => {
    const h = new Harness(new RecordingLog(), { initial: [["k1", '"1"']] });
    const [reader, writer] = [new Session(false), new Session(false)];
    h.run(reader, "START");
    h.run(reader, "GET k1");
    for (const key of ["k2", "k", "k10", "K1"]) h.run(writer, `PUT ${key} 1`);
    h.run(writer, 'PUT {"key":"k\u0131","value":"1"}'); // "kı": a code unit above 0xff whose low byte is "1"
    expect(reply(h, reader, "COMMIT")).toContain("Transaction committed");
  });

  test("a transaction that ends drops only its own deferred reads; another's still conflict", () => {
    const h = new Harness(new RecordingLog());
    const [a, b, writer] = [new Session(false), new Session(false), new Session(false)];
    h.run(a, "START");
    h.run(a, "GET x");
    h.run(b, "START");
    h.run(b, "GET y");
    expect(h.store.watchCounts.deferredReads).toBe(2);
    h.run(a, "ROLLBACK");
    expect(h.store.watchCounts.deferredReads).toBe(1);
    h.run(writer, "PUT x 1");
    h.run(writer, "PUT y 1");
    expect(codeOf(reply(h, b, "COMMIT"))).toBe("CONFLICT");
    h.run(a, "START");
    h.run(a, "GET x");
    expect(reply(h, a, "COMMIT")).toContain("Transaction committed");
    expect(h.store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
  });

  test(`past ${DEFERRED_READS_MAX} deferred reads they become watches at once (bounded memory and commit scans), and still conflict`, () => {
    const h = new Harness(new RecordingLog());
    const [reader, other, writer] = [new Session(false), new Session(false), new Session(false)];
    h.run(reader, "START");
    h.run(other, "START");
    h.run(other, "GET kept");
    for (let i = 0; i < 3000; i++) h.run(reader, "GET same");
    expect(h.store.watchCounts.deferredReads).toBeLessThanOrEqual(DEFERRED_READS_MAX);
    expect(h.store.watchCounts.keys).toBe(2);
    h.out.clear();
    h.run(writer, "PUT same 1");
    h.run(writer, "PUT kept 1");
    expect(codeOf(reply(h, reader, "COMMIT"))).toBe("CONFLICT");
    expect(codeOf(reply(h, other, "COMMIT"))).toBe("CONFLICT");
    expect(h.store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
  });

  test(`a read of a key longer than ${DEFERRED_KEY_MAX_BYTES} bytes is watched at once, and conflicts`, () => {
    const long = "k".repeat(DEFERRED_KEY_MAX_BYTES + 1);
    const h = new Harness(new RecordingLog(), { initial: [[long, '"1"']] });
    const [reader, writer] = [new Session(false), new Session(false)];
    h.run(reader, "START");
    expect(h.run(reader, `GET ${long}`).fast).toBe(true);
    expect(h.store.watchCounts).toEqual({ keys: 1, prefixes: 0, deferredReads: 0, everything: 0 });
    h.run(writer, `PUT ${long} 2`);
    expect(codeOf(reply(h, reader, "COMMIT"))).toBe("CONFLICT");
    expect(h.store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
  });

  test("a read of another key after a PUT held as bytes leaves that write as bytes (the COMMIT still commits from them) and is watched; its own key reads back from the bytes", () => {
    const h = new Harness(new RecordingLog(), { initial: [["k1", '"1"'], ["k2", '"2"']] });
    const [tx, writer] = [new Session(false), new Session(false)];
    h.run(tx, "START");
    expect(h.run(tx, "PUT k3 v").fast).toBe(true);
    for (const other of ["GET k1", "GET k2", "GET k", "GET k30"]) expect(h.run(tx, other).fast).toBe(true);
    expect(tx.tx!.asciiChangeCount()).toBe(1);
    // Its own key: answered from the write's bytes, unwatched (a commit of k3 by another would not conflict it).
    expect(h.run(tx, "GET k3")).toEqual({ reply: okEntry("k3", '"v"'), fast: true });
    expect(tx.tx!.asciiChangeCount()).toBe(1);
    h.run(writer, "PUT k2 changed");
    expect(codeOf(reply(h, tx, "COMMIT"))).toBe("CONFLICT");
    expect(h.store.get("k3")).toBeUndefined();
    // Without the conflict, the write held as bytes commits.
    h.run(tx, "START");
    h.run(tx, "PUT k3 w");
    h.run(tx, "GET k1");
    expect(tx.tx!.asciiChangeCount()).toBe(1);
    expect(reply(h, tx, "COMMIT")).toContain("Transaction committed");
    expect(h.store.get("k3")).toBe('"w"');
  });

  test("a transaction of plain PUTs commits from their bytes: the same store, journal record and durability wait as the general path", () => {
    const fast = new Harness(new RecordingLog((seq) => seq), { initial: [["k", '"0"']] });
    const general = new Harness(new RecordingLog((seq) => seq), { initial: [["k", '"0"']] });
    const [a, b] = [new Session(false), new Session(false)];
    for (const [h, s, useFastPath] of [[fast, a, true], [general, b, false]] as const) {
      const lines = ["START", "GET k", "PUT k {v} w", "COMMIT", "START", "PUT new 1", "COMMIT"];
      // Several PUTs, one read back from its bytes: one commit, one record, its ops in the order written.
      lines.push("START", "GET a", "PUT b 2", "PUT a 1", "GET b", "PUT c 3", "COMMIT");
      for (const line of lines) h.run(s, line, useFastPath);
    }
    expect(a.waitSeq).toBe(3);
    expect(b.waitSeq).toBe(3);
    expect(fast.batch).toBe(general.batch);
    expect((fast.log as RecordingLog).records).toEqual([
      { seq: 1, ops: [["k", '"{v} w"']] },
      { seq: 2, ops: [["new", '"1"']] },
      {
        seq: 3,
        ops: [
          ["b", '"2"'],
          ["a", '"1"'],
          ["c", '"3"'],
        ],
      },
    ]);
    expect((fast.log as RecordingLog).records).toEqual((general.log as RecordingLog).records);
    expect(new Map(fast.store.entries())).toEqual(new Map(general.store.entries()));
  });

  test("a write held as bytes keeps its meaning through reads of it, later writes, nested levels and rollbacks", () => {
    const h = new Harness(new RecordingLog());
    const s = new Session(false);
    const run = (line: string) => h.run(s, line).reply;
    // Read back, then overwritten by a JSON-form PUT in the same level.
    run("START");
    run("PUT a 1");
    expect(run("GET a")).toBe(okEntry("a", '"1"'));
    run('PUT {"key":"a","value":[1]}');
    run("PUT b 2");
    run("COMMIT");
    expect([h.store.get("a"), h.store.get("b")]).toEqual(["[1]", '"2"']);
    // Written in a nested level that is rolled back: gone; the outer level's write stays.
    run("START");
    run("PUT c 1");
    run("START");
    run("PUT c 2");
    run("ROLLBACK");
    expect(run("GET c")).toBe(okEntry("c", '"1"'));
    run("COMMIT");
    expect(h.store.get("c")).toBe('"1"');
    // Written in a nested level that commits into its parent: committed with the outer COMMIT.
    run("START");
    run("START");
    run("PUT d 1");
    run("COMMIT");
    expect(h.store.get("d")).toBeUndefined();
    run("COMMIT");
    expect(h.store.get("d")).toBe('"1"');
    // A rolled-back nested level's write does not come back in a new level at the same depth.
    run("START");
    run("START");
    run("PUT g 1");
    run("ROLLBACK");
    run("START");
    run("COMMIT");
    run("COMMIT");
    expect(h.store.get("g")).toBeUndefined();
    // The whole transaction rolled back: nothing.
    run("START");
    run("PUT e 1");
    run("ROLLBACK");
    expect(h.store.get("e")).toBeUndefined();
    // KEYS inside the transaction sees the write held as bytes.
    run("START");
    run("PUT f:1 x");
    expect(JSON.parse(run("KEYS f:")).result).toEqual(["f:1"]);
    run("COMMIT");
    expect((h.log as RecordingLog).records.map((r) => r.ops)).toEqual([
      [["a", "[1]"], ["b", '"2"']],
      [["c", '"1"']],
      [["d", '"1"']],
      [["f:1", '"x"']],
    ]);
  });
});

// ---------------------------------------------------------------- (7) end to end

let server: RunningServer & { logs: string[] };

beforeAll(async () => {
  // Long lines and big pipelined writes: a generous request limit and partial-request pause.
  server = await startInProcess(["--max-request-bytes", "300000", "--partial-request-ms", "5000"]);
});
afterAll(async () => {
  await server.shutdown();
});

/** One request, its raw reply line (no LF). */
async function raw(c: LineClient, line: string): Promise<string> {
  c.write(line + "\n");
  return c.readLine();
}

const ok = (key: string, value: unknown): Reply => ({ status: "Ok", result: { key, value } });
const statsOf = async (c: LineClient) => (await c.request("STATS")).result as { stats: { commands: number; commands_by_type: Record<string, number>; errors_by_code: Record<string, number> } };

describe("end to end through a real server", () => {
  test("values stored with the JSON form (non-ASCII, nested, escapes) read back with plain GET exactly as the general path answers", async () => {
    const c = await LineClient.connect(server.port);
    const values: unknown[] = ["héllo", "tick ✓ 😀", { a: [1, { b: "ü" }], c: null }, { n: 1.5, l: [true, null], s: 'q"b\\s\n\t' }, 'a "quoted" \\ value', [], 0, "plain"];
    for (const [i, value] of values.entries()) {
      const key = `e2e:json${i}`;
      expect(await c.request(`PUT ${JSON.stringify({ key, value })}`)).toEqual(ok(key, value));
      const plainGet = await raw(c, `GET ${key}`);
      expect(plainGet).toBe(await raw(c, `GET ${JSON.stringify({ key })}`)); // the JSON form: the general path
      expect(plainGet).toBe(okEntry(key, JSON.stringify(value)).slice(0, -1));
      expect(await raw(c, `get\t${key}  `)).toBe(plainGet);
    }
    // Overwritten from non-ASCII to ASCII and back, read by plain GET each time.
    for (const value of ["ünï", "ascii again", { x: "✓" }, "last"]) {
      await c.request(`PUT ${JSON.stringify({ key: "e2e:flip", value })}`);
      expect(await raw(c, "GET e2e:flip")).toBe(okEntry("e2e:flip", JSON.stringify(value)).slice(0, -1));
    }
    c.close();
  });

  test("plain PUT then plain GET: the value is the rest of the line, as a string", async () => {
    const c = await LineClient.connect(server.port);
    expect(await raw(c, "PUT e2e:p {a:1}  two  words ")).toBe(okEntry("e2e:p", JSON.stringify("{a:1}  two  words ")).slice(0, -1));
    expect(await c.request("GET e2e:p")).toEqual(ok("e2e:p", "{a:1}  two  words "));
    expect(await c.request('GET {"key":"e2e:p"}')).toEqual(ok("e2e:p", "{a:1}  two  words "));
    c.close();
  });

  test("a GET of a missing key answers NOT_FOUND, byte for byte the general path's reply", async () => {
    const c = await LineClient.connect(server.port);
    const reply = await raw(c, "GET e2e:nope");
    expect(reply).toBe(notFound("e2e:nope").slice(0, -1));
    expect(reply).toBe(await raw(c, 'GET {"key":"e2e:nope"}'));
    expect(JSON.parse(reply)).toEqual({ status: "Error", code: "NOT_FOUND", message: "Key not found: e2e:nope" });
    c.close();
  });

  test("a pipelined batch mixing plain PUT/GET with START/GET/PUT/COMMIT/ROLLBACK keeps reply order and transaction semantics", async () => {
    const c = await LineClient.connect(server.port);
    const notFoundReply = (key: string): Reply => ({ status: "Error", code: "NOT_FOUND", message: `Key not found: ${key}` });
    const replies = await c.pipeline([
      "PUT t:a 1",
      "GET t:a",
      "START",
      "GET t:a",
      "PUT t:a 2",
      "GET t:a", // own write
      "GET t:missing",
      "PUT t:b x y",
      "COMMIT",
      "GET t:a",
      "get t:b",
      "START",
      "PUT t:r rolled",
      "GET t:r",
      "ROLLBACK",
      "GET t:r",
      "PUT t:a 3",
      "GET t:a",
    ]);
    expect(replies).toEqual([
      ok("t:a", "1"),
      ok("t:a", "1"),
      { status: "Ok", result: "Transaction started" },
      ok("t:a", "1"),
      ok("t:a", "2"),
      ok("t:a", "2"),
      notFoundReply("t:missing"),
      ok("t:b", "x y"),
      { status: "Ok", result: "Transaction committed" },
      ok("t:a", "2"),
      ok("t:b", "x y"),
      { status: "Ok", result: "Transaction started" },
      ok("t:r", "rolled"),
      ok("t:r", "rolled"),
      { status: "Ok", result: "Transaction rolled back" },
      notFoundReply("t:r"),
      ok("t:a", "3"),
      ok("t:a", "3"),
    ]);
    expect(c.unread).toBe("");
    c.close();
  });

  test("a plain PUT from another connection makes a transaction that read the key CONFLICT; a plain GET does not see uncommitted writes", async () => {
    const tx = await LineClient.connect(server.port);
    const other = await LineClient.connect(server.port);
    expect(await tx.request("PUT c:k before")).toEqual(ok("c:k", "before"));
    expect(await tx.pipeline(["START", "GET c:k", "GET c:absent"])).toEqual([
      { status: "Ok", result: "Transaction started" },
      ok("c:k", "before"),
      { status: "Error", code: "NOT_FOUND", message: "Key not found: c:absent" },
    ]);
    expect(await tx.request("PUT c:mine uncommitted")).toEqual(ok("c:mine", "uncommitted"));
    expect(await other.request("GET c:mine")).toMatchObject({ code: "NOT_FOUND" });
    expect(await other.request("PUT c:k changed")).toEqual(ok("c:k", "changed"));
    expect(await tx.request("COMMIT")).toMatchObject({ status: "Error", code: "CONFLICT" });
    expect(await other.request("GET c:k")).toEqual(ok("c:k", "changed"));
    expect(await other.request("GET c:mine")).toMatchObject({ code: "NOT_FOUND" });

    // An absent key read in a transaction, then created by a plain PUT elsewhere: CONFLICT too.
    expect(await tx.pipeline(["START", "GET c:later"])).toEqual([{ status: "Ok", result: "Transaction started" }, expect.objectContaining({ code: "NOT_FOUND" })]);
    expect(await other.request("PUT c:later now")).toEqual(ok("c:later", "now"));
    expect(await tx.request("PUT c:x 1")).toEqual(ok("c:x", "1"));
    expect(await tx.request("COMMIT")).toMatchObject({ code: "CONFLICT" });

    // A PUT first, then a read of another key (the write stays bytes): that read is watched, and its own key reads back.
    expect(await tx.pipeline(["START", "PUT c:w first", "GET c:k", "GET c:w"])).toEqual([
      { status: "Ok", result: "Transaction started" },
      ok("c:w", "first"),
      ok("c:k", "changed"),
      ok("c:w", "first"),
    ]);
    expect(await other.request("PUT c:k again")).toEqual(ok("c:k", "again"));
    expect(await tx.request("COMMIT")).toMatchObject({ code: "CONFLICT" });
    expect(await other.request("GET c:w")).toMatchObject({ code: "NOT_FOUND" });
    expect(await tx.pipeline(["START", "PUT c:w second", "GET c:k", "COMMIT"])).toEqual([
      { status: "Ok", result: "Transaction started" },
      ok("c:w", "second"),
      ok("c:k", "again"),
      { status: "Ok", result: "Transaction committed" },
    ]);
    expect(await other.request("GET c:w")).toEqual(ok("c:w", "second"));
    expect(await other.request("PUT c:k changed")).toEqual(ok("c:k", "changed"));

    // Untouched by others: the transaction commits and plain GETs see it.
    expect(await tx.pipeline(["START", "GET c:k", "PUT c:k mine", "COMMIT", "GET c:k"])).toEqual([
      { status: "Ok", result: "Transaction started" },
      ok("c:k", "changed"),
      ok("c:k", "mine"),
      { status: "Ok", result: "Transaction committed" },
      ok("c:k", "mine"),
    ]);
    expect(await other.request("GET c:k")).toEqual(ok("c:k", "mine"));
    tx.close();
    other.close();
  });

  test("a transfer of plain GETs and PUTs commits both writes at once, reads its own writes, and applies neither when another connection changed a key it read", async () => {
    const tx = await LineClient.connect(server.port);
    const other = await LineClient.connect(server.port);
    const started: Reply = { status: "Ok", result: "Transaction started" };
    const committed: Reply = { status: "Ok", result: "Transaction committed" };
    expect(await other.pipeline(["PUT x:a 100", "PUT x:b 0"])).toEqual([ok("x:a", "100"), ok("x:b", "0")]);
    for (const changed of ["x:a", "x:b"]) {
      expect(await tx.pipeline(["START", "GET x:a", "GET x:b", "PUT x:a 70", "PUT x:b 30", "GET x:b", "GET x:a"])).toEqual([
        started,
        ok("x:a", "100"),
        ok("x:b", "0"),
        ok("x:a", "70"),
        ok("x:b", "30"),
        ok("x:b", "30"),
        ok("x:a", "70"),
      ]);
      expect(await other.request("GET x:a")).toEqual(ok("x:a", "100"));
      expect(await other.request(`PUT ${changed} ${changed === "x:a" ? 100 : 0}`)).toMatchObject({ status: "Ok" });
      expect(await tx.request("COMMIT")).toMatchObject({ status: "Error", code: "CONFLICT" });
      expect(await other.pipeline(["GET x:a", "GET x:b"])).toEqual([ok("x:a", "100"), ok("x:b", "0")]);
    }
    expect(await tx.pipeline(["START", "GET x:a", "GET x:b", "PUT x:a 70", "PUT x:b 30", "COMMIT"])).toEqual([
      started,
      ok("x:a", "100"),
      ok("x:b", "0"),
      ok("x:a", "70"),
      ok("x:b", "30"),
      committed,
    ]);
    expect(await other.pipeline(["GET x:a", "GET x:b"])).toEqual([ok("x:a", "70"), ok("x:b", "30")]);
    tx.close();
    other.close();
  });

  test("plain PUTs overwriting keys with ever longer values, pipelined, read back exactly", async () => {
    const c = await LineClient.connect(server.port);
    const lines: string[] = [];
    const expected: Reply[] = [];
    const last = new Map<string, string>();
    for (let i = 0; i < 600; i++) {
      const key = `grow:${i % 7}`;
      const value = "v".repeat(i) + i;
      lines.push(`PUT ${key} ${value}`, `GET ${key}`);
      expected.push(ok(key, value), ok(key, value));
      last.set(key, value);
    }
    expect(await c.pipeline(lines)).toEqual(expected);
    for (const [key, value] of last) expect(await c.request(`GET ${key}`)).toEqual(ok(key, value));
    c.close();
  });

  test("a batch of big fast-path replies, larger than the reply buffer and the output limit, arrives whole and in order", async () => {
    const c = await LineClient.connect(server.port);
    const big = "b".repeat(200_000);
    expect(await c.request(`PUT big:v ${big}`)).toEqual(ok("big:v", big));
    const lines: string[] = [];
    for (let i = 0; i < 12; i++) lines.push("GET big:v", `PUT big:n${i} ${i}`, "GET big:missing");
    const replies = await c.pipeline(lines);
    for (let i = 0; i < 12; i++) {
      expect(replies[3 * i]).toEqual(ok("big:v", big));
      expect(replies[3 * i + 1]).toEqual(ok(`big:n${i}`, String(i)));
      expect(replies[3 * i + 2]).toMatchObject({ code: "NOT_FOUND" });
    }
    expect(c.unread).toBe("");
    c.close();
  });

  test("STATS counts fast-path GETs and PUTs in commands_by_type and missing keys in errors_by_code.NOT_FOUND", async () => {
    const c = await LineClient.connect(server.port);
    const before = (await statsOf(c)).stats;
    await c.pipeline(["PUT s:a 1", "PUT s:b 2", "put s:a 3", "GET s:a", "GET s:b", "GET s:none1", "get s:none2", "GET s:none3"]);
    const after = (await statsOf(c)).stats;
    const delta = (of: Record<string, number>, was: Record<string, number>, name: string) => (of[name] ?? 0) - (was[name] ?? 0);
    expect(delta(after.commands_by_type, before.commands_by_type, "PUT")).toBe(3);
    expect(delta(after.commands_by_type, before.commands_by_type, "GET")).toBe(5);
    expect(delta(after.commands_by_type, before.commands_by_type, "STATS")).toBe(1);
    expect(delta(after.errors_by_code, before.errors_by_code, "NOT_FOUND")).toBe(3);
    expect(after.commands - before.commands).toBe(3 + 5 + 1);
    c.close();
  });

  test("with a password, plain GET and PUT before AUTH answer AUTH_REQUIRED and store nothing; after AUTH they work", async () => {
    const secured = await startInProcess(["--password", "fast-path-pw"]);
    try {
      const c = await LineClient.connect(secured.port);
      expect(await c.pipeline(["GET a", "PUT a 1", "AUTH fast-path-pw", "GET a", "PUT a 1", "GET a"])).toEqual([
        expect.objectContaining({ status: "Error", code: "AUTH_REQUIRED" }),
        expect.objectContaining({ status: "Error", code: "AUTH_REQUIRED" }),
        { status: "Ok", result: "Authenticated" },
        expect.objectContaining({ code: "NOT_FOUND" }),
        ok("a", "1"),
        ok("a", "1"),
      ]);
      // Authentication is per connection.
      const d = await LineClient.connect(secured.port);
      expect(await d.request("GET a")).toMatchObject({ code: "AUTH_REQUIRED" });
      c.close();
      d.close();
    } finally {
      await secured.shutdown();
    }
  });

  test("under --fsync always, plain PUT replies wait for the fsync, the replies behind them keep their order, and a restart reads the writes back", async () => {
    const dir = tempDir();
    const start = () => startInProcess(["--data", `${dir.path}/data.json`, "--fsync", "always"]);
    let durable = await start();
    try {
      const c = await LineClient.connect(durable.port);
      const lines = ["PUT d:a 1", "GET d:a", "PUT d:a 2", "GET d:missing", "PING", "PUT d:b x", "GET d:a", "GET d:b", "put d:c {a:1}  b~ ", "START", "PUT d:t in-tx", "COMMIT"];
      expect(await c.pipeline(lines)).toEqual([
        ok("d:a", "1"),
        ok("d:a", "1"),
        ok("d:a", "2"),
        expect.objectContaining({ code: "NOT_FOUND" }),
        { status: "Ok", result: "PONG" },
        ok("d:b", "x"),
        ok("d:a", "2"),
        ok("d:b", "x"),
        ok("d:c", "{a:1}  b~ "),
        { status: "Ok", result: "Transaction started" },
        ok("d:t", "in-tx"),
        { status: "Ok", result: "Transaction committed" },
      ]);
      c.close();
      await durable.shutdown();
      durable = await start();
      const d = await LineClient.connect(durable.port);
      expect(await d.pipeline(["GET d:a", "GET d:b", "GET d:c", "GET d:t"])).toEqual([ok("d:a", "2"), ok("d:b", "x"), ok("d:c", "{a:1}  b~ "), ok("d:t", "in-tx")]);
      d.close();
    } finally {
      await durable.shutdown();
      dir.cleanup();
    }
  });

  test("no handler failed on the shared server", () => {
    expect(server.logs.filter((line) => line.includes("handler failed"))).toEqual([]);
  });
});
