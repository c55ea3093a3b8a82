/**
 * The TCP server: the only module that touches the protocol port's sockets
 * (the metrics endpoint has its own HTTP server; client.ts and bench.ts are
 * clients).
 *
 * Owns: Bun.listen handlers (open/handshake/data/drain/end/close/error),
 * TLS, each connection's framer, output queue and held replies, the
 * unterminated-request timer, read pausing when a client does not read its
 * replies, fairness (a connection that brought a large read waits until the
 * others had their turn), the connection limit, the idle timeout, the
 * cross-protocol guard, the order of replies, the lingering close (see
 * endConnection), and the graceful drain at shutdown.
 * Per data event, all replies that are ready are built in one ByteBuffer
 * shared by every connection and queued as one range of it; when the
 * event loop's turn ends (one setImmediate), each connection's queue goes
 * out in one socket write, as Redis writes its replies before it polls
 * again (flushTurn; a turn's replies past TURN_FLUSH_BYTES go at once).
 * A plain GET or PUT, in or outside a
 * transaction, takes the fast path (parsePlainRequest +
 * Executor.executePlain), straight from the request's bytes into the reply
 * bytes; an argument-less command is recognised from its bytes too
 * (noArgCommandOf); every other line is decoded and goes through
 * commandFromFrame + Executor.execute.
 * Replies that must wait (a durable write under --fsync always, SAVE, a
 * delayed AUTH failure) are held in order (HeldReplies: bytes in one reused
 * buffer per connection); later replies queue behind them.
 * A request whose reply is asynchronous (SAVE, a failed AUTH) also holds the
 * connection's later requests: they run once it is answered, so a client
 * cannot pipeline password guesses past the failure delay.
 * Must not: parse request text itself (it calls commands.ts on the framer's
 * lines) or decide what a command does (execute.ts does; the server acts
 * only on what the connection needs: QUIT's close, the cross-protocol
 * guard, a reply that comes later), or touch the disk.
 */
import type { Socket, TCPSocketListener } from "bun";
import { commandFromFrame, newPlainRequest, noArgCommandOf, parsePlainRequest, type Command } from "./commands.ts";
import type { Executor } from "./execute.ts";
import { LINE, LineFramer, type Frame } from "./framing.ts";
import type { LogFields, Logger } from "./log.ts";
import { ByteBuffer, copyOf } from "./byte-buffer.ts";
import { HeldReplies } from "./held-replies.ts";
import { acknowledgeNow } from "./quick-ack.ts";
import { error } from "./replies.ts";
import { Session } from "./session.ts";
import { asError } from "./errors.ts";

export interface ServerOptions {
  host: string;
  port: number;
  maxConnections: number;
  maxRequestBytes: number;
  maxOutputBytes: number;
  partialRequestMs: number;
  password: string | undefined;
  /** PEM certificate (chain) and private key: serve TLS instead of plain TCP. */
  tls: { cert: string; key: string } | undefined;
  /** Close connections that stay silent this many seconds (0: never). */
  idleTimeoutSeconds: number;
}

/**
 * A data event at least this large ends the connection's turn: Bun reads a
 * busy socket again and again, 512 KiB at a time, before it serves the next
 * one, so a client pipelining without pause would hold every other client
 * for hundreds of milliseconds. (Redis reads at most 16 KiB per client per turn.)
 */
const FAIR_SHARE_BYTES = 64 * 1024;

/**
 * At most this many requests of one connection run in one turn; the rest
 * wait in its buffer until the other ready connections had theirs (then
 * the turn ends as after FAIR_SHARE_BYTES). One 512 KiB read holds tens of
 * thousands of short pipelined requests, tens of milliseconds of work that
 * every other client waited through, per busy connection.
 */
export const MAX_REQUESTS_PER_TURN = 4096;

/**
 * Requests a connection may send before AUTH (each answered AUTH_REQUIRED)
 * before the server closes it. Without a bound, clients that never
 * authenticate and never read their replies each made the server write
 * megabytes of AUTH_REQUIRED (the kernel's send buffer, then this server's
 * queue) and held the event loop for seconds while doing it; Redis closes
 * such clients too, past a small output buffer (CVE-2025-21605).
 */
export const MAX_REQUESTS_BEFORE_AUTH = 1000;

/**
 * Wrong passwords one connection may try before the server closes it (after
 * that one's AUTH_FAILED). Each failure's reply is delayed (50 ms doubling to
 * 5 s) and the connection waits meanwhile, which --timeout rightly does not
 * count as the client's silence: without a bound, a few kilobytes of
 * pipelined guesses held a connection slot for hours. Five take 1.55 s;
 * PostgreSQL allows one per connection, and a client that mistyped
 * reconnects (txkv cli does so by itself).
 */
export const MAX_AUTH_FAILURES = 5;

/** A TLS connection that never completes its handshake after being refused (BUSY) is dropped after this. */
const REFUSED_HANDSHAKE_GRACE_MS = 5000;
/**
 * Refused TLS connections waiting for their handshake (to be told BUSY) at
 * most; past it, a refused connection is dropped at once, so that a flood of
 * them cannot use up the file descriptors app.ts keeps in reserve.
 */
const MAX_REFUSED_IN_HANDSHAKE = 16;

