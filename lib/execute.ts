/**
 * Execution: Command × Session × Store → reply text.
 *
 * Owns: what every command means (PROTOCOL §3, §4): reads and writes inside
 * and outside transactions, read-your-writes, watching what a transaction
 * read, failed levels, the transaction byte budget, commit and rollback,
 * handing each commit to the CommitLog, AUTH, STATS.
 * Most replies are returned as a string at once; SAVE and a failed AUTH
 * (delayed) return a Promise; a durable write sets `session.waitSeq`.
 * `executePlain` is the fast path for plain GET/PUT, in and outside
 * transactions: same meaning, but read from the request's bytes and
 * answered as bytes. Inside a transaction its reads are watched as bytes
 * (Store.watchAscii) and its PUTs kept as bytes (Transaction.writeAscii), so
 * a transaction of plain GETs and PUTs (START, GET a, GET b, PUT a, PUT b,
 * COMMIT) makes no string when nothing else interleaves.
 * Where a command lives: `execute` switches on the command type (PUT: `put`
 * and `putInTx`); plain GET and PUT come through `executePlain` instead
 * (`getPlain`, `putPlain`), and tests/fast-path.test.ts checks both paths agree.
 * Must not: touch sockets or the disk, or parse request text.
 */
import { timingSafeEqual, createHash } from "node:crypto";
import type { CommitLog, EncodedValue } from "./commit-log.ts";
import { emptyAsciiEntry, type AsciiEntry } from "./compact-map.ts";
import { COMMAND_HELP, type Command, type Invalid, type PlainRequest } from "./commands.ts";
import type { ByteBuffer } from "./byte-buffer.ts";
import {
  entryHead,
  entryTail,
  entryWithValueOf,
  ENTRY_TAIL_BYTES,
  error,
  notFound,
  notFoundBytes,
  okEntry,
  okJson,
  REPLY,
  stringEntry,
  type ErrorCode,
} from "./replies.ts";
import type { Session } from "./session.ts";
import type { ServerStats } from "./stats.ts";
import type { Store } from "./store.ts";
import { detach, latin1Text, sortByCodePoint } from "./text.ts";
import { DELETED, type Transaction, type Write } from "./transaction.ts";
import { errorMessage } from "./errors.ts";

/** Nested START levels beyond this are refused: each level costs memory. */
const MAX_TRANSACTION_DEPTH = 1000;
const CONFLICT_MESSAGE = "Transaction conflicted: a key it read was changed by another commit; nothing was applied, retry it";
/** Delay before answering the first failed AUTH; it doubles with each further failure. */
const AUTH_FAILURE_BASE_DELAY_MS = 50;
const AUTH_FAILURE_MAX_DELAY_MS = 5000;

interface ExecutorOptions {
  maxTransactionBytes: number;
  password: string | undefined;
  version: string;
}

const HELP_REPLY = okJson(JSON.stringify(COMMAND_HELP));

export class Executor {
  private readonly passwordDigest: Buffer | null;
  /** The fast path's PUT as bytes, reused (see putPlain); in a list of one for CommitLog.appendAsciiPuts. */
  private readonly plainEntry: AsciiEntry = emptyAsciiEntry();
  private readonly plainEntries: readonly AsciiEntry[] = [this.plainEntry];

  constructor(
    readonly store: Store,
    readonly commitLog: CommitLog,
    readonly stats: ServerStats,
    private readonly options: ExecutorOptions,
  ) {
    this.passwordDigest = options.password === undefined ? null : sha256(options.password);
  }

