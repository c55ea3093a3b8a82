/**
 * Test support for the client tools: a txkv server as a subprocess on port 0,
 * resolved once it prints `listening on`, and a way to run `index.ts` jobs.
 */
import * as fs from "node:fs";
import * as os from "node:os";
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

export type TestCertificates = { dir: string; caFile: string; ca: string; cert: string; key: string };

/** A throwaway CA and a server certificate for localhost/127.0.0.1 signed by it (needs `openssl`). */
export function makeTestCertificates(): TestCertificates {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "txkv-tls-"));
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const openssl = (...args: string[]) => {
    const result = Bun.spawnSync(["openssl", ...args], { cwd: dir, stderr: "pipe" });
    if (result.exitCode !== 0) throw new Error(`openssl ${args[0]} failed: ${result.stderr.toString()}`);
  };
  openssl("req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=txkv test CA");
  openssl("req", ...ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost");
  fs.writeFileSync(path.join(dir, "ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
    "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf");
  const read = (name: string) => fs.readFileSync(path.join(dir, name), "utf8");
  return { dir, caFile: path.join(dir, "ca.pem"), ca: read("ca.pem"), cert: read("server.pem"), key: read("server.key") };
}

/** A TLS listener that answers every line with PONG, standing in for a TLS-enabled server. */
export function tlsPongServer(certs: TestCertificates) {
  return Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    tls: { cert: certs.cert, key: certs.key },
    socket: {
      data(socket, chunk) {
        const lines = chunk.toString().split("\n").length - 1;
        socket.write('{"status":"Ok","result":"PONG"}\n'.repeat(lines));
      },
    },
  });
}
