/**
 * The transaction and store layer without sockets: Executor + Store +
 * Transaction, driven with parsed commands on several sessions.
 */
import { describe, expect, test } from "bun:test";
import { MemoryOnlyLog, type CommitLog, type CommitRecord } from "../lib/commit-log.ts";
import { parseCommand } from "../lib/commands.ts";
import { Executor } from "../lib/execute.ts";
import { Session } from "../lib/session.ts";
import { ServerStats } from "../lib/stats.ts";
import { Store, type Watcher } from "../lib/store.ts";
import { seededRandom } from "./helpers.ts";

class RecordingLog extends MemoryOnlyLog {
  override readonly enabled = true;
  readonly records: CommitRecord[] = [];
  override append(record: CommitRecord): number {
    this.records.push(record);
    return 0;
  }
}

function setup(options: { maxTransactionBytes?: number; log?: CommitLog } = {}) {
  const store = new Store();
  const log = options.log ?? new MemoryOnlyLog();
  const executor = new Executor(store, log, new ServerStats(), {
    maxTransactionBytes: options.maxTransactionBytes ?? 1024,
    password: undefined,
    version: "test",
  });
  const session = () => {
    const s = new Session(false);
    const run = (line: string) => {
      const reply = executor.execute(parseCommand(line), s);
      if (typeof reply !== "string") throw new Error("unexpected async reply");
      return JSON.parse(reply) as { status: string; result?: unknown; code?: string; message?: string };
    };
    return Object.assign(run, { session: s });
  };
  return { store, executor, session };
}

const ok = (result: unknown) => ({ status: "Ok", result });
const err = (code: string) => expect.objectContaining({ status: "Error", code });

describe("outside a transaction", () => {
  test("PUT, GET, DEL apply at once", () => {
    const { session } = setup();
    const a = session();
    expect(a("PUT k v")).toEqual(ok({ key: "k", value: "v" }));
    expect(a("GET k")).toEqual(ok({ key: "k", value: "v" }));
    expect(a("DEL k")).toEqual(ok({ key: "k", value: "v" }));
    expect(a("GET k")).toEqual(err("NOT_FOUND"));
    expect(a("DEL k")).toEqual(err("NOT_FOUND"));
  });

  test("COMMIT and ROLLBACK without a transaction: NO_TRANSACTION", () => {
    const a = setup().session();
    expect(a("COMMIT")).toEqual(err("NO_TRANSACTION"));
    expect(a("ROLLBACK")).toEqual(err("NO_TRANSACTION"));
  });

  test("KEYS is sorted and filtered by prefix", () => {
    const a = setup().session();
    for (const k of ["b", "a2", "a1", "c"]) a(`PUT ${k} x`);
    expect(a("KEYS")).toEqual(ok(["a1", "a2", "b", "c"]));
    expect(a("KEYS a")).toEqual(ok(["a1", "a2"]));
    expect(a("KEYS zz")).toEqual(ok([]));
  });

  test("KEYS sorts by code point (UTF-8 byte order), not by UTF-16 code unit", () => {
    const a = setup().session();
    // U+1F600 is a surrogate pair in UTF-16 (0xD83D...), which would sort it before U+FF61.
    for (const k of ["\u{1F600}", "\uFF61", "z", "\uFFFF", "\u00E9"]) a(`PUT ${k} x`);
    expect(a("KEYS")).toEqual(ok(["z", "\u00E9", "\uFF61", "\uFFFF", "\u{1F600}"]));
    const utf8Order = (keys: string[]) => [...keys].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    const listed = (a("KEYS") as { result: string[] }).result;
    expect(listed).toEqual(utf8Order(listed));
    // Lone surrogates (accepted in the JSON form) sort as their own code points: before U+E000, and a lone
    // high surrogate before the pair it begins.
    a('PUT {"key":"\\ud800","value":1}');
    a('PUT {"key":"\\ud800\\udc00x","value":1}');
    a('PUT {"key":"\\udfff","value":1}');
    expect(a("KEYS")).toEqual(ok(["z", "\u00E9", "\uD800", "\uDFFF", "\uFF61", "\uFFFF", "\u{10000}x", "\u{1F600}"]));
  });
});