  execute(cmd: Command, session: Session): string | Promise<string> {
    this.stats.countCommand(cmd.type);
    // PROTOCOL §6: before AUTH every other command, QUIT included, answers AUTH_REQUIRED.
    if (!session.authenticated && cmd.type !== "AUTH") {
      session.refusedBeforeAuth++;
      return this.fail("AUTH_REQUIRED", "Authentication required: send AUTH <password> first");
    }
    const tx = session.tx;
    if (tx !== null && tx.failed && abortedInFailedLevel(cmd.type === "INVALID" ? cmd.command : cmd.type)) {
      return this.fail("ABORTED", "Current transaction level failed: ROLLBACK to end it (COMMIT discards the whole transaction)");
    }
    switch (cmd.type) {
      case "GET":
        return tx === null ? this.get(cmd.key) : this.getInTx(tx, cmd.key);
      case "PUT":
        return tx === null ? this.put(session, cmd.key, cmd.value) : this.putInTx(tx, cmd.key, cmd.value, cmd.line);
      case "DEL":
        return tx === null ? this.del(session, cmd.key) : this.delInTx(tx, cmd.key, cmd.line);
      case "KEYS":
        return this.keys(tx, cmd.prefix);
      case "START":
        return this.start(session, tx);
      case "COMMIT":
        return this.commit(session, tx);
      case "ROLLBACK":
        return this.rollback(session, tx);
      case "PING":
        return REPLY.pong;
      case "HELP":
        return HELP_REPLY;
      case "STATS":
        return okJson(JSON.stringify(this.statsReport()));
      case "SAVE":
        return this.save();
      case "QUIT":
        session.quitting = true;
        return REPLY.bye;
      case "AUTH":
        return this.auth(session, cmd.password);
      case "INVALID":
        return this.invalid(session, cmd);
    }
  }

  /**
   * The fast path: a plain GET or PUT (see parsePlainRequest), answered into
   * out. Outside a transaction a GET makes no string at all: the key is
   * looked up by its bytes and the reply copied from the request and the
   * store. Returns false when the request needs the general path, having
   * written nothing and changed nothing but, at most, a watch the general
   * path would add anyway (not authenticated, a failed transaction level, a
   * read of the transaction's own write, a stored value that is not ASCII,
   * the byte budget exceeded, persistence failing).
   */
  executePlain(req: PlainRequest, src: Uint8Array, session: Session, out: ByteBuffer): boolean {
    if (!session.authenticated) return false;
    const tx = session.tx;
    if (tx === null) return req.type === "GET" ? this.getPlain(req, src, out) : this.putPlain(req, src, session, out);
    if (tx.failed) return false;
    return req.type === "GET" ? this.getPlainInTx(tx, req, src, out) : this.putPlainInTx(tx, req, src, out);
  }

  private getPlain(req: PlainRequest, src: Uint8Array, out: ByteBuffer): boolean {
    const entry = this.store.findAscii(src, req.keyStart, req.keyEnd);
    if (entry < 0) {
      this.stats.countCommand("GET");
      this.stats.countError("NOT_FOUND");
      notFoundBytes(out, src, req.keyStart, req.keyEnd);
      return true;
    }
    const mark = out.length;
    entryHead(out, src, req.keyStart, req.keyEnd);
    out.reserve(this.store.valueByteLength(entry) + ENTRY_TAIL_BYTES);
    const end = this.store.copyAsciiValue(entry, out.bytes, out.length);
    if (end < 0) {
      out.length = mark;
      return false;
    }
    out.length = end;
    entryTail(out);
    this.stats.countCommand("GET");
    return true;
  }

  /**
   * getInTx() for the fast path: answered from the transaction's own write
   * when that is held as bytes, else watched by its bytes (a deferred watch,
   * see Store.watchAscii) and read from the store. The key becomes a string
   * only when the transaction has writes held as strings, to look among them.
   */
  private getPlainInTx(tx: Transaction, req: PlainRequest, src: Uint8Array, out: ByteBuffer): boolean {
    const own = tx.ownAsciiWrite(src, req.keyStart, req.keyEnd);
    if (own !== null) {
      this.stats.countCommand("GET");
      entryWithValueOf(out, src, req.keyStart, req.keyEnd, own);
      return true;
    }
    if (tx.hasWritesAsStrings && tx.ownWrite(latin1Text(src, req.keyStart, req.keyEnd)) !== undefined) return false;
    this.store.watchAscii(tx, src, req.keyStart, req.keyEnd);
    return this.getPlain(req, src, out);
  }

  private putPlain(req: PlainRequest, src: Uint8Array, session: Session, out: ByteBuffer): boolean {
    if (this.commitLog.unavailableReason !== null) return false;
    // The stored value is the JSON string: the text and two quotes.
    if (!this.store.hasRoomForPut(req.keyEnd - req.keyStart, req.valueEnd - req.valueStart + 2)) return false;
    this.stats.countCommand("PUT");
    const valueAt = stringEntry(out, src, req.keyStart, req.keyEnd, req.valueStart, req.valueEnd);
    // The key is in the request; the value's JSON text ("...") is in the reply just built.
    const entry = this.plainEntry;
    entry.keySrc = src;
    entry.keyStart = req.keyStart;
    entry.keyEnd = req.keyEnd;
    entry.valueSrc = out.bytes;
    entry.valueStart = valueAt;
    entry.valueEnd = valueAt + 2 + req.valueEnd - req.valueStart;
    const seq = this.store.putAscii(entry);
    if (this.commitLog.enabled) session.waitSeq = this.commitLog.appendAsciiPuts(seq, this.plainEntries, 1);
    return true;
  }

