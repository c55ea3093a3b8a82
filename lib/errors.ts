/**
 * Words for anything thrown: `errorMessage` gives its text, `asError` an
 * Error to log or pass on (a thrown string or object becomes one).
 * Must not: log, or decide what a failure means; callers add the context.
 */

/** The message of an Error, or the thrown value as text ("ENOSPC: no space left on device, write"). */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The Error itself, or one carrying the thrown value as its message. */
export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
