/**
 * One connection's protocol state.
 *
 * Owns: the open transaction (if any) and the object reused for it, whether the connection has
 * authenticated, and the reply's durability wait set by the executor.
 * Must not: touch sockets (the server owns the socket and its buffers) or
 * the store.
 */
import { Transaction } from "./transaction.ts";

export class Session {
  tx: Transaction | null = null;
  authenticated: boolean;
  /** Failed AUTH attempts on this connection. */
  authFailures = 0;
  /** Requests answered AUTH_REQUIRED on this connection (the server closes it past a bound). */
  refusedBeforeAuth = 0;
  /** Set by the executor: the commit seq the last reply must wait for (0: none). */
  waitSeq = 0;
  /** Set by QUIT: the server closes the connection once the reply is out. */
  quitting = false;

  /** This connection's Transaction object, reused by every START at the outermost level. */
  private reusable: Transaction | null = null;

  constructor(needsAuth: boolean) {
    this.authenticated = !needsAuth;
  }

  /** Opens a transaction (the previous one must have ended). */
  beginTransaction(): Transaction {
    const tx = (this.reusable ??= new Transaction());
    tx.reset();
    this.tx = tx;
    return tx;
  }
}