test("KEYS lists a key before the longer keys it begins, also when a surrogate pair makes the code-point comparator run", () => {
  const a = setup().session();
  for (const k of ["ab", "a", "\u{1F600}"]) a(`PUT ${k} x`);
  expect(a("KEYS")).toEqual(ok(["a", "ab", "\u{1F600}"]));
});

describe("transactions", () => {
  test("read-your-writes inside, invisible outside until the outermost COMMIT", () => {
    const { session } = setup();
    const a = session();
    const b = session();
    a("START");
    a("PUT k 1");
    expect(a("GET k")).toEqual(ok({ key: "k", value: "1" }));
    expect(b("GET k")).toEqual(err("NOT_FOUND"));
    a("START");
    a("PUT j 2");
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
    expect(b("GET j")).toEqual(err("NOT_FOUND"));
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
    expect(b("GET k")).toEqual(ok({ key: "k", value: "1" }));
    expect(b("GET j")).toEqual(ok({ key: "j", value: "2" }));
  });

  test("ROLLBACK discards only the innermost level", () => {
    const a = setup().session();
    a("START");
    a("PUT outer 1");
    a("START");
    a("PUT inner 2");
    a("DEL outer");
    expect(a("GET outer")).toEqual(err("NOT_FOUND"));
    expect(a("ROLLBACK")).toEqual(ok("Transaction rolled back"));
    expect(a("GET outer")).toEqual(ok({ key: "outer", value: "1" }));
    expect(a("GET inner")).toEqual(err("NOT_FOUND"));
    a("COMMIT");
    expect(a("KEYS")).toEqual(ok(["outer"]));
  });

  test("KEYS inside a transaction shows its own puts and deletes", () => {
    const a = setup().session();
    a("PUT a1 x");
    a("PUT a2 x");
    a("START");
    a("PUT a3 x");
    a("DEL a1");
    expect(a("KEYS a")).toEqual(ok(["a2", "a3"]));
  });

  test("a committed transaction is one commit record, in commit order", () => {
    const log = new RecordingLog();
    const a = setup({ log }).session();
    a("PUT x 0");
    a("START");
    a("PUT k 1");
    a("DEL x");
    a("START");
    a('PUT {"key":"j","value":[1]}');
    a("COMMIT");
    a("COMMIT");
    expect(log.records).toEqual([
      { seq: 1, ops: [["x", '"0"']] },
      { seq: 2, ops: [["k", '"1"'], ["x", null], ["j", "[1]"]] },
    ]);
  });

  test("a level's writes, one key or several, rewritten, deleted and merged across levels in every combination, read back and commit their latest values", () => {
    const log = new RecordingLog();
    const a = setup({ log }).session();
    a("START");
    a("PUT k 1");
    a("PUT k 2"); // the same key again: still one write
    expect(a("GET k")).toEqual(ok({ key: "k", value: "2" }));
    a("START"); // a one-write level merged into a one-write parent with another key
    a("PUT j 1");
    a("COMMIT");
    expect(a("GET j")).toEqual(ok({ key: "j", value: "1" }));
    a("START"); // a several-write level merged into a several-write parent, overwriting and deleting
    a("PUT k 3");
    a("DEL j");
    a("PUT m 1");
    expect(a("GET j").code).toBe("NOT_FOUND");
    a("COMMIT");
    a("START"); // a one-write level rolled back: the parent's value of k shows again
    a("PUT k 9");
    a("ROLLBACK");
    expect(a("GET k")).toEqual(ok({ key: "k", value: "3" }));
    expect(a("KEYS")).toEqual(ok(["k", "m"]));
    a("COMMIT");
    a("START"); // a level whose only write is a delete, merged into an empty parent
    a("START");
    a("DEL m");
    a("COMMIT");
    a("COMMIT");
    expect(log.records).toEqual([
      { seq: 1, ops: [["k", '"3"'], ["j", null], ["m", '"1"']] },
      { seq: 2, ops: [["m", null]] },
    ]);
    expect(a("KEYS")).toEqual(ok(["k"]));
  });

  test("a read-only transaction commits without a record", () => {
    const log = new RecordingLog();
    const a = setup({ log }).session();
    a("START");
    a("GET nothing");
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
    expect(log.records).toEqual([]);
  });
});

