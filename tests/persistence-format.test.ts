/**
 * Unit tests of the persistence file formats (lib/persistence/*-format.ts):
 * snapshot and journal encoding round trips, and the damage each decoder must
 * refuse or (journal tail only) drop.
 */
import { describe, expect, test } from "bun:test";
import { encodeRecord, JournalFormatError, scanJournal, writeAsciiPutsRecord } from "../lib/persistence/journal-format.ts";
import { ByteBuffer } from "../lib/byte-buffer.ts";
import { crc32 } from "../lib/crc32.ts";
import { seededRandom } from "./helpers.ts";
import {
  decodeSnapshot,
  snapshotEntry,
  snapshotHeader,
  snapshotTrailer,
  SnapshotFormatError,
} from "../lib/persistence/snapshot-format.ts";

function encodeSnapshot(seq: number, entries: [string, string][]): Buffer {
  let body = "";
  entries.forEach(([k, v], i) => (body += snapshotEntry(i === 0, k, v)));
  const bodyBytes = Buffer.from(body);
  return Buffer.concat([
    Buffer.from(snapshotHeader(seq)),
    bodyBytes,
    Buffer.from(snapshotTrailer(entries.length, Bun.hash.crc32(bodyBytes), seq)),
  ]);
}

const awkward: [string, string][] = [
  ["plain", JSON.stringify("value1")],
  ['quote"in\\key', JSON.stringify("v")],
  ["line\nbreak key", JSON.stringify("multi\nline")],
  ["unicode ключ 🔑", JSON.stringify("значение")],
  ["colon\":key", "42"],
  ["object", JSON.stringify({ a: [1, { b: null }] })],
  ["null-value", "null"],
  ["bool", "true"],
  ["{starts with brace", JSON.stringify(" spaced  value ")],
];

