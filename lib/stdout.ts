/**
 * Standard output of the client tools (`txkv cli`, `txkv bench`), written so
 * that the process may exit as soon as all of it is out.
 *
 * Owns: knowing whether output is still waiting for a slow reader. Bun's
 * process.stdout keeps what a pipe did not take yet, reports it by write()
 * returning false (not by writableLength), and drops it at process.exit().
 * Must not: format anything, or touch the server's own output.
 */
let pending: Promise<void> = Promise.resolve();

/** process.stdout.write, noting output the reader has not taken yet. */
export function writeStdout(text: string): void {
  if (process.stdout.write(text)) return;
  // An errored stdout (the reader went away) never drains: that ends the wait too.
  pending = new Promise((resolve) => {
    const done = () => {
      process.stdout.off("drain", done);
      process.stdout.off("error", done);
      resolve();
    };
    process.stdout.once("drain", done);
    process.stdout.once("error", done);
  });
}

/** Resolves once everything given to writeStdout has been taken by the reader. */
export function stdoutFlushed(): Promise<void> {
  return pending;
}