describe("serializable conflicts", () => {
  test("a key read and then changed by another commit: CONFLICT, nothing applied", () => {
    const { session } = setup();
    const a = session();
    const b = session();
    a("PUT n 1");
    a("START");
    a("GET n");
    a("PUT other x");
    b("PUT n 2");
    expect(a("COMMIT")).toEqual(err("CONFLICT"));
    expect(b("GET other")).toEqual(err("NOT_FOUND"));
    expect(a("COMMIT")).toEqual(err("NO_TRANSACTION"));
  });

  test("a key read as absent and then created by another: CONFLICT", () => {
    const { session } = setup();
    const a = session();
    const b = session();
    a("START");
    expect(a("GET ghost")).toEqual(err("NOT_FOUND"));
    a("PUT marker 1");
    b("PUT ghost boo");
    expect(a("COMMIT")).toEqual(err("CONFLICT"));
  });

  test("DEL reads: a deleted key changed by another conflicts", () => {
    const { session } = setup();
    const a = session();
    const b = session();
    a("PUT k 1");
    a("START");
    a("DEL k");
    b("PUT k 2");
    expect(a("COMMIT")).toEqual(err("CONFLICT"));
    expect(b("GET k")).toEqual(ok({ key: "k", value: "2" }));
  });

  test("KEYS prefix reads: a key created, changed or deleted under the prefix conflicts (phantoms, and PROTOCOL §4's 'a key it read')", () => {
    const { session } = setup();
    const [a, b] = [session(), session()];
    a("PUT user:1 x");
    a("START");
    a("KEYS user:");
    a("PUT count 1");
    b("PUT item:1 y"); // other prefix: no conflict
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));

    a("START");
    a("KEYS user:");
    b("PUT user:1 changed"); // a new value for a key KEYS listed: it was read
    expect(a("COMMIT")).toEqual(err("CONFLICT"));

    a("START");
    a("KEYS user:");
    a("PUT count 2");
    b("PUT user:2 new");
    expect(a("COMMIT")).toEqual(err("CONFLICT"));

    a("START");
    a("KEYS user:");
    b("DEL user:2");
    expect(a("COMMIT")).toEqual(err("CONFLICT"));
  });

  test("blind writes do not conflict: the last commit wins", () => {
    const { session } = setup();
    const [a, b] = [session(), session()];
    a("START");
    a("PUT k from-a");
    b("PUT k from-b");
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
    expect(b("GET k")).toEqual(ok({ key: "k", value: "from-a" }));
  });

  test("reads answered from the transaction's own writes are not watched", () => {
    const { session } = setup();
    const [a, b] = [session(), session()];
    a("START");
    a("PUT k mine");
    a("GET k");
    a("DEL k");
    a("GET k");
    b("PUT k theirs");
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
    expect(b("GET k")).toEqual(err("NOT_FOUND"));
  });

  test("KEYS lists a key by the transaction's own write: another commit creating or deleting that key does not conflict", () => {
    const { session } = setup();
    const [a, b] = [session(), session()];
    b("PUT p:1 old");
    a("START");
    a("PUT p:1 mine");
    expect(a("KEYS p:")).toEqual(ok(["p:1"]));
    b("DEL p:1");
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));

    a("START");
    a("PUT p:2 mine");
    a("DEL p:2");
    expect(a("KEYS p:")).toEqual(ok(["p:1"]));
    b("PUT p:2 theirs");
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
    expect(b("GET p:2")).toEqual(err("NOT_FOUND"));
  });

  test("KEYS still watches the keys it took from the store, and an own key read from the store by an earlier KEYS", () => {
    const { session } = setup();
    const [a, b] = [session(), session()];
    a("START");
    a("PUT p:own mine");
    a("KEYS p:");
    b("PUT p:other theirs");
    expect(a("COMMIT")).toEqual(err("CONFLICT"));

    // The first KEYS read p:x from the store (absent); writing it afterwards does not undo that read.
    a("START");
    a("KEYS p:");
    a("PUT p:x mine");
    a("KEYS p:");
    b("PUT p:x theirs");
    expect(a("COMMIT")).toEqual(err("CONFLICT"));
  });

  test("a commit that creates and then deletes an absent key changes nothing: a reader of that key does not conflict", () => {
    const { session } = setup();
    const [a, b] = [session(), session()];
    a("START");
    expect(a("GET t1")).toEqual(err("NOT_FOUND"));
    a("KEYS t");
    b("START");
    b("PUT t1 v");
    b("DEL t1");
    expect(b("COMMIT")).toEqual(ok("Transaction committed"));
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));

    // Deleting a key that exists still conflicts its readers.
    b("PUT t2 v");
    a("START");
    a("GET t2");
    b("START");
    b("PUT t2 w");
    b("DEL t2");
    b("COMMIT");
    expect(a("COMMIT")).toEqual(err("CONFLICT"));
  });

  test("a change by the same connection's own earlier commit is not a conflict with a later transaction", () => {
    const { session } = setup();
    const a = session();
    a("PUT k 1");
    a("START");
    a("GET k");
    a("PUT k 2");
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
  });

  test("watch bookkeeping is freed when transactions end, whatever the outcome", () => {
    const { session, store } = setup();
    const [a, b] = [session(), session()];
    a("START");
    for (let i = 0; i < 50; i++) a(`GET k${i}`);
    a("KEYS k");
    expect(store.watchCounts).toEqual({ keys: 50, prefixes: 1, deferredReads: 0, everything: 0 });
    a("ROLLBACK");
    expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
    a("START");
    a("GET k1");
    b("START");
    b("GET k1");
    b("PUT k1 x");
    b("COMMIT");
    a("COMMIT");
    expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
  });

  describe("past the read limit (Store.maxWatchesPerTransaction) a transaction watches the whole store", () => {
    function limited(limit: number) {
      const s = setup();
      s.store.maxWatchesPerTransaction = limit;
      return s;
    }

    test("its watches give way to one on the whole store, and a commit of a key it never read conflicts it", () => {
      const { session, store } = limited(3);
      const [a, b] = [session(), session()];
      a("START");
      for (const key of ["k1", "k2", "k3"]) a(`GET ${key}`);
      expect(store.watchCounts).toEqual({ keys: 3, prefixes: 0, deferredReads: 0, everything: 0 });
      a("GET k4");
      expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 1 });
      expect(store.watchedEverythingTotal).toBe(1);
      b("PUT unrelated x");
      a("PUT k1 mine");
      expect(a("COMMIT")).toEqual({
        status: "Error",
        code: "CONFLICT",
        message: expect.stringContaining("more than 3 distinct keys and KEYS prefixes (--max-transaction-reads)"),
      });
      expect(store.get("k1")).toBeUndefined();
      expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
    });

    test("with no other commit meanwhile it commits, and its own writes conflict with nothing", () => {
      const { session, store } = limited(2);
      const a = session();
      a("START");
      for (let i = 0; i < 10; i++) a(`GET k${i}`);
      a("PUT k0 mine");
      a("DEL k1");
      expect(a("COMMIT")).toEqual(ok("Transaction committed"));
      expect(store.get("k0")).toBe('"mine"');
      expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
    });

    test("rereading keys it already watches does not count; KEYS prefixes count with the keys", () => {
      const { session, store } = limited(3);
      const a = session();
      a("START");
      for (let round = 0; round < 5; round++) for (const key of ["k1", "k2"]) a(`GET ${key}`);
      a("KEYS p");
      // At the limit now: a key or prefix already watched is no new read.
      a("KEYS p");
      a("GET k1");
      expect(store.watchCounts).toEqual({ keys: 2, prefixes: 1, deferredReads: 0, everything: 0 });
      a("KEYS q");
      expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 1 });
      a("ROLLBACK");
      expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
    });

    test("a commit that changes nothing conflicts no one; one that changes a key conflicts the one watching everything, not others' unrelated watches", () => {
      const { session, store } = limited(2);
      const [a, b, c] = [session(), session(), session()];
      a("START");
      for (let i = 0; i < 3; i++) a(`GET k${i}`);
      c("START");
      c("GET other");
      // A commit whose only change is a delete of a key that is absent by then (created and deleted inside it).
      const seq = store.seq;
      b("START");
      b("PUT fleeting 1");
      b("DEL fleeting");
      expect(b("COMMIT")).toEqual(ok("Transaction committed"));
      expect(store.seq).toBe(seq + 1);
      expect([a.session.tx!.conflicted, c.session.tx!.conflicted]).toEqual([false, false]);
      b("PUT unrelated 1");
      expect([a.session.tx!.conflicted, c.session.tx!.conflicted]).toEqual([true, false]);
      c("PUT mine 1");
      expect(c("COMMIT")).toEqual(ok("Transaction committed"));
      expect(a("COMMIT")).toEqual(err("CONFLICT"));
      expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
    });
  });

  test("prefix watches (an index by prefix) mark exactly the transactions a brute-force check would, and leave nothing behind", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const next = seededRandom(seed);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
      const store = new Store();
      const alphabet = ["a", "b", "ab", "é", "😀"];
      const word = (max: number) => Array.from({ length: Math.floor(next() * (max + 1)) }, () => pick(alphabet)).join("");
      type Modelled = { w: Watcher; prefixes: Map<string, Set<string> | null> };
      const open: Modelled[] = [];
      for (let step = 0; step < 400; step++) {
        const roll = next();
        if (roll < 0.35 || open.length === 0) {
          const m = open.length > 0 && next() < 0.5 ? pick(open) : { w: { conflicted: false, watchedKeys: [], watchesEverything: false }, prefixes: new Map() };
          if (!open.includes(m)) open.push(m);
          const prefix = word(3);
          const own = next() < 0.3 ? new Set([prefix + pick(alphabet)]) : null;
          store.watchPrefix(m.w, prefix, own);
          if (m.w.conflicted) continue;
          // Read twice: exempt only what both reads took from own writes.
          const before = m.prefixes.get(prefix);
          const both = before === undefined ? own : before === null || own === null ? null : new Set([...before].filter((k) => own.has(k)));
          m.prefixes.set(prefix, both);
        } else if (roll < 0.45) {
          const m = open.splice(Math.floor(next() * open.length), 1)[0]!;
          store.unwatch(m.w);
        } else {
          const key = word(4) || "a";
          const expected = open.map(({ w, prefixes }) =>
            w.conflicted || [...prefixes].some(([p, own]) => key.startsWith(p) && !(own?.has(key) ?? false)),
          );
          if (store.get(key) === undefined) store.put(key, '"v"');
          else store.delete(key);
          expect(open.map(({ w }) => w.conflicted)).toEqual(expected);
        }
      }
      for (const { w } of open) store.unwatch(w);
      expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
    }
  });

  test("closing a session rolls its transaction back and frees its watches", () => {
    const { session, executor, store } = setup();
    const [a, b] = [session(), session()];
    a("START");
    a("GET k");
    a("PUT k 1");
    executor.closeSession(a.session);
    expect(a.session.tx).toBeNull();
    expect(b("GET k")).toEqual(err("NOT_FOUND"));
    expect(store.watchCounts).toEqual({ keys: 0, prefixes: 0, deferredReads: 0, everything: 0 });
  });
});