  /** putInTx() for the fast path: the write is kept as bytes (see Transaction.writeAscii). */
  private putPlainInTx(tx: Transaction, req: PlainRequest, src: Uint8Array, out: ByteBuffer): boolean {
    if (tx.bytes + req.lineBytes > this.options.maxTransactionBytes) return false;
    this.stats.countCommand("PUT");
    const valueAt = stringEntry(out, src, req.keyStart, req.keyEnd, req.valueStart, req.valueEnd);
    // The value's JSON text ("...") is in the reply just built.
    const valueEnd = valueAt + 2 + req.valueEnd - req.valueStart;
    tx.writeAscii(src, req.keyStart, req.keyEnd, out.bytes, valueAt, valueEnd, req.lineBytes);
    return true;
  }

  /** The connection closed: an open transaction is rolled back. */
  closeSession(session: Session): void {
    if (session.tx !== null) this.endTransaction(session, session.tx, "rolledBack");
  }

  private get(key: string): string {
    const value = this.store.get(key);
    return value === undefined ? this.notFound(key) : okEntry(key, value);
  }

  private getInTx(tx: Transaction, key: string): string {
    const own = tx.ownWrite(key);
    if (own !== undefined) return own === DELETED ? this.notFound(key) : okEntry(key, own);
    this.watch(tx, key);
    return this.get(key);
  }

  private put(session: Session, key: string, value: EncodedValue): string {
    const refusal = this.persistenceRefusal() ?? this.storeFullRefusal(this.store.hasRoomForPut(key.length, value.length));
    if (refusal !== null) return refusal;
    const seq = this.store.put(key, value);
    if (this.commitLog.enabled) session.waitSeq = this.commitLog.append({ seq, ops: [[key, value]] });
    return okEntry(key, value);
  }

  private putInTx(tx: Transaction, key: string, value: EncodedValue, line: string): string {
    const bytes = Buffer.byteLength(line);
    if (tx.bytes + bytes > this.options.maxTransactionBytes) return this.overBudget(tx);
    // The key is a slice of the request line, which holds the value too: copy it before the transaction keeps it.
    tx.write(detach(key), value, bytes);
    return okEntry(key, value);
  }

  private del(session: Session, key: string): string {
    const value = this.store.get(key);
    if (value === undefined) return this.notFound(key);
    const refusal = this.persistenceRefusal();
    if (refusal !== null) return refusal;
    const seq = this.store.delete(key);
    if (this.commitLog.enabled) session.waitSeq = this.commitLog.append({ seq, ops: [[key, null]] });
    return okEntry(key, value);
  }

  private delInTx(tx: Transaction, key: string, line: string): string {
    const bytes = Buffer.byteLength(line);
    if (tx.bytes + bytes > this.options.maxTransactionBytes) return this.overBudget(tx);
    let value = tx.ownWrite(key);
    if (value === undefined) {
      this.watch(tx, key);
      value = this.store.get(key);
    }
    if (value === undefined || value === DELETED) {
      tx.charge(bytes);
      return this.notFound(key);
    }
    tx.write(key, DELETED, bytes);
    return okEntry(key, value);
  }

  private keys(tx: Transaction | null, prefix: string): string {
    let keys = this.store.keysWithPrefix(prefix);
    if (tx !== null) {
      const own = tx.ownWritesWithPrefix(prefix);
      // A key the transaction wrote is listed or not by its own write: not a read of the store.
      this.store.watchPrefix(tx, prefix, own);
      if (own !== null) keys = withOwnWrites(keys, own);
    }
    return okJson(JSON.stringify(sortByCodePoint(keys)));
  }

  private start(session: Session, tx: Transaction | null): string {
    if (tx === null) {
      session.beginTransaction();
      this.stats.txOpen++;
    } else if (tx.depth >= MAX_TRANSACTION_DEPTH) {
      tx.markFailed();
      return this.fail("TOO_LARGE", `Transactions nest at most ${MAX_TRANSACTION_DEPTH} levels deep`);
    } else {
      tx.begin();
    }
    return REPLY.started;
  }

