/**
 * The txkv client library: one TCP (or TLS) connection to a txkv server.
 *
 * Owns: connecting (with AUTH), writing request lines (batched per tick, with
 * a write queue flushed on `drain`), matching reply lines to requests in order
 * (a FIFO of pending replies, so many requests may be in flight), typed errors,
 * and the retrying `transaction()` helper.
 * At most IN_FLIGHT_BYTES of requests are sent and unanswered at a time; the
 * rest wait here. Then the kernel takes each write whole, so the server never
 * holds half a line while this process is busy (a GC pause): the server runs
 * such a fragment on its own after --partial-request-ms (PROTOCOL §1), which
 * would shift every later reply onto the wrong request.
 * Must not: import server code, or retry anything whose outcome is unknown.
 *
 * Requests use the JSON form (`PUT {"key":K,"value":V}`), so any string key
 * and any JSON value round-trip. Semantics a caller should know:
 *
 * - `get(key)` and `del(key)` resolve to `undefined` when the key does not
 *   exist (the server's `NOT_FOUND`); JSON `null` is a value like any other.
 * - Every other Error reply rejects with a `TxkvError` carrying the reply's
 *   `code` and `message`.
 * - When the connection closes (server gone, network error, `close()`,
 *   `destroy()`), every request still waiting for its reply rejects with
 *   `TxkvConnectionError`, and so does every later call. The client does not
 *   reconnect by itself: make a new one.
 * - `connect()` gives up after `connectTimeoutMs` (TCP, TLS handshake and
 *   AUTH together); calls have no timeout: `destroy()` ends waiting ones.
 * - `transaction(fn)` holds the connection for the whole transaction: calls
 *   made on the client meanwhile wait and are sent after it ends, so they
 *   never interleave into it. Inside `fn`, use the `tx` handle it receives;
 *   calling the client itself from inside `fn` waits for `fn`, i.e. deadlocks.
 */

import * as v from "valibot";
import { parseJsonWithBigInts, stringifyStoredValue } from "./exact-json.ts";
import { formatAddress } from "./address.ts";
import { errorMessage } from "./errors.ts";

/**
 * Any value JSON can carry. An integer that a `number` would round is read
 * as a `bigint`, and a `bigint` is written as its digits. NaN and ±Infinity
 * are refused (TypeError): JSON has no such numbers; so are values an untyped
 * caller may pass that JSON.stringify would change (stringifyStoredValue).
 */
export type JsonValue = null | boolean | number | bigint | string | JsonValue[] | { [key: string]: JsonValue };

export type TlsClientOptions = {
  /** PEM certificate(s) of the CA that signed the server's certificate. */
  ca?: string | Uint8Array | Array<string | Uint8Array>;
  /** Default true: refuse a certificate that does not verify. */
  rejectUnauthorized?: boolean;
  /** Name to check the certificate against (and to send as SNI). */
  serverName?: string;
};

export type ClientOptions = {
  /** Default `127.0.0.1`. */
  host?: string;
  /** Default 8080. */
  port?: number;
  /** Sent as `AUTH {"password":…}` before anything else. */
  password?: string;
  /** `true` for TLS with the system's trusted CAs, or TLS options. Default: plain TCP. */
  tls?: boolean | TlsClientOptions;
  /**
   * How long `connect()` may take, TCP connect, TLS handshake and AUTH
   * together, before it rejects with `TxkvConnectionError`. Default 10000 ms
   * (as ioredis); at most 2147483647, what a timer can wait.
   */
  connectTimeoutMs?: number;
};

const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** A timer waits at most 2^31 - 1 ms; a longer delay would fire at once. */
const ConnectTimeoutSchema = v.pipe(
  v.number("connectTimeoutMs: expected a number"),
  v.gtValue(0, "connectTimeoutMs: expected more than 0"),
  v.maxValue(2_147_483_647, "connectTimeoutMs: expected at most 2147483647"),
);

export type TransactionOptions = {
  /** How many times to run the function again after a `CONFLICT`. Default 10. */
  retries?: number;
  /** First backoff before a retry; doubled each time, with jitter. Default 5 ms. */
  backoffMs?: number;
  /** Upper bound of one backoff. Default 250 ms. */
  maxBackoffMs?: number;
};