describe("failed levels", () => {
  test("BAD_REQUEST marks the level failed: reads, writes and START, well-formed or not, answer ABORTED until ROLLBACK", () => {
    const a = setup().session();
    a("START");
    a("PUT k 1");
    a("START");
    a("PUT j 2");
    expect(a("GET")).toEqual(err("BAD_REQUEST"));
    for (const line of ["PUT x 1", "GET k", "DEL k", "KEYS", "START"]) expect(a(line)).toEqual(err("ABORTED"));
    // Malformed ones too (PROTOCOL §4 names the commands, not their shapes); other commands answer as usual.
    for (const line of ["PUT k", 'PUT {"key":1}', "GET a b", "DEL", "KEYS a b", "START x", "put x"]) expect(a(line)).toEqual(err("ABORTED"));
    expect(a("NOPE")).toEqual(err("UNKNOWN_COMMAND"));
    expect(a("PING x")).toEqual(err("BAD_REQUEST"));
    expect(a("PING")).toEqual(ok("PONG"));
    expect(a("ROLLBACK")).toEqual(ok("Transaction rolled back"));
    expect(a("GET k")).toEqual(ok({ key: "k", value: "1" }));
    expect(a("GET j")).toEqual(err("NOT_FOUND"));
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
  });

  test("COMMIT of a failed level answers ABORTED and discards the whole transaction", () => {
    const { session } = setup();
    const [a, b] = [session(), session()];
    a("START");
    a("PUT k 1");
    a("START");
    expect(a("NOPE")).toEqual(err("UNKNOWN_COMMAND"));
    expect(a("COMMIT")).toEqual(err("ABORTED"));
    expect(a("COMMIT")).toEqual(err("NO_TRANSACTION"));
    expect(b("GET k")).toEqual(err("NOT_FOUND"));
  });

  test("a connection's next transaction starts clean after an aborted one and after a failed nested level was rolled back (level objects are reused)", () => {
    const a = setup().session();
    a("START");
    expect(a("NOPE")).toEqual(err("UNKNOWN_COMMAND"));
    expect(a("COMMIT")).toEqual(err("ABORTED"));
    a("START");
    expect(a("PUT k v")).toEqual(ok({ key: "k", value: "v" }));
    a("START");
    expect(a("GET")).toEqual(err("BAD_REQUEST"));
    expect(a("ROLLBACK")).toEqual(ok("Transaction rolled back"));
    a("START"); // the failed level's object again
    expect(a("PUT j w")).toEqual(ok({ key: "j", value: "w" }));
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
    expect(a("GET j")).toEqual(ok({ key: "j", value: "w" }));
  });

  test("NOT_FOUND is an answer, not a failure", () => {
    const a = setup().session();
    a("START");
    expect(a("GET missing")).toEqual(err("NOT_FOUND"));
    expect(a("DEL missing")).toEqual(err("NOT_FOUND"));
    expect(a("PUT k 1")).toEqual(ok({ key: "k", value: "1" }));
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
  });
});