  private commit(session: Session, tx: Transaction | null): string {
    if (tx === null) return this.fail("NO_TRANSACTION", "No transaction is open: COMMIT needs a START first");
    if (tx.failed) {
      this.endTransaction(session, tx, "aborted");
      return this.fail("ABORTED", "Transaction aborted: a request in it failed; nothing was applied");
    }
    if (tx.depth > 1) {
      tx.commitNested();
      return REPLY.committed;
    }
    if (tx.conflicted) {
      // Read before endTransaction, whose unwatch clears it.
      const pastReadLimit = tx.watchesEverything;
      this.endTransaction(session, tx, "conflicted");
      return this.fail("CONFLICT", pastReadLimit ? this.pastReadLimitMessage() : CONFLICT_MESSAGE);
    }
    const refusal = this.applyCommit(session, tx);
    if (refusal !== null) {
      this.endTransaction(session, tx, "aborted");
      return refusal;
    }
    this.endTransaction(session, tx, "committed");
    return REPLY.committed;
  }

  /** Applies and logs an outermost COMMIT's changes; the PERSISTENCE refusal when they must not be. */
  private applyCommit(session: Session, tx: Transaction): string | null {
    // The conflict check is done: the watches are dropped first, so the store need not skip the committer's.
    this.store.unwatch(tx);
    const asciiCount = tx.asciiChangeCount();
    if (asciiCount !== 0) {
      // The common transaction of fast-path PUTs: from their bytes, as an auto-committed plain PUT is.
      const entries = tx.heldChanges;
      const refusal = this.persistenceRefusal() ?? this.storeFullRefusal(this.store.hasRoomForAscii(entries, asciiCount));
      if (refusal !== null) return refusal;
      const seq = this.store.applyAscii(entries, asciiCount);
      if (this.commitLog.enabled) session.waitSeq = this.commitLog.appendAsciiPuts(seq, entries, asciiCount);
      return null;
    }
    const ops = tx.changes();
    if (ops.length === 0) return null;
    const refusal = this.persistenceRefusal() ?? this.storeFullRefusal(this.store.hasRoomFor(ops));
    if (refusal !== null) return refusal;
    const seq = this.store.apply(ops);
    if (this.commitLog.enabled) session.waitSeq = this.commitLog.append({ seq, ops });
    return null;
  }

  private rollback(session: Session, tx: Transaction | null): string {
    if (tx === null) return this.fail("NO_TRANSACTION", "No transaction is open: ROLLBACK needs a START first");
    if (tx.rollbackLevel()) this.endTransaction(session, tx, "rolledBack");
    return REPLY.rolledBack;
  }

  private save(): Promise<string> {
    return this.commitLog.save().then(
      () => REPLY.saved,
      (err: unknown) => this.fail("PERSISTENCE", `SAVE failed: ${errorMessage(err)}`),
    );
  }

  private auth(session: Session, password: string): string | Promise<string> {
    if (this.passwordDigest === null) {
      // No password configured: like an open door, AUTH is accepted (documented in the README).
      session.authenticated = true;
      return REPLY.authenticated;
    }
    if (timingSafeEqual(sha256(password), this.passwordDigest)) {
      session.authenticated = true;
      session.authFailures = 0;
      return REPLY.authenticated;
    }
    session.authFailures++;
    const reply = this.fail("AUTH_FAILED", "Wrong password");
    return new Promise((resolve) => setTimeout(resolve, authFailureDelayMs(session.authFailures), reply));
  }

  /** A request rejected as BAD_REQUEST, UNKNOWN_COMMAND or TOO_LARGE fails the current level. */
  private invalid(session: Session, cmd: Invalid): string {
    session.tx?.markFailed();
    return this.fail(cmd.code, cmd.message);
  }

  /** The CONFLICT of a transaction that read too much to be watched key by key (Store.maxWatchesPerTransaction). */
  private pastReadLimitMessage(): string {
    return (
      `Transaction conflicted: another commit changed the store after it had read more than ` +
      `${this.store.maxWatchesPerTransaction} distinct keys and KEYS prefixes (--max-transaction-reads), ` +
      `past which any change conflicts; nothing was applied, retry it or raise the limit`
    );
  }

  private overBudget(tx: Transaction): string {
    tx.markFailed();
    return this.fail(
      "TOO_LARGE",
      `Transaction too large: its PUT/DEL requests may total ${this.options.maxTransactionBytes} bytes`,
    );
  }

