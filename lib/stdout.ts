/**
 * Standard output of the client tools (`txkv cli`, `txkv bench`), written so
 * that the process may exit as soon as all of it is out.
 *
 * Owns: knowing whether output is still waiting for a slow reader (also
 * for the cli's LineWriter, through untilDrained). Bun's
 * process.stdout keeps what a pipe did not take yet, reports it by write()
 * returning false (not by writableLength), and drops it at process.exit().
 * Must not: format anything, or touch the server's own output.
 */
let pending: Promise<void> = Promise.resolve();

/** What untilDrained waits on: process.stdout, or a stand-in in tests. */
export interface OutputStream {
  write(text: string): boolean;
  once(event: "drain" | "error", listener: () => void): unknown;
  off(event: "drain" | "error", listener: () => void): unknown;
}

/** Resolves once a stream whose write() returned false drains, or errs: an errored stream (the reader went away) never drains. */
export function untilDrained(stream: OutputStream): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      stream.off("drain", done);
      stream.off("error", done);
      resolve();
    };
    stream.once("drain", done);
    stream.once("error", done);
  });
}

/** process.stdout.write, noting output the reader has not taken yet. */
export function writeStdout(text: string): void {
  if (!process.stdout.write(text)) pending = untilDrained(process.stdout);
}

/** Resolves once everything given to writeStdout has been taken by the reader. */
export function stdoutFlushed(): Promise<void> {
  return pending;
}