describe("transaction byte limit", () => {
  test("PUT/DEL request bytes are counted; the request that passes the limit is TOO_LARGE and fails the level", () => {
    const { session } = setup({ maxTransactionBytes: 40 });
    const [a, b] = [session(), session()];
    a("START");
    expect(a("PUT k1 0123456789")).toMatchObject({ status: "Ok" }); // 17 bytes
    expect(a("PUT k2 0123456789")).toMatchObject({ status: "Ok" }); // 34
    expect(a("DEL k1")).toMatchObject({ status: "Ok" }); // 40: exactly the limit
    expect(a("DEL k2")).toEqual(err("TOO_LARGE"));
    expect(a("GET k2")).toEqual(err("ABORTED"));
    expect(a("COMMIT")).toEqual(err("ABORTED"));
    expect(b("KEYS")).toEqual(ok([]));
  });

  test("bytes are UTF-8 bytes of the request line, and a rolled-back level gives its bytes back", () => {
    const a = setup({ maxTransactionBytes: 20 }).session();
    a("START");
    a("START");
    expect(a("PUT k ééééééé")).toMatchObject({ status: "Ok" }); // 6 + 14 = 20 bytes
    a("ROLLBACK");
    expect(a("PUT k ééééééé")).toMatchObject({ status: "Ok" });
    expect(a("PUT j x")).toEqual(err("TOO_LARGE"));
  });

  test("a nested COMMIT hands its bytes to the parent level: rolling the parent back gives them back", () => {
    const a = setup({ maxTransactionBytes: 30 }).session();
    a("START");
    a("START");
    a("START");
    expect(a("PUT k 0123456789012345678")).toMatchObject({ status: "Ok" }); // 25 bytes
    a("COMMIT"); // into the second level
    a("ROLLBACK"); // the second level, with the 25 bytes
    expect(a("PUT j 0123456789012345678")).toMatchObject({ status: "Ok" });
    expect(a("PUT i 01234")).toEqual(err("TOO_LARGE")); // 25 + 11: the budget counts j, not k too
  });

  test("a level reused by a later START starts with no bytes of its own", () => {
    const a = setup({ maxTransactionBytes: 30 }).session();
    a("START");
    a("START");
    expect(a("PUT a 0123456789abcd")).toMatchObject({ status: "Ok" }); // 20 bytes
    a("ROLLBACK");
    a("START"); // the same level object
    a("ROLLBACK"); // gives back only what this level took: nothing
    expect(a("PUT b 01234567890123456789012")).toMatchObject({ status: "Ok" }); // 29 bytes
    expect(a("PUT c 1")).toEqual(err("TOO_LARGE")); // 29 + 7
  });

  test("reads are not limited", () => {
    const a = setup({ maxTransactionBytes: 20 }).session();
    a("START");
    for (let i = 0; i < 100; i++) expect(a(`GET some-long-key-name-${i}`)).toEqual(err("NOT_FOUND"));
    expect(a("COMMIT")).toEqual(ok("Transaction committed"));
  });
});

