/**
 * Test TLS material: a throwaway CA and a server certificate made with the
 * `openssl` command, and a minimal TLS stand-in server for the client-side
 * tests (txkv's own TLS listener is tested in security.test.ts).
 */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export type TestCertificates = {
  dir: string;
  caFile: string;
  ca: string;
  cert: string;
  key: string;
  /** Deletes the files (call when the test is done with caFile). */
  remove(): void;
};

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
  const remove = () => fs.rmSync(dir, { recursive: true, force: true });
  return { dir, caFile: path.join(dir, "ca.pem"), ca: read("ca.pem"), cert: read("server.pem"), key: read("server.key"), remove };
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