/** Backoffs are milliseconds from 0 up, retries a count: NaN, a fraction or a negative number is a mistake to report. */
const TransactionOptionsSchema = v.object({
  retries: v.optional(v.pipe(v.number("retries: expected a number"), v.integer("retries: expected a whole number"), v.minValue(0, "retries: expected 0 or more"))),
  backoffMs: v.optional(v.pipe(v.number("backoffMs: expected a number"), v.finite("backoffMs: expected a finite number"), v.minValue(0, "backoffMs: expected 0 or more"))),
  maxBackoffMs: v.optional(v.pipe(v.number("maxBackoffMs: expected a number"), v.finite("maxBackoffMs: expected a finite number"), v.minValue(0, "maxBackoffMs: expected 0 or more"))),
});

/** An Error reply line's shape (also read by `txkv bench`). */
export const ErrorReplySchema = v.object({ status: v.literal("Error"), code: v.string(), message: v.string() });

const ReplySchema = v.variant("status", [
  v.object({ status: v.literal("Ok"), result: v.unknown(), message: v.optional(v.string()) }),
  ErrorReplySchema,
]);

/** One reply line, parsed. */
export type Reply = v.InferOutput<typeof ReplySchema>;

/** An Error reply from the server: branch on `code`, show `message`. */
export class TxkvError extends Error {
  override readonly name = "TxkvError";
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The connection is gone (or could not be made). A request that failed this
 * way may or may not have reached the server, except where documented.
 */
export class TxkvConnectionError extends Error {
  override readonly name: string = "TxkvConnectionError";
  /**
   * The Error code when the server closed the connection with one: `BUSY`
   * (too many connections). The request that the refusal answered got a
   * TxkvError with the same code, so `error.code === "BUSY"` finds both.
   */
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
  }
}

/**
 * The connection dropped after COMMIT was sent and before its reply arrived.
 * The transaction may or may not have been applied: the server applies a
 * COMMIT it has read in full, and rolls back a transaction whose connection
 * closes before COMMIT arrives. Nothing is retried; check the data (or make
 * the transaction's writes idempotent) before running it again.
 */
export class TxkvOutcomeUnknownError extends TxkvConnectionError {
  override readonly name = "TxkvOutcomeUnknownError";
}

/** The operations available inside `transaction()`. Valid only until the function returns. */
export interface Transaction {
  get(key: string): Promise<JsonValue | undefined>;
  put(key: string, value: JsonValue): Promise<void>;
  del(key: string): Promise<JsonValue | undefined>;
  keys(prefix?: string): Promise<string[]>;
}

/** A request made and not yet answered. */
type Pending = {
  resolve: (reply: Reply) => void;
  reject: (error: Error) => void;
  /** The request line, LF included; dropped once written. */
  text: string;
  /** Its UTF-8 length. */
  bytes: number;
  /** Handed to the socket (some of it may have reached the server). */
  written: boolean;
};

/**
 * Request bytes sent and not yet answered, at most (one longer request goes
 * alone). Below the kernel's smallest default send buffer (16 KiB), so a
 * write of them is always taken whole.
 */
const IN_FLIGHT_BYTES = 8 * 1024;

const encoder = new TextEncoder();

/** Connects, authenticates when a password is given, and resolves with a ready client (see ClientOptions.connectTimeoutMs). */
export function connect(options: ClientOptions = {}): Promise<TxkvClient> {
  return TxkvClient.connect(options);
}

export class TxkvClient {
  readonly host: string;
  readonly port: number;
  /** Resolves when the connection has closed, for whatever reason. */
  readonly closed: Promise<void>;

  private socket: Bun.Socket<undefined> | null = null;
  private isClosed = false;
  private closeError: TxkvConnectionError | null = null;
  private resolveClosed!: () => void;

  /** Requests not answered yet, in order, from pendingHead; those from unsentIndex are not written yet. */
  private readonly pending: Pending[] = [];
  private pendingHead = 0;
  private unsentIndex = 0;
  private inFlightBytes = 0;

  private flushScheduled = false;
  /** Bytes of the last write the socket did not take yet. */
  private writeQueue: Uint8Array | null = null;
  /** close() was called: new calls reject; the ones already made go on. */
  private closeRequested = false;
  private endWhenFlushed = false;
  private readonly idleWaiters: Array<() => void> = [];