describe("transaction nesting limit", () => {
  test("1000 levels nest; START at the 1000th is TOO_LARGE and fails that level; ROLLBACK clears it", () => {
    const a = setup().session();
    for (let depth = 1; depth <= 1000; depth++) expect(a("START")).toEqual(ok("Transaction started"));
    expect(a("START")).toEqual(err("TOO_LARGE"));
    expect(a.session.tx!.depth).toBe(1000);
    expect(a("PUT k v")).toEqual(err("ABORTED"));
    expect(a("ROLLBACK")).toEqual(ok("Transaction rolled back"));
    expect(a("PUT k v")).toMatchObject({ status: "Ok" });
  });
});

describe("COMMIT refusals apply to every kind of commit", () => {
  class SwitchableLog extends MemoryOnlyLog {
    override readonly enabled = true;
    set failing(reason: string | null) {
      (this as { unavailableReason: string | null }).unavailableReason = reason;
    }
  }

  test("while persistence is failing, COMMIT of one write and of several answers PERSISTENCE and applies nothing", () => {
    const log = new SwitchableLog();
    const { session, store } = setup({ log });
    const a = session();
    for (const writes of [["PUT x 1"], ["PUT x 1", "PUT y 2"], ["PUT x 1", "PUT y 2", "PUT x 3"]]) {
      a("START");
      for (const line of writes) expect(a(line)).toMatchObject({ status: "Ok" });
      log.failing = "disk full (test)";
      expect(a("COMMIT")).toMatchObject({ status: "Error", code: "PERSISTENCE", message: expect.stringContaining("disk full (test)") });
      log.failing = null;
      expect(a("COMMIT")).toEqual(err("NO_TRANSACTION"));
      expect(store.get("x")).toBeUndefined();
      expect(store.seq).toBe(0);
    }
  });

  test("a COMMIT whose writes together would pass --max-data-bytes is TOO_LARGE and applies nothing, though each fits alone", () => {
    const { session, store } = setup({ maxTransactionBytes: 1 << 20 });
    store.dataLimitBytes = 4096;
    const a = session();
    const value = "v".repeat(1500);
    a("START");
    for (const key of ["a", "b", "c"]) expect(a(`PUT ${key} ${value}`)).toMatchObject({ status: "Ok" });
    expect(a("COMMIT")).toMatchObject({ status: "Error", code: "TOO_LARGE", message: expect.stringContaining("Store full") });
    expect(store.size).toBe(0);
    expect(a(`PUT a ${value}`)).toMatchObject({ status: "Ok" });
  });
});

describe("AUTH and STATS bookkeeping", () => {
  test("a successful AUTH resets the failure count that sets the next wrong password's delay", async () => {
    const executor = new Executor(new Store(), new MemoryOnlyLog(), new ServerStats(), {
      maxTransactionBytes: 1024,
      password: "secret",
      version: "test",
    });
    const s = new Session(true);
    for (let i = 0; i < 2; i++) expect(await executor.execute(parseCommand("AUTH wrong"), s)).toContain("AUTH_FAILED");
    expect(s.authFailures).toBe(2);
    expect(await executor.execute(parseCommand("AUTH secret"), s)).toContain("Authenticated");
    expect(s.authFailures).toBe(0);
  });

  test("a GET of a missing key through the general path counts in errors_by_code.NOT_FOUND", () => {
    const { session, executor } = setup();
    const a = session();
    a("GET missing");
    a("START");
    a('GET {"key":"missing"}');
    a("DEL missing");
    expect((executor.statsReport().stats as { errors_by_code: Record<string, number> }).errors_by_code.NOT_FOUND).toBe(3);
  });
});