describe("snapshot format", () => {
  test("round trips keys and values of every kind, and is one valid JSON document", () => {
    const bytes = encodeSnapshot(17, awkward);
    const decoded = decodeSnapshot(bytes);
    expect(decoded.seq).toBe(17);
    expect(decoded.format).toBe("txkv");
    expect([...decoded.entries]).toEqual(awkward);
    const whole = JSON.parse(bytes.toString());
    expect(Object.keys(whole.data)).toEqual(awkward.map(([k]) => k));
    expect(whole.data["object"]).toEqual({ a: [1, { b: null }] });
  });

  test("an empty store round trips", () => {
    const decoded = decodeSnapshot(encodeSnapshot(0, []));
    expect(decoded.entries.size).toBe(0);
    expect(JSON.parse(encodeSnapshot(0, []).toString()).data).toEqual({});
  });

  test("a value holding a raw line feed is re-encoded on one line", () => {
    const decoded = decodeSnapshot(encodeSnapshot(1, [["k", '{\n"a": 1\n}']]));
    expect(decoded.entries.get("k")).toBe('{"a":1}');
  });

  test("a flipped byte is refused with a checksum error", () => {
    const bytes = encodeSnapshot(3, awkward);
    const at = bytes.indexOf("value1");
    bytes[at] = "V".charCodeAt(0);
    expect(() => decodeSnapshot(bytes)).toThrow(/checksum mismatch/);
  });

  test("a seq changed in the first line (which the checksum does not cover) is refused; a closing line without a seq (older files) is accepted", () => {
    const bytes = encodeSnapshot(3, awkward);
    const edited = Buffer.from(bytes.toString().replace('"seq":3}', '"seq":9}'));
    expect(() => decodeSnapshot(edited)).toThrow(/line 1 gives seq 9 but the closing line seq 3/);
    const older = Buffer.from(bytes.toString().replace(',"seq":3}}\n', "}}\n"));
    expect(decodeSnapshot(older).seq).toBe(3);
    expect(() => decodeSnapshot(Buffer.from(bytes.toString().replace(',"seq":3}}\n', ',"seq":-1}}\n')))).toThrow(/closing line/);
  });

  test("a byte flipped anywhere in the first or the last line (outside the checksum) is refused or changes nothing, never read as a plain JSON object", () => {
    const bytes = encodeSnapshot(3, awkward);
    const firstLineEnd = bytes.indexOf(10);
    const lastLineStart = bytes.lastIndexOf(10, bytes.length - 2) + 1;
    const positions = [...Array.from({ length: firstLineEnd }, (_, i) => i), ...Array.from({ length: bytes.length - 1 - lastLineStart }, (_, i) => lastLineStart + i)];
    for (const at of positions) {
      for (const mask of [0x01, 0x20]) {
        const damaged = Buffer.from(bytes);
        damaged[at]! ^= mask;
        let outcome: string;
        try {
          const decoded = decodeSnapshot(damaged);
          // Harmless only if nothing read differs: a flip in the closing line's optional "seq" name reads as an older file's.
          const same = decoded.format === "txkv" && decoded.seq === 3 && Bun.deepEquals([...decoded.entries], awkward);
          outcome = same ? "safe" : `loaded as ${decoded.format}, seq ${decoded.seq}, ${decoded.entries.size} keys`;
        } catch (err) {
          outcome = err instanceof SnapshotFormatError ? "safe" : `failed: ${String(err)}`;
        }
        expect(`byte ${at} ^ ${mask}: ${outcome}`).toBe(`byte ${at} ^ ${mask}: safe`);
      }
    }
  });

  test("a truncated snapshot is refused", () => {
    const bytes = encodeSnapshot(3, awkward);
    expect(() => decodeSnapshot(bytes.subarray(0, bytes.length - 20))).toThrow(SnapshotFormatError);
    expect(() => decodeSnapshot(bytes.subarray(0, 30))).toThrow(SnapshotFormatError);
    expect(() => decodeSnapshot(Buffer.alloc(0))).toThrow(/empty/);
  });

  test("a wrong entry count is refused, more entries than announced as well as fewer", () => {
    const good = encodeSnapshot(3, awkward).toString();
    for (const keys of [awkward.length + 1, awkward.length - 1, 0]) {
      const bad = good.replace(`"keys":${awkward.length}`, `"keys":${keys}`);
      expect(() => decodeSnapshot(Buffer.from(bad))).toThrow(/announces/);
    }
  });

  test("an unknown version is refused", () => {
    const bad = encodeSnapshot(3, []).toString().replace('"version":1', '"version":9');
    expect(() => decodeSnapshot(Buffer.from(bad))).toThrow("line 1: unsupported snapshot version 9");
  });

  test("a header missing its version or seq is refused, naming the missing field", () => {
    const good = encodeSnapshot(3, []).toString();
    expect(() => decodeSnapshot(Buffer.from(good.replace('"version":1,', "")))).toThrow("line 1: the header names no snapshot version");
    expect(() => decodeSnapshot(Buffer.from(good.replace(',"seq":3},"data"', '},"data"')))).toThrow("line 1: the header has no valid seq");
    expect(() => decodeSnapshot(Buffer.from(good.replace('"format":"txkv-snapshot",', "")))).toThrow("no txkv-snapshot format field");
  });

  test("a header without a valid seq is refused, named", () => {
    for (const seq of ['"3"', "-1", "1.5", "9007199254740993"]) {
      const bad = encodeSnapshot(3, []).toString().replace('"seq":3},"data"', `"seq":${seq}},"data"`);
      expect(bad).not.toBe(encodeSnapshot(3, []).toString());
      expect(() => decodeSnapshot(Buffer.from(bad))).toThrow("line 1: the header has no valid seq");
    }
  });

  test("a plain JSON object (the original server's data.json) loads at seq 0", () => {
    const decoded = decodeSnapshot(Buffer.from('{"key1": "value1", "n": 2, "o": {"a": [1]}}'));
    expect(decoded.format).toBe("plain-json");
    expect(decoded.seq).toBe(0);
    expect([...decoded.entries]).toEqual([
      ["key1", '"value1"'],
      ["n", "2"],
      ["o", '{"a":[1]}'],
    ]);
  });

  test("a hand-formatted plain JSON object that has one line like a txkv snapshot's loads as a plain object", () => {
    expect([...decodeSnapshot(Buffer.from('{"x":1,"data":{\n"a":1}}')).entries]).toEqual([
      ["x", "1"],
      ["data", '{"a":1}'],
    ]);
    const endLike = decodeSnapshot(Buffer.from('{"data":{\n"a":1\n},"end":{"keys":1}}\n'));
    expect(endLike.format).toBe("plain-json");
    expect([...endLike.entries]).toEqual([
      ["data", '{"a":1}'],
      ["end", '{"keys":1}'],
    ]);
  });

  test("a plain JSON object keeps integers beyond 2^53 exactly", () => {
    const decoded = decodeSnapshot(Buffer.from('{"id": 12345678901234567890, "o": {"ids": [-9007199254740993]}}'));
    expect([...decoded.entries]).toEqual([
      ["id", "12345678901234567890"],
      ["o", '{"ids":[-9007199254740993]}'],
    ]);
  });

  test("a plain JSON object with an empty key is refused (PROTOCOL: keys are non-empty), not loaded", () => {
    expect(() => decodeSnapshot(Buffer.from('{"a": 1, "": 2}'))).toThrow(/empty key/);
  });

  test("invalid JSON and non-object JSON are refused", () => {
    expect(() => decodeSnapshot(Buffer.from('{"key1": "val'))).toThrow(/not valid JSON/);
    expect(() => decodeSnapshot(Buffer.from("[1,2]"))).toThrow(/not a txkv snapshot/);
  });

  test("bytes that are not UTF-8 are refused, not read as U+FFFD", () => {
    const plain = Buffer.concat([Buffer.from('{"k": "a'), Buffer.from([0xff]), Buffer.from('b"}')]);
    expect(() => decodeSnapshot(plain)).toThrow(/not valid UTF-8/);
    // A real U+FFFD is a character like any other.
    expect([...decodeSnapshot(Buffer.from('{"k": "a\uFFFDb"}')).entries]).toEqual([["k", '"a\uFFFDb"']]);
  });
});