  private readonly decoder = new TextDecoder();
  private partialLine = "";

  /** A transaction holds the connection; plain calls wait in `waiters`. */
  private held = false;
  /** transaction() calls not finished (one may be between attempts, holding nothing). */
  private runningTransactions = 0;
  private readonly waiters: Array<() => void> = [];

  /** Connects, authenticates when a password is given, and resolves with a ready client. */
  static async connect(options: ClientOptions = {}): Promise<TxkvClient> {
    const checked = v.safeParse(ConnectTimeoutSchema, options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    if (!checked.success) throw new TypeError(`connect options: ${checked.issues[0].message}`);
    const timeoutMs = checked.output;
    const client = new TxkvClient(options);
    // No client object exists yet for the caller to destroy: a handshake or an AUTH never answered would wait forever.
    const timer = setTimeout(() => client.drop(`cannot connect to ${client.address}: not ready within ${timeoutMs} ms (connectTimeoutMs)`), timeoutMs);
    try {
      await client.open(options);
    } finally {
      clearTimeout(timer);
    }
    return client;
  }

  private constructor(options: ClientOptions) {
    this.host = options.host ?? "127.0.0.1";
    this.port = options.port ?? 8080;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /** `host:port`, an IPv6 host in brackets (`[::1]:8080`), as messages name the server. */
  get address(): string {
    return formatAddress(this.host, this.port);
  }

  // ---- public commands -------------------------------------------------

  async get(key: string): Promise<JsonValue | undefined> {
    return valueOrUndefined(await this.request(`GET ${JSON.stringify({ key })}`));
  }

  async put(key: string, value: JsonValue): Promise<void> {
    checkOk(await this.request(putLine(key, value)));
  }

  /** Deletes the key; resolves to the deleted value, or `undefined` when there was none. */
  async del(key: string): Promise<JsonValue | undefined> {
    return valueOrUndefined(await this.request(`DEL ${JSON.stringify({ key })}`));
  }

  /** The keys that start with `prefix` (all keys by default), sorted. */
  async keys(prefix = ""): Promise<string[]> {
    return checkOk(await this.request(keysLine(prefix))) as string[];
  }

  async ping(): Promise<string> {
    return checkOk(await this.request("PING")) as string;
  }

  async stats(): Promise<Record<string, unknown>> {
    return checkOk(await this.request("STATS")) as Record<string, unknown>;
  }

  /**
   * Sends one request line as it is and resolves with the parsed reply, Error
   * replies included (it rejects only when the connection fails). For tools
   * such as the CLI; waits, like every call, while a transaction holds the client.
   */
  send(line: string): Promise<Reply> {
    try {
      checkRequestLine(line);
    } catch (error) {
      return Promise.reject(error);
    }
    return this.request(line);
  }

  /**
   * Runs `fn` inside START … COMMIT and resolves with what `fn` returned.
   *
   * - `CONFLICT` at COMMIT: nothing was applied; after a backoff the whole
   *   function runs again (up to `retries` more times, then the `TxkvError`
   *   with code `CONFLICT` is thrown). `fn` must therefore be safe to re-run.
   * - `fn` throws: the transaction is rolled back and the error rethrown, a
   *   `CONFLICT` too (from another transaction `fn` ran): only this
   *   transaction's own COMMIT answering `CONFLICT` is retried.
   * - Other COMMIT errors (`ABORTED`, `PERSISTENCE`): nothing was applied; thrown.
   * - The connection drops before COMMIT is sent: nothing was applied
   *   (`TxkvConnectionError`). It drops after COMMIT is sent and before the
   *   reply: the outcome is unknown (`TxkvOutcomeUnknownError`); not retried.
   *
   * While `fn` runs, other calls on this client wait (see the file comment).
   */
  async transaction<T>(fn: (tx: Transaction) => Promise<T> | T, options: TransactionOptions = {}): Promise<T> {
    const checked = v.safeParse(TransactionOptionsSchema, options);
    if (!checked.success) throw new TypeError(`transaction options: ${checked.issues[0].message}`);
    if (this.closeRequested || this.isClosed) throw this.closeError ?? new TxkvConnectionError("connection closed");
    const retries = checked.output.retries ?? 10;
    const baseBackoff = checked.output.backoffMs ?? 5;
    const maxBackoff = checked.output.maxBackoffMs ?? 250;
    this.runningTransactions++;
    try {
      for (let attempt = 0; ; attempt++) {
        const outcome = await this.runTransactionOnce(fn);
        if (outcome.committed) return outcome.result;
        if (attempt >= retries) throw outcome.conflict;
        const ceiling = Math.min(maxBackoff, baseBackoff * 2 ** attempt);
        await Bun.sleep(ceiling / 2 + (Math.random() * ceiling) / 2);
      }
    } finally {
      this.runningTransactions--;
      this.wakeCloseIfIdle();
    }
  }

  /**
   * Closes the connection gracefully: requests already made still get their
   * replies (those waiting behind a running transaction too, and the
   * transaction runs to its end, retries included); later calls reject with
   * `TxkvConnectionError`. It waits for running transactions, so calling it
   * from inside a transaction's function waits forever, like any call there.
   */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.closeRequested = true;
    this.closeError ??= new TxkvConnectionError("connection closed by the client");
    while (!this.isClosed && (this.held || this.waiters.length > 0 || this.runningTransactions > 0)) {
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
    this.endWhenFlushed = true;
    this.endIfIdle();
    await this.closed;
  }

  /**
   * Drops the connection now, without waiting for anything: every request
   * still waiting (those queued behind a transaction, and the transaction's
   * own) rejects with `TxkvConnectionError`, and `closed` resolves. The way
   * to end a call the server never answers; what such a request did on the
   * server is unknown. `reason` is added to the error's message.
   */
  destroy(reason?: string | Error): void {
    const why = reason === undefined ? "" : `: ${errorMessage(reason)}`;
    this.drop(`connection destroyed by the client${why}`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** True once the connection has closed; every call then rejects. */
  get isOpen(): boolean {
    return !this.isClosed;
  }

  /** Why the connection closed (the error later calls reject with); null while it is open. */
  get closeReason(): TxkvConnectionError | null {
    return this.isClosed ? this.closeError : null;
  }

  // ---- transactions ----------------------------------------------------

  /** One attempt: committed with fn's result, or refused by its COMMIT with CONFLICT (anything else throws). */
  private async runTransactionOnce<T>(
    fn: (tx: Transaction) => Promise<T> | T,
  ): Promise<{ committed: true; result: T } | { committed: false; conflict: TxkvError }> {
    await this.hold();
    let active = true;
    const direct = (line: string): Promise<Reply> => {
      if (!active) return Promise.reject(new Error("transaction handle used after its transaction ended"));
      return this.sendNow(line);
    };
    const tx: Transaction = {
      get: async (key) => valueOrUndefined(await direct(`GET ${JSON.stringify({ key })}`)),
      put: async (key, value) => void checkOk(await direct(putLine(key, value))),
      del: async (key) => valueOrUndefined(await direct(`DEL ${JSON.stringify({ key })}`)),
      keys: async (prefix = "") => checkOk(await direct(keysLine(prefix))) as string[],
    };
    try {
      checkOk(await this.sendNow("START"));
      let result: T;
      try {
        result = await fn(tx);
      } catch (error) {
        active = false;
        await this.rollbackQuietly();
        throw error;
      }
      active = false;
      let commitReply: Reply;
      const commit = this.sendNow("COMMIT");
      const commitRequest = this.pending.at(-1);
      try {
        commitReply = await commit;
      } catch (error) {
        // Only a COMMIT that reached the socket may have been applied; one never written was not.
        if (error instanceof TxkvConnectionError && commitRequest?.written === true) {
          throw new TxkvOutcomeUnknownError(`connection lost before the COMMIT reply: outcome unknown (${error.message})`);
        }
        throw error;
      }
      // Told apart here, not by the error's code: fn may throw a CONFLICT of another transaction.
      if (commitReply.status === "Error" && commitReply.code === "CONFLICT") {
        return { committed: false, conflict: new TxkvError(commitReply.code, commitReply.message) };
      }
      checkOk(commitReply);
      return { committed: true, result };
    } finally {
      active = false;
      this.release();
    }
  }

  /** After `fn` threw: end the transaction; a dead connection already ended it server-side. */
  private async rollbackQuietly(): Promise<void> {
    try {
      await this.sendNow("ROLLBACK");
    } catch (error) {
      if (!(error instanceof TxkvConnectionError)) throw error;
    }
  }

  private async hold(): Promise<void> {
    if (!this.held && this.waiters.length === 0) {
      this.held = true;
      return;
    }
    await new Promise<void>((resolve) =>
      this.waiters.push(() => {
        this.held = true;
        resolve();
      }),
    );
  }

  /** Wakes waiters in order: plain requests are sent at once, up to the next transaction. */
  private release(): void {
    this.held = false;
    while (!this.held && this.waiters.length > 0) this.waiters.shift()!();
    this.wakeCloseIfIdle();
  }

  /** close() waits for the connection to be free of transactions and queued calls. */
  private wakeCloseIfIdle(): void {
    if (!this.held && this.waiters.length === 0 && this.runningTransactions === 0) {
      for (const idle of this.idleWaiters.splice(0)) idle();
    }
  }

  // ---- requests and replies --------------------------------------------

  /** Sends now, or after the transaction holding the client ends. */
  private request(line: string): Promise<Reply> {
    if (this.closeRequested && !this.isClosed) return Promise.reject(this.closeError);
    if (!this.held && this.waiters.length === 0) return this.sendNow(line);
    return new Promise((resolve, reject) => this.waiters.push(() => this.sendNow(line).then(resolve, reject)));
  }

  private sendNow(line: string): Promise<Reply> {
    if (this.isClosed || this.endWhenFlushed) {
      return Promise.reject(this.closeError ?? new TxkvConnectionError("connection closed"));
    }
    const text = line + "\n";
    const promise = new Promise<Reply>((resolve, reject) =>
      this.pending.push({ resolve, reject, text, bytes: Buffer.byteLength(text), written: false }),
    );
    this.scheduleFlush();
    return promise;
  }

  private scheduleFlush(): void {
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  /**
   * Writes the requests made so far, as many as the in-flight window allows,
   * in one write (pipelining without a write per request). Runs once per
   * tick, on `drain`, and when replies make room in the window.
   */
  private flush(): void {
    this.flushScheduled = false;
    const socket = this.socket;
    if (!socket || this.isClosed) return; // before open: open() flushes; after close: already rejected
    // Until the socket takes no more or the window is full: a window can open while a write is
    // still going out (a TOO_LARGE answered before its line was wholly sent).
    for (;;) {
      if (this.writeQueue === null) this.writeQueue = this.takeWindow();
      if (this.writeQueue === null) break;
      const written = socket.write(this.writeQueue);
      if (written < 0) return; // closed: the close handler rejects the pending requests
      if (written < this.writeQueue.length) {
        this.writeQueue = this.writeQueue.subarray(written);
        break;
      }
      this.writeQueue = null;
    }
    this.endIfIdle();
  }

  /** The next unwritten requests that fit in the window, as bytes (null: none may go now). */
  private takeWindow(): Uint8Array | null {
    let text = "";
    while (this.unsentIndex < this.pending.length) {
      const request = this.pending[this.unsentIndex]!;
      if (this.inFlightBytes > 0 && this.inFlightBytes + request.bytes > IN_FLIGHT_BYTES) break;
      this.inFlightBytes += request.bytes;
      request.written = true;
      text += request.text;
      request.text = "";
      this.unsentIndex++;
    }
    return text === "" ? null : encoder.encode(text);
  }

  /** True when every byte of pending[index] has been handed to the socket. */
  private fullyWritten(index: number): boolean {
    if (index >= this.unsentIndex) return false;
    if (this.writeQueue === null) return true;
    // The bytes the socket has not taken yet are the end of the last write: the last requests taken.
    let after = 0;
    for (let i = this.unsentIndex - 1; i > index; i--) after += this.pending[i]!.bytes;
    return this.writeQueue.length <= after;
  }

  /** After close(): end the socket once every request is written and answered. */
  private endIfIdle(): void {
    const idle = this.writeQueue === null && !this.flushScheduled && this.pending.length === this.pendingHead;
    if (this.endWhenFlushed && idle) this.socket?.end();
  }

  private onData(chunk: Uint8Array): void {
    // Only the new text is searched: a long reply (a KEYS of a big store) arriving in many
    // chunks was searched from its start at each one, quadratic (4.8 s for 64 MB).
    const text = this.decoder.decode(chunk, { stream: true });
    let start = 0;
    for (let newline = text.indexOf("\n"); newline !== -1; newline = text.indexOf("\n", start)) {
      const line = start === 0 && this.partialLine !== "" ? this.partialLine + text.slice(0, newline) : text.slice(start, newline);
      this.partialLine = "";
      start = newline + 1;
      this.onReplyLine(line);
    }
    if (start < text.length) this.partialLine += start === 0 ? text : text.slice(start);
  }

  private onReplyLine(line: string): void {
    let reply: Reply;
    try {
      reply = v.parse(ReplySchema, parseJsonWithBigInts(line));
    } catch {
      this.fail(new TxkvConnectionError(`unreadable reply from the server: ${line.slice(0, 200)}`));
      return;
    }
    // BUSY comes right before the server closes: it is also why every later request fails.
    if (reply.status === "Error" && reply.code === "BUSY") {
      this.closeError ??= new TxkvConnectionError(`${reply.code}: ${reply.message}`, reply.code);
    }
    const waiter = this.pending[this.pendingHead];
    if (waiter === undefined) {
      // A reply nobody asked for: the server refusing us (BUSY) right before it closes.
      if (reply.status === "Error") this.closeError ??= new TxkvConnectionError(`${reply.code}: ${reply.message}`, reply.code);
      return;
    }
    // TOO_LARGE may come before the line is wholly sent (the server answers once the limit is
    // passed and skips the rest up to the LF): it is this request's one reply.
    if (!this.fullyWritten(this.pendingHead) && !(reply.status === "Error" && reply.code === "TOO_LARGE")) {
      // A reply to a request not (wholly) sent: the server ran a fragment of a line on its own
      // (a request bigger than the socket takes at once, then a pause). Every later reply would
      // be off by one: fail rather than hand out wrong answers.
      this.fail(new TxkvConnectionError(`reply out of step with the requests (the server ran part of a request line): ${line.slice(0, 200)}`));
      return;
    }
    this.pending[this.pendingHead++] = undefined as unknown as Pending;
    this.inFlightBytes -= waiter.bytes;
    if (this.pendingHead > 1024 && this.pendingHead * 2 > this.pending.length) {
      this.pending.splice(0, this.pendingHead);
      this.unsentIndex -= this.pendingHead;
      this.pendingHead = 0;
    }
    if (this.unsentIndex < this.pending.length) this.scheduleFlush();
    waiter.resolve(reply);
    if (this.endWhenFlushed) this.endIfIdle();
  }

  /** Ends the connection at once (destroy(), connect timeout), with this message for every waiting request. */
  private drop(message: string): void {
    if (this.isClosed) return;
    this.closeError = new TxkvConnectionError(message);
    this.socket?.terminate();
    this.fail(this.closeError);
  }

  /** Marks the client closed and rejects every request still waiting. */
  private fail(error: TxkvConnectionError): void {
    if (!this.isClosed) {
      this.isClosed = true;
      this.closeError ??= error;
      const waiting = this.pending.splice(this.pendingHead);
      this.pendingHead = 0;
      this.unsentIndex = 0;
      this.inFlightBytes = 0;
      this.pending.length = 0;
      for (const waiter of waiting) waiter.reject(this.closeError);
      this.release();
      for (const idle of this.idleWaiters.splice(0)) idle();
      this.socket?.end();
      this.resolveClosed();
    }
  }

  private async open(options: ClientOptions): Promise<void> {
    const tls = tlsConfig(options.tls);
    let handshakeDone!: () => void;
    const handshake = new Promise<void>((resolve) => (handshakeDone = resolve));
    const connecting = this.startConnecting(tls, handshakeDone);
    let socket: Bun.Socket<undefined> | null;
    try {
      // Given up (connect timeout) while the TCP connect is still pending: stop waiting for it.
      socket = await Promise.race([connecting, this.closed.then(() => null)]);
    } catch (error) {
      const reason = errorMessage(error);
      this.fail(new TxkvConnectionError(`cannot connect to ${this.address}: ${reason}`));
      throw this.closeError;
    }
    if (socket === null) {
      connecting.then((late) => late.terminate(), () => {});
      throw this.closeError;
    }
    this.socket = socket;
    if (tls) {
      await Promise.race([handshake, this.closed]);
      if (this.isClosed) throw this.closeError;
    }
    if (options.password !== undefined) {
      // The JSON form: a password may begin with "{" or a space, or hold any character.
      const reply = await this.sendNow(`AUTH ${JSON.stringify({ password: options.password })}`);
      if (reply.status === "Error") {
        await this.close();
        throw new TxkvError(reply.code, reply.message);
      }
    }
  }

  /** The TCP (or TLS) connect, with this client's handlers; async, so that a bad argument rejects rather than throws. */
  private async startConnecting(tls: ReturnType<typeof tlsConfig>, handshakeDone: () => void): Promise<Bun.Socket<undefined>> {
    const where = this.address;
    // Without verification a certificate that fails it is no reason to stop: Bun then keeps the connection open.
    const verifies = !(typeof tls === "object" && tls.rejectUnauthorized === false);
    return Bun.connect({
      hostname: this.host,
      port: this.port,
      tls,
      socket: {
        // With this handler Bun reports why verification failed; it still closes the socket itself.
        handshake: tls
          ? (_socket, success, authorizationError) => {
              if (success || !verifies) return handshakeDone();
              const reason = authorizationError?.message ?? "handshake failed";
              this.closeError ??= new TxkvConnectionError(`TLS connection to ${where} refused: ${reason}`);
            }
          : undefined,
        data: (_socket, chunk) => this.onData(chunk),
        drain: () => this.flush(),
        close: (_socket, error) =>
          this.fail(new TxkvConnectionError(`connection to ${where} closed${error ? `: ${error.message}` : ""}`)),
        error: (_socket, error) => this.fail(new TxkvConnectionError(`connection to ${where} failed: ${error.message}`)),
        connectError: () => {},
      },
    });
  }
}

// ---- helpers -------------------------------------------------------------

function checkOk(reply: Reply): unknown {
  if (reply.status === "Error") throw new TxkvError(reply.code, reply.message);
  return reply.result;
}

/** GET/DEL: the value of `{"key","value"}`, or undefined for NOT_FOUND. */
function valueOrUndefined(reply: Reply): JsonValue | undefined {
  if (reply.status === "Error" && reply.code === "NOT_FOUND") return undefined;
  return (checkOk(reply) as { value: JsonValue }).value;
}

/** PUT in the JSON form; a value JSON would store changed (undefined, a Map, …) is refused with a TypeError. */
function putLine(key: string, value: JsonValue): string {
  return `PUT ${stringifyStoredValue({ key, value })}`;
}

function keysLine(prefix: string): string {
  return prefix === "" ? "KEYS" : `KEYS ${JSON.stringify({ prefix })}`;
}

function checkRequestLine(line: string): void {
  if (typeof line !== "string") throw new TypeError(`a request line is a string, not ${line === null ? "null" : typeof line}`);
  // A CR inside the line is data (a plain value may hold one); one at its end the server would drop.
  if (line.includes("\n") || line.endsWith("\r")) throw new TypeError("a request line must not contain LF or end in CR");
  if (isBlankLine(line)) throw new TypeError("a blank line is not a request (the server would not reply)");
  // UTF-8 cannot carry a lone surrogate: encoding would silently store U+FFFD in its place.
  if (!line.isWellFormed()) throw new TypeError("a request line must not hold a lone surrogate (use the JSON form's \\u escapes)");
}

/** Not a request, as the server frames lines: empty, or only spaces and tabs (it gets no reply). */
export function isBlankLine(line: string): boolean {
  return /^[ \t]*$/.test(line);
}

function tlsConfig(tls: ClientOptions["tls"]): Bun.TLSOptions | boolean | undefined {
  if (tls === undefined || tls === false) return undefined;
  if (tls === true) return true;
  return { ca: tls.ca, rejectUnauthorized: tls.rejectUnauthorized, serverName: tls.serverName };
}

