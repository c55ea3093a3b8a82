/**
 * Unit tests of lib/transaction.ts, without a store or a server: a
 * connection's savepoint stack (levels), read-your-writes, merging a
 * nested COMMIT, discarding a ROLLBACK, the byte budget's accounting, the
 * writes held as bytes (the fast path's PUTs) and the object's reuse.
 * The server-level behaviour (conflicts, ABORTED, replies) is in
 * concurrency.test.ts and execute.test.ts.
 */
import { describe, expect, test } from "bun:test";
import type { AsciiEntry } from "../lib/compact-map.ts";
import { DELETED, MAX_HELD_WRITES, Transaction, type Write } from "../lib/transaction.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

/** writeAscii of `PUT key value` as the fast path gives it: the key from the request, the value's JSON text from the reply. */
function putAscii(tx: Transaction, key: string, value: string): void {
  const request = bytes(`PUT ${key} ${value}`);
  const json = bytes(JSON.stringify(value));
  tx.writeAscii(request, 4, 4 + key.length, json, 0, json.length, request.length);
}

/** The key and value text of the writes a transaction would commit from bytes (none: it would not). */
function asciiChanges(tx: Transaction): [string, string][] {
  const text = (src: Uint8Array, start: number, end: number) => new TextDecoder().decode(src.subarray(start, end));
  const entries: readonly AsciiEntry[] = tx.heldChanges.slice(0, tx.asciiChangeCount());
  return entries.map((e) => [text(e.keySrc, e.keyStart, e.keyEnd), text(e.valueSrc, e.valueStart, e.valueEnd)]);
}

/** The arguments of ownAsciiWrite for a GET of key, its bytes in a request line. */
const getKey = (key: string) => [bytes(`GET ${key}`), 4, 4 + key.length] as const;

function fresh(): Transaction {
  const tx = new Transaction();
  tx.reset();
  return tx;
}