describe("crc32 (the journal's PUT path)", () => {
  test("agrees with Bun.hash.crc32 on every length 0-300 and offset 0-8, and on random bytes", () => {
    const next = seededRandom(24);
    const bytes = new Uint8Array(4096).map(() => Math.floor(next() * 256));
    for (let start = 0; start <= 8; start++) {
      for (let length = 0; length <= 300; length++) {
        expect(crc32(bytes, start, start + length)).toBe(Bun.hash.crc32(bytes.subarray(start, start + length)));
      }
    }
    expect(crc32(bytes, 0, bytes.length)).toBe(Bun.hash.crc32(bytes));
    expect(crc32(Buffer.from("123456789"), 0, 9)).toBe(0xcbf43926); // the standard check value
  });
});

describe("journal format", () => {
  function scan(text: string, afterSeq = 0) {
    const seen: [number, unknown][] = [];
    const result = scanJournal(Buffer.from(text), afterSeq, (seq, ops) => seen.push([seq, ops]));
    return { result, seen };
  }

  test("a record round trips; a put of JSON null stays distinct from a delete", () => {
    const line = encodeRecord({ seq: 5, ops: [["a", '"x"'], ["n", "null"], ["gone", null], ["o", '{"k":[1]}']] });
    expect(line.endsWith("\n")).toBe(true);
    expect(line.indexOf("\n")).toBe(line.length - 1);
    const { result, seen } = scan(line);
    expect(result.tornTail).toBeNull();
    expect(seen).toEqual([[5, [["a", '"x"'], ["n", "null"], ["gone", null], ["o", '{"k":[1]}']]]]);
  });

  test("single-op records of every value kind round trip (the fast path and the general one agree)", () => {
    const values = ['"plain"', '""', "true", "false", "null", "0", "-1.5e-7", "12345678901234567890", '[{"id":-9007199254740993}]', '"quote\\"d"', '"tab\\t"', '{"a":1}', "[1,2]", '"ключ 🔑"'];
    const keys = ["k", 'q"k', "back\\slash", "ключ", " spaced "];
    let seq = 0;
    const records = keys.flatMap((key) => values.map((value) => ({ seq: ++seq, ops: [[key, value] as const] })));
    const { seen } = scan(records.map(encodeRecord).join(""));
    expect(seen).toEqual(records.map((r) => [r.seq, r.ops.map(([k, v]) => [k, v])]));
  });

  test("a put record written from bytes (the server's fast path) is byte for byte encodeRecord's", () => {
    const cases: [number, string, string][] = [
      [1, "k", '"v"'],
      [9, "k9", "true"],
      [10, "k10", "null"],
      [42, "key:00001234", JSON.stringify("x".repeat(32))],
      [100_000, "k", '""'],
      [9007199254740991, "a{b}c~!", JSON.stringify("with spaces and ' quotes")],
    ];
    for (const [seq, key, value] of cases) {
      const out = new ByteBuffer();
      out.text("before|");
      const keyBytes = Buffer.from(`..${key}..`, "latin1");
      const valueBytes = Buffer.from(`#${value}`, "latin1");
      const entry = { keySrc: keyBytes, keyStart: 2, keyEnd: 2 + key.length, valueSrc: valueBytes, valueStart: 1, valueEnd: 1 + value.length };
      writeAsciiPutsRecord(out, seq, [entry], 1);
      expect(out.bytes.toString("utf8", 0, out.length)).toBe("before|" + encodeRecord({ seq, ops: [[key, value]] }));
    }
  });

  test("a record of several puts written from bytes (a transaction of them) is byte for byte encodeRecord's, only the first count of the entries in it", () => {
    const ops: [string, string][] = [
      ["a", '"1"'],
      ["key:00001234", JSON.stringify("x".repeat(32))],
      ["c", "true"],
    ];
    const held = Buffer.from(ops.map(([key, value]) => key + value).join(""), "latin1");
    let at = 0;
    const entries = ops.map(([key, value]) => {
      const entry = { keySrc: held, keyStart: at, keyEnd: at + key.length, valueSrc: held, valueStart: at + key.length, valueEnd: at + key.length + value.length };
      at = entry.valueEnd;
      return entry;
    });
    for (const count of [1, 2, 3]) {
      const out = new ByteBuffer();
      writeAsciiPutsRecord(out, 77, entries, count);
      const line = out.bytes.toString("utf8", 0, out.length);
      expect(line).toBe(encodeRecord({ seq: 77, ops: ops.slice(0, count) }));
      expect(scan(line).seen).toEqual([[77, ops.slice(0, count)]]);
    }
  });

  test("a record ends with the CRC-32 of its bytes before the field; records written before it existed (no crc32) are read as they are", () => {
    const line = encodeRecord({ seq: 7, ops: [["ключ", '"x"'], ["gone", null]] });
    const body = '{"seq":7,"ops":[["ключ","x"],["gone"]]';
    expect(line).toBe(`${body},"crc32":${Bun.hash.crc32(Buffer.from(body))}}\n`);
    expect(scan(line).seen).toEqual([[7, [["ключ", '"x"'], ["gone", null]]]]);
    const older = '{"seq":1,"ops":[["a","1"]]}\n{"seq":2,"ops":[["b",{"c":1}],["d"]]}\n';
    expect(scan(older).seen).toEqual([
      [1, [["a", '"1"']]],
      [2, [["b", '{"c":1}'], ["d", null]]],
    ]);
  });

  test("a byte flipped anywhere in a complete record is corruption, the final one included, also where the line stays valid JSON (a value's letter)", () => {
    const records = [
      encodeRecord({ seq: 1, ops: [["k1", '"v1"']] }), // the fast path's shape
      encodeRecord({ seq: 2, ops: [["k2", '{"a":[1,"ü"]}'], ["gone", null]] }), // the general one
    ];
    const last = encodeRecord({ seq: 3, ops: [["k3", '"v3"']] });
    for (const [index, record] of records.entries()) {
      const bytes = Buffer.from(record);
      for (let at = 0; at < bytes.length - 1; at++) {
        for (const mask of [0x01, 0x02, 0x20]) {
          const damaged = Buffer.from(bytes);
          damaged[at]! ^= mask;
          if (damaged[at] === 0x0a || damaged[at] === 0) continue; // a new line end splits the record; a zero is a power cut's trace
          const before = Buffer.from(records.slice(0, index).join(""));
          for (const [where, after] of [["before the last", Buffer.from(last)], ["last", Buffer.alloc(0)]] as const) {
            let outcome: string;
            try {
              scanJournal(Buffer.concat([before, damaged, after]), 0, () => {});
              outcome = "read";
            } catch (err) {
              outcome = err instanceof JournalFormatError ? "refused" : `failed: ${String(err)}`;
            }
            const label = `record ${index + 1} (${where}), byte ${at} ^ ${mask}`;
            expect(`${label}: ${outcome}`).toBe(`${label}: refused`);
          }
        }
      }
    }
  });

  test("the final record, complete with its line end but changed (still valid JSON), is corruption, not a torn tail", () => {
    const good = encodeRecord({ seq: 1, ops: [["a", '"alpha"']] });
    const last = encodeRecord({ seq: 2, ops: [["b", '"bravo"']] });
    expect(() => scan(good + last.replace("bravo", "brawo"))).toThrow(/line 2: checksum mismatch/);
    expect(() => scan(good + last.replace("bravo", "brawo").replace("\n", "\r\n"))).toThrow(/line 2: checksum mismatch/);
    // Unfinished (no line end) it is still a crash's trace.
    expect(scan(good + last.replace("bravo", "brawo").slice(0, -1)).result.tornTail).toMatch(/line 2: incomplete final record/);
  });

  test("line ends converted to CRLF still read, checksums and all", () => {
    const text = encodeRecord({ seq: 1, ops: [["ключ", '"é"']] }) + encodeRecord({ seq: 2, ops: [["b", '{"c":1}'], ["d", null]] }) + '{"seq":3,"ops":[["old","1"]]}\n';
    expect(scan(text.replaceAll("\n", "\r\n")).seen).toEqual([
      [1, [["ключ", '"é"']]],
      [2, [["b", '{"c":1}'], ["d", null]]],
      [3, [["old", '"1"']]],
    ]);
  });

  test("a final record without its line end is a torn tail: dropped, earlier records kept", () => {
    const good = encodeRecord({ seq: 1, ops: [["a", "1"]] }) + encodeRecord({ seq: 2, ops: [["b", "2"]] });
    const torn = encodeRecord({ seq: 3, ops: [["c", "3"]] }).slice(0, 12);
    const { result, seen } = scan(good + torn);
    expect(seen.map(([seq]) => seq)).toEqual([1, 2]);
    expect(result.tornTail).toMatch(/line 3/);
    expect(result.validBytes).toBe(Buffer.byteLength(good));
  });

  test("a final line unreadable because of zero bytes (a power cut's trace) is dropped as torn; unreadable without them it is corruption", () => {
    const good = encodeRecord({ seq: 1, ops: [["ключ", "1"]] });
    const zeroed = Buffer.from(encodeRecord({ seq: 2, ops: [["k", '"value"']] }));
    zeroed.fill(0, 10, 20);
    for (const last of ["\u0000\u0000garbage\n", zeroed.toString("latin1")]) {
      const { result, seen } = scan(good + last);
      expect(result.tornTail).toMatch(/line 2: unreadable final record with zero bytes/);
      expect(result.validBytes).toBe(Buffer.byteLength(good));
      expect(seen.map(([seq]) => seq)).toEqual([1]);
    }
    expect(() => scan(good + "garbage\n")).toThrow(/line 2: not valid JSON/);
    expect(() => scan(good + encodeRecord({ seq: 2, ops: [["k", '"v"']] }).replace('"ops"', '"opz"'))).toThrow(/line 2: unknown field "opz"/);
  });

  test("a damaged line before the end is corruption", () => {
    const text =
      encodeRecord({ seq: 1, ops: [["a", "1"]] }) + "not json\n" + encodeRecord({ seq: 3, ops: [["c", "3"]] });
    expect(() => scan(text)).toThrow(/line 2: not valid JSON/);
  });

  test("zero bytes in a line before the end are corruption too, not a torn tail that would drop the records after it", () => {
    const zeroed = Buffer.from(encodeRecord({ seq: 2, ops: [["k", '"value"']] }));
    zeroed.fill(0, 10, 20);
    const text = encodeRecord({ seq: 1, ops: [["a", "1"]] }) + zeroed.toString("latin1") + encodeRecord({ seq: 3, ops: [["c", "3"]] });
    expect(() => scan(text)).toThrow(/line 2: not valid JSON/);
  });

  test("a record that is not UTF-8 is corruption, at the end too; a real U+FFFD is data", () => {
    const bad = Buffer.concat([Buffer.from('{"seq":2,"ops":[["b","\\"x'), Buffer.from([0xff]), Buffer.from('\\""]]}\n')]);
    const good = (seq: number) => Buffer.from(encodeRecord({ seq, ops: [["k", '"\uFFFD"']] }));
    const scanBytes = (bytes: Buffer) => {
      const seen: number[] = [];
      return { result: scanJournal(bytes, 0, (seq) => seen.push(seq)), seen };
    };
    expect(() => scanBytes(Buffer.concat([good(1), bad, good(3)]))).toThrow(/line 2: not valid UTF-8/);
    expect(() => scanBytes(Buffer.concat([good(1), bad]))).toThrow(/line 2: not valid UTF-8/);
    expect(scanBytes(Buffer.concat([good(1), good(2)])).seen).toEqual([1, 2]);
  });

  test("records out of seq order are corruption", () => {
    const text = encodeRecord({ seq: 4, ops: [["a", "1"]] }) + encodeRecord({ seq: 4, ops: [["b", "1"]] });
    expect(() => scan(text)).toThrow(/does not follow/);
    expect(() => scan(encodeRecord({ seq: 2, ops: [] }), 9)).toThrow(/does not follow/);
  });

  test("a record of the wrong shape is corruption", () => {
    const ok = encodeRecord({ seq: 1, ops: [["a", "1"]] });
    for (const [bad, problem] of [
      ['{"seq":2}', "no ops array"],
      ['{"seq":"2","ops":[]}', "no valid seq"],
      ['{"seq":0,"ops":[]}', "no valid seq"],
      ['{"seq":2,"ops":{}}', "no ops array"],
      ['{"seq":2,"ops":[[1,2]]}', "an op is not [key, value] or [key]"],
      ['{"seq":2,"ops":[["a",1,2]]}', "an op is not [key, value] or [key]"],
      ['{"seq":2,"ops":[[]]}', "an op is not [key, value] or [key]"],
      ['{"seq":2,"ops":[],"crc32":5,"x":1}', "crc32 is not the last field"],
      ["null", "not a JSON object"],
      ["5", "not a JSON object"],
    ]) {
      expect(() => scan(ok + bad + "\n" + encodeRecord({ seq: 9, ops: [] }))).toThrow(`line 2: ${problem}`);
    }
  });
});
