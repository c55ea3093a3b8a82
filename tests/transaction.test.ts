/**
 * Unit tests of lib/transaction.ts, without a store or a server: a
 * connection's savepoint stack (levels), read-your-writes, merging a
 * nested COMMIT, discarding a ROLLBACK, the byte budget's accounting, the
 * write kept as bytes (the fast path's PUT) and the object's reuse.
 * The server-level behaviour (conflicts, ABORTED, replies) is in
 * concurrency.test.ts and execute.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { DELETED, Transaction, type Write } from "../lib/transaction.ts";

const bytes = (text: string) => new TextEncoder().encode(text);

/** writeAscii of `PUT key value` as the fast path gives it: the key from the request, the value's JSON text from the reply. */
function putAscii(tx: Transaction, key: string, value: string): void {
  const request = bytes(`PUT ${key} ${value}`);
  const json = bytes(JSON.stringify(value));
  tx.writeAscii(request, 4, 4 + key.length, json, 0, json.length, request.length);
}

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

  test("a PUT kept as bytes is the sole write to commit from bytes; any other use turns it into strings first", () => {
    const tx = fresh();
    putAscii(tx, "key:1", "hello");
    expect(tx.hasWrites).toBe(true);
    const sole = tx.soleAsciiWrite()!;
    expect(new TextDecoder().decode(sole.keySrc.subarray(sole.keyStart, sole.keyEnd))).toBe("key:1");
    expect(new TextDecoder().decode(sole.valueSrc.subarray(sole.valueStart, sole.valueEnd))).toBe('"hello"');
    expect(tx.bytes).toBe("PUT key:1 hello".length);
    // Reading it back settles it into the level as strings: it is no longer held as bytes.
    expect(tx.ownWrite("key:1")).toBe('"hello"');
    expect(tx.soleAsciiWrite()).toBeNull();
    expect(tx.changes()).toEqual([["key:1", '"hello"']]);
  });

  test("mayHaveWritten compares a key's bytes with the write held as bytes, leaving it bytes; any write as strings answers true", () => {
    const tx = fresh();
    const key = (text: string) => [bytes(`GET ${text}`), 4, 4 + text.length] as const;
    expect(tx.mayHaveWritten(...key("key:1"))).toBe(false);
    putAscii(tx, "key:1", "hello");
    expect(tx.mayHaveWritten(...key("key:1"))).toBe(true);
    for (const other of ["key:2", "key:", "key:10", "Key:1"]) expect({ other, may: tx.mayHaveWritten(...key(other)) }).toEqual({ other, may: false });
    expect(tx.soleAsciiWrite()).not.toBeNull();
    // Any write as strings (this one also turns the held write into strings) may be of any key: ownWrite must be asked.
    tx.write("other", '"1"', 10);
    expect(tx.soleAsciiWrite()).toBeNull();
    expect(tx.mayHaveWritten(...key("key:2"))).toBe(true);
    const stringsOnly = fresh();
    stringsOnly.write("other", '"1"', 10);
    expect(stringsOnly.mayHaveWritten(...key("key:2"))).toBe(true);
    // Rolled back with its level, the held write is gone.
    const nested = fresh();
    nested.begin();
    putAscii(nested, "key:1", "hello");
    nested.rollbackLevel();
    expect(nested.mayHaveWritten(...key("key:1"))).toBe(false);
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
    expect(tx.soleAsciiWrite()).toBeNull();
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