  private watch(tx: Transaction, key: string): void {
    // No detach: a GET or DEL line is little more than its key, so a slice of it pins nothing large.
    this.store.watchKey(tx, key);
  }

  private endTransaction(
    session: Session,
    tx: Transaction,
    outcome: "committed" | "rolledBack" | "conflicted" | "aborted",
  ): void {
    this.store.unwatch(tx);
    tx.release();
    session.tx = null;
    this.stats.txOpen--;
    if (outcome === "committed") this.stats.txCommitted++;
    else if (outcome === "rolledBack") this.stats.txRolledBack++;
    else if (outcome === "conflicted") this.stats.txConflicted++;
    else this.stats.txAborted++;
  }

  private persistenceRefusal(): string | null {
    const reason = this.commitLog.unavailableReason;
    return reason === null ? null : this.fail("PERSISTENCE", `Write refused: persistence is failing: ${reason}`);
  }

  /** TOO_LARGE when a write's records would not fit under --max-data-bytes (as Redis answers OOM past maxmemory). */
  private storeFullRefusal(fits: boolean): string | null {
    if (fits) return null;
    const limit = this.store.dataLimitBytes;
    return this.fail(
      "TOO_LARGE",
      `Store full: keys and values take ${this.store.dataBytes} of the ${limit} bytes allowed (--max-data-bytes); nothing was written; delete keys to make room`,
    );
  }

  private notFound(key: string): string {
    this.stats.countError("NOT_FOUND");
    return notFound(key);
  }

  private fail(code: ErrorCode, message: string): string {
    this.stats.countError(code);
    return error(code, message);
  }

  statsReport(): Record<string, unknown> {
    const s = this.stats;
    const memory = process.memoryUsage();
    const uptime = s.uptimeSeconds();
    const transactions = {
      open: s.txOpen,
      committed: s.txCommitted,
      rolled_back: s.txRolledBack,
      conflicted: s.txConflicted,
      aborted: s.txAborted,
      watched_keys: watchedKeys(this.store),
      watched_prefixes: this.store.watchCounts.prefixes,
      read_limit_reached: this.store.watchedEverythingTotal,
    };
    return {
      keys: this.store.size,
      connections: s.connectionsCurrent,
      commands: s.commands,
      uptime,
      memory: {
        rss: memory.rss,
        heap_used: memory.heapUsed,
        heap_total: memory.heapTotal,
        client_buffers: s.clientBufferBytes(),
        data: this.store.dataBytes,
        data_limit: this.store.dataLimitBytes,
        data_allocated: this.store.allocatedBytes,
        data_growing: this.store.growing,
      },
      transactions,
      persistence: this.commitLog.stats(),
      server: { version: this.options.version, uptime_seconds: uptime, pid: process.pid, bun: Bun.version },
      clients: { connected: s.connectionsCurrent, total: s.connectionsTotal, rejected: s.connectionsRejected },
      stats: {
        keys: this.store.size,
        commands: s.commands,
        ops_per_sec: s.opsPerSecond(),
        commands_by_type: s.commandsByType,
        errors_by_code: s.errorsByCode,
        commit_seq: this.store.seq,
      },
    };
  }
}

/** How long the reply to the nth failed AUTH on a connection waits: 50 ms, doubling, at most 5 s. */
export function authFailureDelayMs(failures: number): number {
  return Math.min(AUTH_FAILURE_BASE_DELAY_MS * 2 ** (failures - 1), AUTH_FAILURE_MAX_DELAY_MS);
}

/** Keys watched by open transactions, counting reads not (yet) made watches (a key read twice that way counts twice). */
function watchedKeys(store: Store): number {
  const counts = store.watchCounts;
  return counts.keys + counts.deferredReads;
}

function abortedInFailedLevel(type: Command["type"] | undefined): boolean {
  return type === "PUT" || type === "GET" || type === "DEL" || type === "KEYS" || type === "START";
}

function sha256(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** The store's keys under a prefix with a transaction's own writes under it applied: what KEYS answers inside it. */
function withOwnWrites(storeKeys: string[], own: ReadonlyMap<string, Write>): string[] {
  const keys = new Set(storeKeys);
  for (const [key, value] of own) {
    if (value === DELETED) keys.delete(key);
    else keys.add(key);
  }
  return [...keys];
}
