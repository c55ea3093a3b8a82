/**
 * Test support for the client tools: a txkv server as a subprocess on port 0,
 * resolved once it prints `listening on`, and a way to run `index.ts` jobs.
 */
import * as path from "node:path";

const ROOT = path.resolve(import.meta.dir, "..");
const BUN = process.execPath;

export type ServerProcess = { port: number; kill(signal?: NodeJS.Signals): void; exited: Promise<number> };

export async function spawnServer(args: string[] = []): Promise<ServerProcess> {
  const proc = Bun.spawn([BUN, "run", path.join(ROOT, "index.ts"), "--port", "0", ...args], {
    cwd: ROOT,
    stdout: "pipe",
    stderr: "ignore",
  });
  const reader = proc.stdout.getReader();
  const decoder = new TextDecoder();
  let seen = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`server exited before listening: ${seen}`);
    seen += decoder.decode(value, { stream: true });
    const match = /listening on \S+:(\d+)/.exec(seen);
    if (match) {
      reader.releaseLock();
      return { port: Number(match[1]), kill: (signal = "SIGTERM") => proc.kill(signal), exited: proc.exited };
    }
  }
}

export type Run = { code: number; stdout: string; stderr: string };

/** Runs `bun run index.ts <args>` with `stdin` as its input; resolves when it exits. */
export async function runTxkv(args: string[], stdin = "", env: Record<string, string> = {}): Promise<Run> {
  const proc = Bun.spawn([BUN, "run", path.join(ROOT, "index.ts"), ...args], {
    cwd: ROOT,
    stdin: new Blob([stdin]),
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, TXKV_HISTFILE: "", NO_COLOR: "1", ...env },
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { code, stdout, stderr };
}
