/**
 * One connection's protocol state.
 *
 * Owns: the open transaction (if any), whether the connection has
 * authenticated, and the reply's durability wait set by the executor.
 * Must not: touch sockets (the server owns the socket and its buffers) or
 * the store.
 */
import type { Transaction } from "./transaction.ts";

export class Session {
  tx: Transaction | null = null;
  authenticated: boolean;
  /** Failed AUTH attempts on this connection. */
  authFailures = 0;
  /** Set by the executor: the commit seq the last reply must wait for (0: none). */
  waitSeq = 0;
  /** Set by QUIT: the server closes the connection once the reply is out. */
  quitting = false;

  constructor(needsAuth: boolean) {
    this.authenticated = !needsAuth;
  }
}