/**
 * A connection the server has ended keeps reading (and dropping) what the
 * client still sends, waiting for it to close its side; see endConnection.
 * It is closed once nothing has come for LINGER_QUIET_MS, and after
 * LINGER_MS in any case. (nginx: lingering_timeout 5 s, lingering_time 30 s;
 * txkv's clients are near, and a shutdown waits on this.)
 */
const LINGER_QUIET_MS = 200;
/** This many bytes of one turn's replies are written at once instead of at the turn's end (see flushTurn). */
const TURN_FLUSH_BYTES = 1024 * 1024;
const LINGER_MS = 2000;

interface Connection {
  readonly id: number;
  readonly remote: string;
  readonly framer: LineFramer;
  readonly session: Session;
  /**
   * This turn's replies while they are one range of the turn's buffer,
   * [turnStart, turnEnd), as offsets (turnEnd 0: none): the common case, one
   * batch or batches back to back, costs no view. Set only while queue is
   * empty, so it always comes first; anything queued after it turns it into
   * a view at the head of queue (see enqueue).
   */
  turnStart: number;
  turnEnd: number;
  /** Reply bytes not written yet, in order after the turn's range: batches (views of the turn's replies) and what the kernel refused. */
  queue: Uint8Array[];
  /** The connection is in flushConnections: its queue is written when the turn ends. */
  flushPending: boolean;
  queuedBytes: number;
  /** Replies that may not leave yet (their writes are not durable, or an earlier reply is), in order. */
  readonly held: HeldReplies;
  /** Reading is paused because too many reply bytes are waiting. */
  readPaused: boolean;
  /** A request's reply is asynchronous (SAVE, failed AUTH): later requests wait for it, reading is paused. */
  awaitingReply: boolean;
  /** Reading is paused until the event loop has served the other connections (after a large read). */
  yielding: boolean;
  /** Data events so far: tells a partial-request check whether more bytes came. */
  dataEvents: number;
  /** Idle-timeout sweeps since the client last sent bytes or took reply bytes. */
  idleSweeps: number;
  partialTimer: Timer | null;
  /** The peer half-closed: finish its requests, then close. */
  peerEnded: boolean;
  /** QUIT or the HTTP guard: run nothing more, close once the replies are out. */
  closing: boolean;
  /** The server has ended its side (endConnection): input is read and dropped until the close. */
  ended: boolean;
  /** Closes an ended connection whose client goes quiet without closing its side. */
  lingerTimer: Timer | null;
  /** When the connection was ended (performance.now()). */
  endedAt: number;
  /** Input came since the linger timer last looked. */
  inputWhileLingering: boolean;
  closed: boolean;
}

/** Marks a socket refused at open (connection limit): it has no Connection. */
type SocketData = Connection | null;

export class TxkvServer {
  private listener: TCPSocketListener<SocketData> | null = null;
  private readonly connections = new Set<Socket<SocketData>>();
  /** Connections holding replies until a commit seq is durable. */
  private readonly waitingForDurability = new Set<Socket<SocketData>>();
  private durableSeq = 0;
  private nextConnectionId = 1;
  /** Refused TLS connections still open, waiting for their handshake to be told BUSY. */
  private readonly refusedInHandshake = new Set<Socket<SocketData>>();
  private statsTimer: Timer | null = null;
  private idleTimer: Timer | null = null;
  /** Set while draining: called when the last connection has closed. */
  private onAllClosed: (() => void) | null = null;
  /**
   * The replies of this turn's batches, of all connections, one after
   * another: each batch is queued as its range (offsets while a
   * connection's batches of the turn lie back to back, else a view; see
   * Connection.turnStart) and written when the turn ends (flushTurn), as
   * Redis writes its replies before it polls.
   */
  private readonly replies = new ByteBuffer();
  /** Connections with batches queued this turn, and their sockets (socket.data is a native getter: read once). */
  private readonly flushConnections: Connection[] = [];
  private readonly flushSockets: Socket<SocketData>[] = [];
  private flushArmed = false;
  private flushing = false;
  /** The fast path's parsed request, reused. */
  private readonly plain = newPlainRequest();

  constructor(
    private readonly options: ServerOptions,
    private readonly executor: Executor,
    private readonly log: Logger,
  ) {
    executor.commitLog.onDurable = (seq) => this.onDurable(seq);
    executor.stats.clientBufferBytes = () => this.bufferedBytes();
  }

  /** Starts listening; resolves the real address (also when port 0 was asked). */
  start(): { host: string; port: number } {
    this.listener = Bun.listen<SocketData>({
      hostname: this.options.host,
      port: this.options.port,
      allowHalfOpen: true,
      ...(this.options.tls ? { tls: this.options.tls } : {}),
      socket: {
        open: (socket) => this.onOpen(socket),
        handshake: (socket, success, authorizationError) => this.onHandshake(socket, success, authorizationError),
        data: (socket, chunk) => this.onData(socket, chunk),
        drain: (socket) => this.onDrain(socket),
        end: (socket) => this.onEnd(socket),
        close: (socket, err) => this.onClose(socket, err),
        error: (socket, err) => this.onError(socket, err),
      },
    });
    // A sample as it starts listening: in the first seconds the rate is over the time since, not 0 until two ticks.
    this.executor.stats.tick();
    this.statsTimer = setInterval(() => this.executor.stats.tick(), 1000);
    this.statsTimer.unref();
    if (this.options.idleTimeoutSeconds > 0) {
      this.idleTimer = setInterval(() => this.closeIdleConnections(), 1000);
      this.idleTimer.unref();
    }
    return { host: this.options.host, port: this.listener.port };
  }