describe("Transaction", () => {
  test("a fresh transaction has one level, no writes, no bytes, and is neither failed nor conflicted", () => {
    const tx = fresh();
    expect(tx.depth).toBe(1);
    expect(tx.hasWrites).toBe(false);
    expect(tx.bytes).toBe(0);
    expect(tx.failed).toBe(false);
    expect(tx.conflicted).toBe(false);
    expect(tx.changes()).toEqual([]);
  });

  test("reads its own writes, the innermost level's first; a delete reads as DELETED; an unwritten key as undefined", () => {
    const tx = fresh();
    tx.write("a", '"1"', 10);
    tx.begin();
    expect(tx.ownWrite("a")).toBe('"1"');
    tx.write("a", '"2"', 10);
    tx.write("b", DELETED, 5);
    expect(tx.ownWrite("a")).toBe('"2"');
    expect(tx.ownWrite("b")).toBe(DELETED);
    expect(tx.ownWrite("c")).toBeUndefined();
  });

  test("a nested COMMIT merges into its parent: the outermost changes hold the latest write of each key, in first-write order", () => {
    const tx = fresh();
    tx.write("a", '"1"', 10);
    tx.begin();
    tx.write("b", '"2"', 10);
    tx.write("a", DELETED, 5);
    tx.commitNested();
    expect(tx.depth).toBe(1);
    expect(tx.changes()).toEqual([
      ["a", null],
      ["b", '"2"'],
    ]);
    expect(tx.bytes).toBe(25);
  });

  test("a ROLLBACK of a level discards its writes and gives its bytes back; of the outermost it ends the transaction", () => {
    const tx = fresh();
    tx.write("a", '"1"', 10);
    tx.begin();
    tx.write("a", '"2"', 7);
    tx.write("b", '"3"', 8);
    expect(tx.bytes).toBe(25);
    expect(tx.rollbackLevel()).toBe(false);
    expect(tx.bytes).toBe(10);
    expect(tx.ownWrite("a")).toBe('"1"');
    expect(tx.ownWrite("b")).toBeUndefined();
    expect(tx.rollbackLevel()).toBe(true);
    expect(tx.depth).toBe(0);
  });

  test("the failed mark belongs to its level: rolling that level back clears it", () => {
    const tx = fresh();
    tx.begin();
    tx.markFailed();
    expect(tx.failed).toBe(true);
    tx.rollbackLevel();
    expect(tx.failed).toBe(false);
  });

  test("charge counts bytes without a write (a DEL that found nothing)", () => {
    const tx = fresh();
    tx.charge(12);
    expect(tx.bytes).toBe(12);
    expect(tx.hasWrites).toBe(false);
  });

  test("a PUT held as bytes is committed from bytes; a write as strings turns it into strings first", () => {
    const tx = fresh();
    putAscii(tx, "key:1", "hello");
    expect(tx.hasWrites).toBe(true);
    expect(asciiChanges(tx)).toEqual([["key:1", '"hello"']]);
    expect(tx.bytes).toBe("PUT key:1 hello".length);
    // Reading it back answers from the bytes and leaves them bytes.
    expect(tx.ownWrite("key:1")).toBe('"hello"');
    expect(asciiChanges(tx)).toEqual([["key:1", '"hello"']]);
    tx.write("other", DELETED, 9);
    expect(asciiChanges(tx)).toEqual([]);
    expect(tx.changes()).toEqual([
      ["key:1", '"hello"'],
      ["other", null],
    ]);
  });

  test("several PUTs of distinct keys are all held as bytes, in order, and read back as bytes and as strings", () => {
    const tx = fresh();
    putAscii(tx, "a", "1");
    putAscii(tx, "bb", "2");
    putAscii(tx, "ccc", "3");
    expect(asciiChanges(tx)).toEqual([
      ["a", '"1"'],
      ["bb", '"2"'],
      ["ccc", '"3"'],
    ]);
    const own = tx.ownAsciiWrite(...getKey("bb"))!;
    expect(new TextDecoder().decode(own.valueSrc.subarray(own.valueStart, own.valueEnd))).toBe('"2"');
    expect(tx.ownAsciiWrite(...getKey("b"))).toBeNull();
    expect(tx.ownWrite("ccc")).toBe('"3"');
    expect(tx.ownWrite("cc")).toBeUndefined();
    expect(tx.bytes).toBe("PUT a 1PUT bb 2PUT ccc 3".length);
    expect(tx.changes()).toEqual([
      ["a", '"1"'],
      ["bb", '"2"'],
      ["ccc", '"3"'],
    ]);
  });

  test("a second PUT of a held key turns the held writes into strings, the later value winning", () => {
    const tx = fresh();
    putAscii(tx, "a", "1");
    putAscii(tx, "b", "2");
    putAscii(tx, "a", "3");
    expect(asciiChanges(tx)).toEqual([]);
    expect(tx.ownWrite("a")).toBe('"3"');
    expect(new Map(tx.changes())).toEqual(
      new Map([
        ["a", '"3"'],
        ["b", '"2"'],
      ]),
    );
  });

  test(`past ${MAX_HELD_WRITES} held writes the earlier ones become strings; every write is still committed`, () => {
    const tx = fresh();
    const count = MAX_HELD_WRITES + 3;
    for (let i = 0; i < count; i++) putAscii(tx, `k${i}`, `v${i}`);
    expect(asciiChanges(tx)).toEqual([]);
    for (let i = 0; i < count; i++) expect(tx.ownWrite(`k${i}`)).toBe(`"v${i}"`);
    expect(tx.changes().length).toBe(count);
  });

  test("held keys and values longer than the buffer's first size survive its growth", () => {
    const tx = fresh();
    const values = ["x".repeat(100), "y".repeat(300), "z".repeat(1000)];
    values.forEach((value, i) => putAscii(tx, `long:${i}`, value));
    expect(asciiChanges(tx)).toEqual(values.map((value, i): [string, string] => [`long:${i}`, JSON.stringify(value)]));
  });

  test("a transaction's end lets go of a held writes' buffer grown large (an idle connection keeps no big PUT), and keeps a small one", () => {
    const tx = fresh();
    putAscii(tx, "big", "x".repeat(100_000));
    putAscii(tx, "small", "y");
    const large = tx.heldChanges[0]!.keySrc;
    expect(large.length).toBeGreaterThan(100_000);
    tx.release();
    for (const entry of tx.heldChanges) expect(entry.keySrc.length + entry.valueSrc.length).toBe(0);
    tx.reset();
    putAscii(tx, "k", "v");
    expect(asciiChanges(tx)).toEqual([["k", '"v"']]);
    const small = tx.heldChanges[0]!.keySrc;
    expect(small).not.toBe(large);
    tx.release();
    tx.reset();
    putAscii(tx, "k2", "v2");
    expect(tx.heldChanges[0]!.keySrc).toBe(small);
  });

  test("a PUT in a nested level turns the outer level's held writes into strings; rolling that level back drops its own", () => {
    const tx = fresh();
    putAscii(tx, "outer", "1");
    tx.begin();
    putAscii(tx, "inner", "2");
    expect(asciiChanges(tx)).toEqual([]);
    expect(tx.ownWrite("outer")).toBe('"1"');
    expect(tx.ownWrite("inner")).toBe('"2"');
    tx.rollbackLevel();
    expect(tx.ownWrite("inner")).toBeUndefined();
    expect(tx.changes()).toEqual([["outer", '"1"']]);
  });

  test("ownAsciiWrite compares a key's bytes with the writes held as bytes, leaving them bytes; hasWritesAsStrings tells when ownWrite must be asked", () => {
    const tx = fresh();
    const has = (key: string) => tx.ownAsciiWrite(...getKey(key)) !== null;
    expect(has("key:1")).toBe(false);
    putAscii(tx, "key:1", "hello");
    expect(has("key:1")).toBe(true);
    for (const other of ["key:2", "key:", "key:10", "Key:1"]) expect({ other, has: has(other) }).toEqual({ other, has: false });
    expect(tx.hasWritesAsStrings).toBe(false);
    expect(asciiChanges(tx)).toEqual([["key:1", '"hello"']]);
    // A write as strings (this one also turns the held write into strings) may be of any key: ownWrite must be asked.
    tx.write("other", '"1"', 10);
    expect(asciiChanges(tx)).toEqual([]);
    expect(has("key:1")).toBe(false);
    expect(tx.hasWritesAsStrings).toBe(true);
    expect(tx.ownWrite("key:1")).toBe('"hello"');
    // Rolled back with its level, the held write is gone.
    const nested = fresh();
    nested.begin();
    putAscii(nested, "key:1", "hello");
    nested.rollbackLevel();
    expect(nested.ownAsciiWrite(...getKey("key:1"))).toBeNull();
    expect(nested.hasWrites).toBe(false);
  });

  test("the bytes a PUT was kept from may be reused afterwards: the transaction copied them", () => {
    const tx = fresh();
    const request = bytes("PUT k v1");
    const json = bytes('"v1"');
    tx.writeAscii(request, 4, 5, json, 0, json.length, request.length);
    request.fill(0);
    json.fill(0);
    expect(tx.changes()).toEqual([["k", '"v1"']]);
  });

  test("a PUT kept as bytes in a nested level is not the sole write; committing the level merges it", () => {
    const tx = fresh();
    tx.begin();
    putAscii(tx, "k", "v");
    expect(asciiChanges(tx)).toEqual([]);
    tx.commitNested();
    expect(tx.changes()).toEqual([["k", '"v"']]);
  });

  test("a PUT kept as bytes in a level rolled back is gone", () => {
    const tx = fresh();
    tx.begin();
    putAscii(tx, "k", "v");
    tx.rollbackLevel();
    expect(tx.hasWrites).toBe(false);
    expect(tx.changes()).toEqual([]);
  });

  test("a later PUT of the same key as bytes replaces the earlier string write", () => {
    const tx = fresh();
    tx.write("k", '"old"', 9);
    putAscii(tx, "k", "new");
    expect(tx.ownWrite("k")).toBe('"new"');
    expect(tx.changes()).toEqual([["k", '"new"']]);
  });

  test("ownWritesWithPrefix: the latest write of each key under the prefix over all levels, inner ones winning", () => {
    const tx = fresh();
    tx.write("user:1", '"a"', 1);
    tx.write("item:1", '"x"', 1);
    tx.begin();
    tx.write("user:1", DELETED, 1);
    putAscii(tx, "user:2", "b");
    expect(tx.ownWritesWithPrefix("user:")).toEqual(
      new Map<string, Write>([
        ["user:1", DELETED],
        ["user:2", '"b"'],
      ]),
    );
    expect(tx.ownWritesWithPrefix("none:")).toBeNull();
  });

  test("reset makes the reused object a fresh transaction: no writes, bytes, failure or conflict of the one before", () => {
    const tx = fresh();
    tx.write("a", '"1"', 3);
    for (let i = 0; i < 20; i++) tx.begin();
    putAscii(tx, "b", "2");
    tx.markFailed();
    tx.conflicted = true;
    while (!tx.rollbackLevel());
    tx.reset();
    expect(tx.depth).toBe(1);
    expect(tx.bytes).toBe(0);
    expect(tx.failed).toBe(false);
    expect(tx.conflicted).toBe(false);
    expect(tx.hasWrites).toBe(false);
    for (let i = 0; i < 20; i++) tx.begin();
    expect(tx.ownWrite("a")).toBeUndefined();
    expect(tx.ownWrite("b")).toBeUndefined();
  });
});