  /** Stops accepting connections; open connections keep being served. */
  stopListening(): void {
    this.listener?.stop(false);
  }

  /**
   * Graceful stop: refuses new connections and runs no new requests; replies
   * already being produced (held for an fsync, SAVE, a delayed AUTH, or
   * queued for a slow reader) go out, then each connection closes, which
   * rolls back its open transaction. Connections still open after timeoutMs
   * are closed at once. Resolves with how many had to be forced.
   */
  async drain(timeoutMs: number): Promise<number> {
    this.stopListening();
    for (const socket of this.connections) {
      const conn = socket.data;
      if (conn === null) continue;
      conn.closing = true;
      this.clearPartialTimer(conn);
      this.closeWhenFlushed(socket, conn);
    }
    if (this.connections.size > 0) {
      let timer: Timer | undefined;
      await new Promise<void>((resolve) => {
        this.onAllClosed = resolve;
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
      this.onAllClosed = null;
    }
    let forced = 0;
    for (const socket of [...this.connections]) {
      // An ended connection (lingering) had all its replies out: only its wait for the client is cut short.
      if (socket.data?.ended) socket.close();
      else {
        forced++;
        socket.terminate();
      }
      this.onClose(socket);
    }
    return forced;
  }

  /**
   * Closes every connection at once (open transactions roll back) and the
   * listener: after drain(), or before any client came (the metrics port
   * failed). Not end(): over TLS it would wait for each client's close_notify.
   */
  stop(): void {
    this.stopListening();
    for (const socket of this.connections) socket.terminate();
    if (this.statsTimer) clearInterval(this.statsTimer);
    if (this.idleTimer) clearInterval(this.idleTimer);
    this.listener?.stop(true);
    this.listener = null;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Bytes held for all connections: unsent and held replies plus unprocessed input. */
  bufferedBytes(): number {
    let total = 0;
    for (const socket of this.connections) {
      const conn = socket.data;
      if (conn) total += conn.queuedBytes + conn.held.length + conn.framer.bufferedBytes;
    }
    return total;
  }

  private onOpen(socket: Socket<SocketData>): void {
    const stats = this.executor.stats;
    if (this.connections.size >= this.options.maxConnections) {
      stats.connectionsRejected++;
      socket.data = null;
      // Read the address before end(): afterwards the socket no longer has one.
      this.log.limited("warn", "connection-refused", "connection refused", {
        reason: `too many connections (--max-connections ${this.options.maxConnections})`,
        remote: `${socket.remoteAddress}:${socket.remotePort}`,
      });
      if (this.options.tls && this.refusedInHandshake.size >= MAX_REFUSED_IN_HANDSHAKE) {
        socket.terminate();
      } else if (this.options.tls) {
        // Nothing can be written before the TLS handshake: onHandshake sends BUSY.
        this.refusedInHandshake.add(socket);
        setTimeout(() => socket.terminate(), REFUSED_HANDSHAKE_GRACE_MS).unref();
      } else {
        this.refuseBusy(socket);
      }
      return;
    }
    const conn: Connection = {
      id: this.nextConnectionId++,
      remote: `${socket.remoteAddress}:${socket.remotePort}`,
      framer: new LineFramer(this.options.maxRequestBytes),
      session: new Session(this.options.password !== undefined),
      turnStart: 0,
      turnEnd: 0,
      queue: [],
      flushPending: false,
      queuedBytes: 0,
      held: new HeldReplies(),
      readPaused: false,
      awaitingReply: false,
      yielding: false,
      idleSweeps: 0,
      dataEvents: 0,
      partialTimer: null,
      peerEnded: false,
      closing: false,
      ended: false,
      lingerTimer: null,
      endedAt: 0,
      inputWhileLingering: false,
      closed: false,
    };
    socket.data = conn;
    this.connections.add(socket);
    stats.connectionsCurrent++;
    stats.connectionsTotal++;
    this.log.debug("connection opened", { conn: conn.id, remote: conn.remote });
  }

  /** The BUSY reply is counted here, where it is sent: a refused TLS client dropped in its handshake gets none. */
  private refuseBusy(socket: Socket<SocketData>): void {
    this.executor.stats.countError("BUSY");
    socket.write(error("BUSY", `Too many connections (the limit is ${this.options.maxConnections}); try again later`));
    socket.end();
  }

  /** TLS only: a failed handshake (e.g. a plain-TCP client) is dropped; a refused connection gets its BUSY now. */
  private onHandshake(socket: Socket<SocketData>, success: boolean, authorizationError: Error | null): void {
    const conn = socket.data;
    if (!success) {
      this.log.debug("TLS handshake failed: closing the connection", {
        conn: conn?.id,
        remote: conn?.remote ?? socket.remoteAddress,
        error: authorizationError,
      });
      socket.terminate();
      return;
    }
    if (conn === null) this.refuseBusy(socket);
  }

  /**
   * Once a second: closes connections that neither sent bytes nor took reply
   * bytes for --timeout seconds (between that and one second more). An open
   * transaction is rolled back, as on any close; Redis's `timeout` does the same.
   */
  private closeIdleConnections(): void {
    const limit = this.options.idleTimeoutSeconds;
    for (const socket of this.connections) {
      const conn = socket.data;
      if (conn === null || conn.closed || conn.ended) continue;
      // A reply the server still owes (fsync, SAVE, AUTH delay) is the server's wait, not the client's silence.
      if (!conn.held.isEmpty || conn.awaitingReply) conn.idleSweeps = 0;
      if (++conn.idleSweeps <= limit) continue;
      this.log.debug("connection closed: idle timeout", {
        conn: conn.id,
        remote: conn.remote,
        timeout_seconds: limit,
        in_transaction: conn.session.tx !== null,
      });
      this.outsideHandler(socket, conn, this.endConnection);
    }
  }

  private onData(socket: Socket<SocketData>, chunk: Uint8Array): void {
    const conn = socket.data;
    if (conn === null) return;
    if (conn.closing) {
      // Nothing more runs; an ended connection only notes that the client is still sending.
      if (conn.ended) conn.inputWhileLingering = true;
      return;
    }
    conn.idleSweeps = 0;
    conn.dataEvents++;
    this.clearPartialTimer(conn);
    conn.framer.push(chunk);
    // While paused or yielding, Bun may still deliver what the kernel held: keep it for later.
    if (!conn.readPaused && !conn.yielding) this.processInput(socket, conn);
    conn.framer.retain();
    if (chunk.length >= FAIR_SHARE_BYTES) this.yieldTurn(socket, conn);
  }

  /**
   * Ends this connection's turn: it reads nothing more, and its buffered
   * requests wait, until the event loop has served the others; see
   * FAIR_SHARE_BYTES and MAX_REQUESTS_PER_TURN.
   */
  private yieldTurn(socket: Socket<SocketData>, conn: Connection): void {
    if (conn.readPaused || conn.awaitingReply || conn.closing || conn.yielding) return;
    conn.yielding = true;
    socket.pause();
    setImmediate(() => {
      conn.yielding = false;
      if (conn.closed || conn.readPaused || conn.awaitingReply || conn.closing) return;
      // Runs what waited (an unterminated request's pause is counted from its end: the time held here was the server's).
      this.outsideHandler(socket, conn, this.resumeInput);
    });
  }

  /**
   * Runs buffered requests and queues their replies for the turn's end, one
   * range per batch of up to about --max-output-bytes. Stops reading when
   * more than that many reply bytes wait for the client; the turn's end or
   * the drain resumes it once they are down to half.
   */
  private processInput(socket: Socket<SocketData>, conn: Connection): void {
    const limit = this.options.maxOutputBytes;
    const out = this.replies;
    const framer = conn.framer;
    const session = conn.session;
    let exhausted = false;
    let turnLeft = MAX_REQUESTS_PER_TURN;
    while (!conn.closing && !conn.awaitingReply) {
      let batchStart = out.length;
      /** The highest commit seq a reply of this batch waits for. */
      let batchSeq = 0;
      // Replies already waiting count against the limit: a full batch on top of them would hold up to twice it.
      // At least one request runs, so a queue just at the limit still moves (and then pauses below).
      const room = Math.max(limit - conn.queuedBytes - conn.held.length, 1);
      while (out.length - batchStart < room && !conn.closing && !conn.awaitingReply) {
        const found = framer.nextLine();
        if (found === null) {
          exhausted = true;
          break;
        }
        session.waitSeq = 0;
        if (!(found === LINE && this.runPlain(conn, out))) {
          const reply = this.run(conn, this.commandOfLine(framer, found));
          if (typeof reply === "string") {
            out.text(reply);
          } else {
            // Replies before an asynchronous one go first (or are held first); later requests wait for it.
            this.finishBatch(socket, conn, out, batchStart, batchSeq);
            batchStart = out.length;
            batchSeq = 0;
            this.awaitReply(socket, conn, reply);
          }
        }
        if (session.waitSeq > batchSeq) batchSeq = session.waitSeq;
        if (--turnLeft === 0) break;
      }
      this.finishBatch(socket, conn, out, batchStart, batchSeq);
      if (conn.queuedBytes + conn.held.length > limit && !conn.closing) {
        this.pauseReading(socket, conn);
        return;
      }
      if (exhausted) break;
      if (turnLeft === 0 && !conn.closing && !conn.awaitingReply) {
        this.yieldTurn(socket, conn); // the rest runs in a later turn
        return;
      }
    }
    // Waiting for an asynchronous reply: the rest of the input runs once it is answered.
    if (conn.awaitingReply && !conn.closing) return;
    this.afterInput(socket, conn);
  }

  /** The command of the line (or framing failure) the framer just found; argument-less commands skip decoding. */
  private commandOfLine(framer: LineFramer, found: typeof LINE | Exclude<Frame, string>): Command {
    if (found !== LINE) return commandFromFrame(found, this.options.maxRequestBytes);
    const noArg = noArgCommandOf(framer.bytes, framer.lineStart, framer.lineEnd);
    return noArg ?? commandFromFrame(framer.lineText(), this.options.maxRequestBytes);
  }

  /** Input is exhausted for now: arm the partial-request timer, or finish a half-closed connection. */
  private afterInput(socket: Socket<SocketData>, conn: Connection): void {
    if (conn.closing) {
      this.closeWhenFlushed(socket, conn);
      return;
    }
    if (conn.peerEnded) {
      const partial = conn.framer.takePartial();
      if (partial !== null) this.runAlone(socket, conn, partial);
      conn.closing = true;
      this.closeWhenFlushed(socket, conn);
      return;
    }
    this.armPartialTimer(socket, conn);
  }

  /** Bytes without a final LF wait: they run as a request if the client then pauses for --partial-request-ms. */
  private armPartialTimer(socket: Socket<SocketData>, conn: Connection): void {
    if (this.options.partialRequestMs === 0 || !conn.framer.hasPartial()) return;
    this.clearPartialTimer(conn);
    // The rest of the line may be held back by the client's Nagle until this is acknowledged.
    acknowledgeNow(socket);
    // "PO" or "Ho" waits for its next bytes: run alone, the rest of an HTTP request would pass the guard (§6).
    if (conn.framer.partialMayBecomeHttpRequest()) return;
    conn.partialTimer = setTimeout(() => this.onPartialTimeout(socket, conn), this.options.partialRequestMs);
  }

  /**
   * Bytes without a final LF were followed by a pause. Timers run before the
   * event loop polls the sockets, so the rest of the line may already be
   * waiting unread (a busy loop, a big pipelined write): look once more after
   * the poll, and run the bytes as one request only if nothing came. (In Bun
   * a setImmediate runs before the poll; a 0 ms timer runs after it.)
   */
  private onPartialTimeout(socket: Socket<SocketData>, conn: Connection): void {
    conn.partialTimer = null;
    const dataEventsSeen = conn.dataEvents;
    setTimeout(() => {
      if (conn.dataEvents === dataEventsSeen) this.outsideHandler(socket, conn, this.runPartial);
    }, 0);
  }

  private runPartial(socket: Socket<SocketData>, conn: Connection): void {
    // While the server itself holds the connection paused, the client is not the one pausing.
    if (conn.closed || conn.closing || conn.readPaused || conn.awaitingReply || conn.yielding) return;
    const partial = conn.framer.takePartial();
    conn.framer.retain();
    if (partial !== null) this.runAlone(socket, conn, partial);
    if (conn.closing) this.closeWhenFlushed(socket, conn);
  }

  /** Runs one decoded frame on its own (an unterminated request taken after a pause or half-close). */
  private runAlone(socket: Socket<SocketData>, conn: Connection, frame: Frame): void {
    const out = this.replies;
    const start = out.length;
    conn.session.waitSeq = 0;
    const reply = this.run(conn, commandFromFrame(frame, this.options.maxRequestBytes));
    if (typeof reply !== "string") {
      this.awaitReply(socket, conn, reply);
      return;
    }
    out.text(reply);
    this.finishBatch(socket, conn, out, start, conn.session.waitSeq);
  }

  /**
   * Executes one request: its reply text ("" when there is none: the
   * cross-protocol guard closes the connection), or a Promise for a reply
   * that comes later (SAVE, a failed AUTH).
   */
  private run(conn: Connection, cmd: Command): string | Promise<string> {
    if (cmd.type === "INVALID" && cmd.crossProtocol) {
      this.log.limited("warn", "cross-protocol-guard", "connection closed by the cross-protocol guard", {
        reason: "an HTTP request (POST or Host:) was sent to the txkv port",
        conn: conn.id,
        remote: conn.remote,
      });
      conn.closing = true;
      return "";
    }
    const reply = this.executor.execute(cmd, conn.session);
    if (conn.session.quitting) conn.closing = true;
    if (conn.session.refusedBeforeAuth >= MAX_REQUESTS_BEFORE_AUTH && !conn.closing) this.closeUnauthenticated(conn);
    // Its AUTH_FAILED is still awaited: the close waits for it (closeWhenFlushed), the requests after it do not run.
    if (this.guessedTooOften(conn) && !conn.closing) this.closeAfterAuthFailures(conn);
    return reply;
  }

  /**
   * A connection that sent MAX_REQUESTS_BEFORE_AUTH requests without AUTH is
   * closed after that one's reply: it is not a client that lacks a password
   * (that one stops at the first AUTH_REQUIRED), and each of its requests
   * costs the server a reply to write and keep.
   */
  private closeUnauthenticated(conn: Connection): void {
    this.closeWithWarning(conn, "requests-before-auth", "connection closed: too many requests without AUTH", {
      requests: conn.session.refusedBeforeAuth,
    });
  }

  /** Closes the connection once the replies in hand are out, with a rate-limited warning saying why. */
  private closeWithWarning(conn: Connection, key: string, msg: string, fields: LogFields): void {
    this.log.limited("warn", key, msg, { ...fields, conn: conn.id, remote: conn.remote });
    conn.closing = true;
  }

  /** The fast path for the line the framer just found, into out; false when it needs the general path. */
  private runPlain(conn: Connection, out: ByteBuffer): boolean {
    const framer = conn.framer;
    if (!parsePlainRequest(framer.bytes, framer.lineStart, framer.lineEnd, this.plain)) return false;
    return this.executor.executePlain(this.plain, framer.bytes, conn.session, out);
  }

  /**
   * An asynchronous reply: held (its place in the order kept) until it
   * resolves; reading pauses and later requests wait, so that a client
   * cannot pipeline password guesses past an AUTH failure's delay.
   */
  private awaitReply(socket: Socket<SocketData>, conn: Connection, reply: Promise<string>): void {
    conn.awaitingReply = true;
    socket.pause();
    reply.then(
      (text) => this.outsideHandler(socket, conn, (s, c) => this.deliverAwaited(s, c, text)),
      (err: unknown) => this.onError(socket, asError(err)),
    );
  }

  /** The awaited reply resolved: it goes out, then the requests behind it run. */
  private deliverAwaited(socket: Socket<SocketData>, conn: Connection, text: string): void {
    // Nothing was held after it meanwhile: no request ran while it was awaited.
    const bytes = Buffer.from(text);
    conn.held.hold(bytes, 0, bytes.length, 0);
    conn.awaitingReply = false;
    this.releaseHeld(socket, conn);
    if (!conn.closed && !conn.readPaused && !conn.closing) this.resumeInput(socket, conn);
  }

  /**
   * MAX_AUTH_FAILURES wrong passwords before the right one. An authenticated
   * connection that mistypes AUTH keeps its session: it has nothing left to
   * guess, and closing it would roll back its transaction.
   */
  private guessedTooOften(conn: Connection): boolean {
    return !conn.session.authenticated && conn.session.authFailures >= MAX_AUTH_FAILURES;
  }

  /** MAX_AUTH_FAILURES wrong passwords: the connection is closed once this AUTH_FAILED is out. */
  private closeAfterAuthFailures(conn: Connection): void {
    this.closeWithWarning(conn, "auth-failures", "connection closed: too many wrong passwords", { failures: conn.session.authFailures });
  }

  /**
   * Runs work for one connection that starts outside its socket handlers (a
   * timer, an awaited reply, a durable fsync). A throw inside a handler
   * reaches onError, which drops only that connection; out here it would
   * end the process (or, from onDurable, reach the persistence layer as if
   * its fsync had failed). So a throw drops the connection the same way.
   */
  private outsideHandler(
    socket: Socket<SocketData>,
    conn: Connection,
    work: (this: TxkvServer, socket: Socket<SocketData>, conn: Connection) => void,
  ): void {
    try {
      // A method and its arguments, not a closure: onDurable calls this for every connection at every fsync.
      work.call(this, socket, conn);
    } catch (err) {
      this.onError(socket, asError(err));
    }
  }

  /**
   * Sends the batch of replies in out, or holds it whole: when one of its
   * replies waits for an fsync (seq, under --fsync always), all of them leave
   * together once it is durable, in one write (as Redis answers after its
   * fsync); when earlier replies are still held, the batch queues behind them.
   */
  private finishBatch(socket: Socket<SocketData>, conn: Connection, out: ByteBuffer, start: number, seq: number): void {
    if (out.length === start) return;
    if (conn.closed) {
      out.length = start; // nobody to send them to
      return;
    }
    const waitSeq = seq > this.durableSeq ? seq : 0;
    if (waitSeq === 0 && conn.held.isEmpty) {
      this.queueForTurnEnd(socket, conn, start, out.length);
      return;
    }
    conn.held.hold(out.bytes, start, out.length, waitSeq);
    if (waitSeq !== 0) this.waitingForDurability.add(socket);
    out.length = start; // held as a copy: the room is reused
  }

  /** Queues a batch's replies, this.replies[start, end), to be written when the turn ends. */
  private queueForTurnEnd(socket: Socket<SocketData>, conn: Connection, start: number, end: number): void {
    if (conn.turnEnd !== 0 && conn.turnEnd === start) {
      conn.turnEnd = end; // right after the connection's last batch: one range still
      conn.queuedBytes += end - start;
    } else if (conn.turnEnd === 0 && conn.queue.length === 0) {
      conn.turnStart = start;
      conn.turnEnd = end;
      conn.queuedBytes += end - start;
    } else {
      this.enqueue(conn, this.replies.bytes.subarray(start, end));
    }
    if (!conn.flushPending) {
      conn.flushPending = true;
      this.flushConnections.push(conn);
      this.flushSockets.push(socket);
    }
    // Many connections' batches in one turn: written now rather than all held in memory until its end.
    if (this.replies.length >= TURN_FLUSH_BYTES && !this.flushing) this.flushTurn();
    else if (!this.flushArmed) {
      this.flushArmed = true;
      setImmediate(this.flushTurn);
    }
  }

  /**
   * The turn's end: writes every queued connection's replies (the drain's
   * work: a connection paused for them reads again, a closing one closes),
   * then copies what the kernel did not take out of the turn's buffer,
   * which the next turn reuses.
   */
  private readonly flushTurn = (): void => {
    if (this.flushing) return;
    this.flushing = true;
    this.flushArmed = false;
    try {
      this.writeQueuedConnections();
    } finally {
      this.flushing = false;
    }
  };

  private writeQueuedConnections(): void {
    const conns = this.flushConnections;
    const sockets = this.flushSockets;
    // A connection resumed here may queue more of the same buffer: it joins the list and is written in this pass.
    for (let i = 0; i < conns.length; i++) {
      const conn = conns[i]!;
      conn.flushPending = false;
      this.outsideHandler(sockets[i]!, conn, this.writeQueued);
    }
    // What the kernel did not take is copied out of the buffer the next turn reuses.
    for (const conn of conns) {
      if (conn.closed) {
        this.dropQueued(conn);
        continue;
      }
      if (conn.turnEnd !== 0) {
        // The queue is empty behind a range (see Connection.turnStart): the copy takes the range's place.
        conn.queue.push(copyOf(this.replies.bytes, conn.turnStart, conn.turnEnd));
        conn.turnStart = conn.turnEnd = 0;
      } else if (conn.queue.length !== 0) {
        this.copyOutOfTurnBuffer(conn.queue);
      }
    }
    conns.length = 0;
    sockets.length = 0;
    this.replies.clear();
  }

  /** Replaces each view of the turn's buffer in queue by a copy (.buffer is a native getter: read only here). */
  private copyOutOfTurnBuffer(queue: Uint8Array[]): void {
    const reused = this.replies.bytes.buffer;
    for (let j = 0; j < queue.length; j++) if (queue[j]!.buffer === reused) queue[j] = copyOf(queue[j]!, 0, queue[j]!.length);
  }

  private onDurable(seq: number): void {
    if (seq <= this.durableSeq) return;
    this.durableSeq = seq;
    for (const socket of this.waitingForDurability) {
      const conn = socket.data;
      if (conn) this.outsideHandler(socket, conn, this.releaseHeld);
    }
  }

  /** Sends the held replies that are ready, in order, up to the first that is not. */
  private releaseHeld(socket: Socket<SocketData>, conn: Connection): void {
    if (conn.closed) return;
    const held = conn.held;
    const ready = held.readyLength(this.durableSeq);
    if (ready === 0) return;
    if (!held.waitsBeyond(this.durableSeq)) this.waitingForDurability.delete(socket);
    this.sendRange(socket, conn, held.bytes, ready);
    held.release(ready);
    if (conn.readPaused) this.resumeIfDrained(socket, conn);
    else if (conn.closing) this.closeWhenFlushed(socket, conn);
  }

  /** Writes bytes[0, length) now, or queues a copy of what the kernel does not take (the caller reuses bytes). */
  private sendRange(socket: Socket<SocketData>, conn: Connection, bytes: Uint8Array, length: number): void {
    if (length === 0 || conn.closed) return;
    if (conn.turnEnd !== 0 || conn.queue.length !== 0) {
      this.enqueue(conn, copyOf(bytes, 0, length));
      return;
    }
    const written = socket.write(bytes, 0, length);
    if (written < 0 || written === length) return; // closed, or all taken
    this.enqueue(conn, copyOf(bytes, written, length));
  }

  /** Queues bytes after everything the connection has queued (its turn's range first becomes a view, ahead of them). */
  private enqueue(conn: Connection, bytes: Uint8Array): void {
    if (conn.turnEnd !== 0) {
      conn.queue.push(this.replies.bytes.subarray(conn.turnStart, conn.turnEnd));
      conn.turnStart = conn.turnEnd = 0;
    }
    conn.queue.push(bytes);
    conn.queuedBytes += bytes.length;
  }

  private dropQueued(conn: Connection): void {
    conn.turnStart = conn.turnEnd = 0;
    conn.queue.length = 0;
    conn.queuedBytes = 0;
  }

  private onDrain(socket: Socket<SocketData>): void {
    const conn = socket.data;
    if (conn) this.writeQueued(socket, conn);
  }

  /** The drain's work: writes what is queued, then a connection paused for it reads again, a closing one closes. */
  private writeQueued(socket: Socket<SocketData>, conn: Connection): void {
    conn.idleSweeps = 0;
    if (conn.turnEnd !== 0) {
      const length = conn.turnEnd - conn.turnStart;
      const written = socket.write(this.replies.bytes, conn.turnStart, length);
      if (written < 0) return;
      conn.queuedBytes -= written;
      conn.turnStart += written; // what is left is copied out at the turn's end
      if (written === length) conn.turnStart = conn.turnEnd = 0;
    }
    while (conn.turnEnd === 0 && conn.queue.length !== 0) {
      const bytes = conn.queue[0]!;
      const written = socket.write(bytes);
      if (written < 0) return;
      conn.queuedBytes -= written;
      if (written < bytes.length) {
        conn.queue[0] = bytes.subarray(written);
        break; // the rest waits for the next drain; reading may still resume below half the limit
      }
      conn.queue.shift();
    }
    if (conn.readPaused) this.resumeIfDrained(socket, conn);
    else if (conn.closing) this.closeWhenFlushed(socket, conn);
  }

  private pauseReading(socket: Socket<SocketData>, conn: Connection): void {
    if (conn.readPaused) return;
    conn.readPaused = true;
    socket.pause();
    this.log.debug("reading paused: client is not reading its replies", { conn: conn.id, queued: conn.queuedBytes });
  }

  /** Once the replies have drained below half the limit, runs the buffered requests and reads again. */
  private resumeIfDrained(socket: Socket<SocketData>, conn: Connection): void {
    if (conn.queuedBytes + conn.held.length > this.options.maxOutputBytes / 2) return;
    conn.readPaused = false;
    this.resumeInput(socket, conn);
  }

  /** Runs the buffered requests, then reads again unless something paused it anew. */
  private resumeInput(socket: Socket<SocketData>, conn: Connection): void {
    this.processInput(socket, conn);
    conn.framer.retain();
    if (!conn.readPaused && !conn.awaitingReply && !conn.closing && !conn.yielding) socket.resume();
  }

  /** The peer half-closed its side: run what it sent (an unterminated request too), reply, then close. */
  private onEnd(socket: Socket<SocketData>): void {
    const conn = socket.data;
    if (!conn) return;
    if (conn.ended) {
      // Both sides are done and the client sends nothing more: closing cannot reset anything now.
      socket.close();
      return;
    }
    conn.peerEnded = true;
    this.clearPartialTimer(conn);
    // While yielding, the turn's end runs the rest and then sees the half-close.
    if (!conn.readPaused && !conn.awaitingReply && !conn.closing && !conn.yielding) this.processInput(socket, conn);
    else if (conn.closing) this.closeWhenFlushed(socket, conn);
  }

  private closeWhenFlushed(socket: Socket<SocketData>, conn: Connection): void {
    if (conn.turnEnd === 0 && conn.queue.length === 0 && conn.held.isEmpty && !conn.awaitingReply && !conn.closed) {
      this.endConnection(socket, conn);
    }
  }

  /**
   * Ends the connection from the server's side (QUIT, the HTTP guard, the
   * idle timeout, shutdown, a finished half-close), once: a lingering close,
   * as web servers do. Closing the socket at once would lose replies: when
   * input the server has not read is still in the kernel (requests pipelined
   * after QUIT, a client cut off by the shutdown), close(2) sends a reset and
   * the kernel drops the replies not yet delivered. So the server sends its
   * FIN (over TLS, close_notify first), rolls back an open transaction now,
   * keeps reading and dropping what the client still sends, and closes when
   * the client closes its side or goes quiet (LINGER_QUIET_MS, LINGER_MS).
   */
  private endConnection(socket: Socket<SocketData>, conn: Connection): void {
    if (conn.ended) return;
    conn.ended = true;
    conn.closing = true;
    this.clearPartialTimer(conn);
    // Replies still queued here (an idle client that stopped reading) can no longer be sent after the FIN.
    this.dropQueued(conn);
    this.executor.closeSession(conn.session);
    // shutdown() is the half-close (over TLS it sends close_notify). Not end(): over TCP that closes at once,
    // and over TLS it then waits for the client's close_notify, about 12 s when none comes, and cannot be cut short.
    socket.shutdown();
    if (conn.peerEnded && !this.options.tls) {
      // The client has closed its side: nothing can arrive to reset, and its slot is free for its next connection.
      // (Over TLS, close() could cut off encrypted bytes Bun still holds; the quiet linger ends it instead.)
      socket.close();
      return;
    }
    socket.resume();
    conn.endedAt = performance.now();
    this.armLingerCheck(socket, conn);
  }

  private armLingerCheck(socket: Socket<SocketData>, conn: Connection): void {
    conn.lingerTimer = setTimeout(() => this.lingerCheck(socket, conn), LINGER_QUIET_MS);
    conn.lingerTimer.unref();
  }

  /** Closes an ended connection whose client sent nothing for LINGER_QUIET_MS, or that has lingered LINGER_MS. */
  private lingerCheck(socket: Socket<SocketData>, conn: Connection): void {
    if (!conn.inputWhileLingering || performance.now() - conn.endedAt >= LINGER_MS) {
      conn.lingerTimer = null;
      socket.close();
      return;
    }
    conn.inputWhileLingering = false;
    this.armLingerCheck(socket, conn);
  }

  private onClose(socket: Socket<SocketData>, err?: Error): void {
    const conn = socket.data;
    if (conn === null) this.refusedInHandshake.delete(socket);
    if (!conn || conn.closed) return;
    conn.closed = true;
    this.clearPartialTimer(conn);
    if (conn.lingerTimer !== null) clearTimeout(conn.lingerTimer);
    this.connections.delete(socket);
    this.waitingForDurability.delete(socket);
    this.executor.closeSession(conn.session);
    this.executor.stats.connectionsCurrent--;
    // A reset after the server ended the connection is the client closing with replies unread: no news.
    if (err && !conn.ended) {
      const code = (err as { code?: unknown }).code;
      this.log.limited("info", `connection-error:${String(code ?? err.message)}`, "connection closed by an error", {
        reason: err.message,
        code,
        conn: conn.id,
        remote: conn.remote,
      });
    } else this.log.debug("connection closed", { conn: conn.id });
    if (this.onAllClosed !== null && this.connections.size === 0) this.onAllClosed();
  }

  /** A handler threw: a bug, not bad input. Log it and drop only this connection. */
  private onError(socket: Socket<SocketData>, err: Error): void {
    const conn = socket.data;
    this.log.limited("error", "connection-handler-error", "connection dropped: a handler failed", {
      reason: err.message,
      conn: conn?.id,
      remote: conn?.remote,
      stack: err.stack,
    });
    socket.terminate();
  }

  private clearPartialTimer(conn: Connection): void {
    if (conn.partialTimer !== null) {
      clearTimeout(conn.partialTimer);
      conn.partialTimer = null;
    }
  }
}
