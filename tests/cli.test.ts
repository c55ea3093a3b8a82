/**
 * `txkv cli` in its three modes (one-shot, scripted, interactive REPL on a
 * pseudo-terminal), run as a subprocess against a real server subprocess.
 */
import { afterEach, describe, expect, test } from "bun:test";
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as path from "node:path";
import { LineWriter, NOT_UTF8, requestLines, runScript, type ScriptClient } from "../lib/cli.ts";
import { connect } from "../lib/client.ts";
import { BUN, closedPort, INDEX, runTxkv, sharedServer, spawnCli, spawnServer, tempDir, TOOL_ENV, tracked } from "./helpers.ts";
import { makeTestCertificates, tlsPongServer } from "./tls-certs.ts";

const shared = sharedServer();

/** Directories made by scratchDir, removed after each test however it ended. */
const scratch: { cleanup(): void }[] = [];
afterEach(() => {
  for (const dir of scratch.splice(0)) dir.cleanup();
});

function scratchDir(): string {
  const dir = tempDir();
  scratch.push(dir);
  return dir.path;
}

const cli = (args: string[], stdin: string | Uint8Array = "", env: Record<string, string> = {}) =>
  runTxkv(["cli", "-p", shared.port, ...args], stdin, env);

describe("one-shot", () => {
  test("cli PING prints exactly PONG and exits 0", async () => {
    const run = await cli(["PING"]);
    expect(run).toMatchObject({ code: 0, stdout: "PONG\n" });
  });

  test("cli PUT joins the words into one request; cli GET prints the value", async () => {
    expect(await cli(["PUT", "key1", "hello", "world"])).toMatchObject({ code: 0, stdout: "OK\n" });
    expect(await cli(["GET", "key1"])).toMatchObject({ code: 0, stdout: "hello world\n" });
  });

  test("JSON values print as JSON; arguments that look like options after the command are kept", async () => {
    expect((await cli(["PUT", '{"key":"j","value":{"a":[1,null]}}'])).code).toBe(0);
    expect((await cli(["GET", "j"])).stdout).toBe('{"a":[1,null]}\n');
    expect((await cli(["PUT", "neg", "-5"])).code).toBe(0);
    expect((await cli(["GET", "neg"])).stdout).toBe("-5\n");
  });

  test("integers beyond 2^53 print exactly as stored, also with --json", async () => {
    expect((await cli(["PUT", '{"key":"id","value":{"id":12345678901234567890}}'])).code).toBe(0);
    expect((await cli(["GET", "id"])).stdout).toBe('{"id":12345678901234567890}\n');
    expect((await cli(["--json", "GET", "id"])).stdout).toBe('{"status":"Ok","result":{"key":"id","value":{"id":12345678901234567890}}}\n');
  });

  test("arguments come through whole, as the shell passed them: keys with spaces, values with leading spaces or line breaks, empty values", async () => {
    expect(await cli(["PUT", "my key", "  two  words "])).toMatchObject({ code: 0, stdout: "OK\n" });
    expect((await cli(["GET", "my key"])).stdout).toBe("  two  words \n");
    expect((await cli(["KEYS", "my k"])).stdout).toBe("1) my key\n");
    expect(await cli(["PUT", "lead", " x"])).toMatchObject({ code: 0, stdout: "OK\n" }); // a plain key, a value beginning with a space
    expect((await cli(["--json", "GET", "lead"])).stdout).toBe('{"status":"Ok","result":{"key":"lead","value":" x"}}\n');
    expect((await cli(["DEL", "my key"])).stdout).toBe("  two  words \n");
    expect((await cli(["GET", "my key"])).code).toBe(1);
    expect((await cli(["PUT", "empty", ""])).code).toBe(0);
    expect((await cli(["--json", "GET", "empty"])).stdout).toBe('{"status":"Ok","result":{"key":"empty","value":""}}\n');
    expect((await cli(["PUT", "lines", "a\nb"])).code).toBe(0);
    expect((await cli(["--json", "DEL", "lines"])).stdout).toBe('{"status":"Ok","result":{"key":"lines","value":"a\\nb"}}\n');
    // A value of several words is still one value; a plain value that looks like JSON stays a string.
    expect((await cli(["PUT", "words", "hello", "world"])).code).toBe(0);
    expect((await cli(["GET", "words"])).stdout).toBe("hello world\n");
    expect((await cli(["PUT", "looks", "[1,2]"])).code).toBe(0);
    expect((await cli(["--json", "GET", "looks"])).stdout).toBe('{"status":"Ok","result":{"key":"looks","value":"[1,2]"}}\n');
  });

  test("an Error reply: exit 1, the error on stderr, nothing on stdout", async () => {
    const run = await cli(["GET", "no-such-key"]);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    expect(run.stderr).toBe("(error) NOT_FOUND: Key not found: no-such-key\n");
  });

  test("--json prints the server's reply line unchanged", async () => {
    const run = await cli(["--json", "PING"]);
    expect(run).toMatchObject({ code: 0, stdout: '{"status":"Ok","result":"PONG"}\n' });
    // An Error reply exits 1 with --json too.
    const missing = await cli(["--json", "GET", "cli:json:missing"]);
    expect(missing.code).toBe(1);
    expect(JSON.parse(missing.stdout)).toMatchObject({ status: "Error", code: "NOT_FOUND" });
  });

  test("KEYS prints one key per line, and (empty list) when none match", async () => {
    await cli(["PUT", "list:b", "2"]);
    await cli(["PUT", "list:a", "1"]);
    expect((await cli(["KEYS", "list:"])).stdout).toBe("1) list:a\n2) list:b\n");
    expect(await cli(["KEYS", "no-such-prefix:"])).toMatchObject({ code: 0, stdout: "(empty list)\n" });
  });

  test("a reply larger than a pipe holds is printed whole before the cli exits (1 MB of KEYS)", async () => {
    const c = await connect({ port: Number(shared.port) });
    const keys = Array.from({ length: 30_000 }, (_, i) => `many:${String(i).padStart(6, "0")}:${"k".repeat(20)}`);
    await Promise.all(keys.map((key) => c.put(key, 1)));
    await c.close();
    // A slow reader: what the pipe did not take yet waits in the cli, which must not exit before it is out.
    const proc = spawnCli(["-p", shared.port, "KEYS", "many:"]);
    proc.stdin.end();
    let stdout = "";
    const decoder = new TextDecoder();
    for await (const chunk of proc.stdout) {
      stdout += decoder.decode(chunk, { stream: true });
      await Bun.sleep(5);
    }
    expect(await proc.exited).toBe(0);
    const lines = stdout.split("\n");
    expect(lines.length).toBe(30_001);
    expect(lines[29_999]).toBe(`30000) ${keys[29_999]}`);
  });

  test("KEYS: a key holding a line break or a terminal escape is printed quoted, so it cannot pose as more entries", async () => {
    await cli(["PUT", '{"key":"evil:a\\n2) fake","value":1}']);
    await cli(["PUT", '{"key":"evil:b\\u001b[31mred","value":1}']);
    await cli(["PUT", "evil:c", "1"]);
    expect((await cli(["KEYS", "evil:"])).stdout).toBe('1) "evil:a\\n2) fake"\n2) "evil:b\\u001b[31mred"\n3) evil:c\n');
  });
});

describe("one-shot: the request as sent, and what is printed", () => {
  test("an argument beginning with { is the user's own JSON form, sent as typed", async () => {
    expect((await cli(["PUT", '{"key":"typed json","value":"as typed"}'])).code).toBe(0);
    expect(await cli(["GET", '{"key":"typed json"}'])).toMatchObject({ code: 0, stdout: "as typed\n" });
  });

  test("a lowercase command name takes the JSON form too, so a key with a space comes through whole", async () => {
    expect((await cli(["put", "lower case", "v"])).code).toBe(0);
    expect(await cli(["get", "lower case"])).toMatchObject({ code: 0, stdout: "v\n" });
    expect(await cli(["keys", "lower c"])).toMatchObject({ code: 0, stdout: "1) lower case\n" });
    expect(await cli(["del", "lower case"])).toMatchObject({ code: 0, stdout: "v\n" });
  });

  test("a string value with a line break prints raw, over two lines (one-shot output is not one line per reply)", async () => {
    expect((await cli(["PUT", "two lines", "a\nb"])).code).toBe(0);
    expect((await cli(["GET", "two lines"])).stdout).toBe("a\nb\n");
  });

  test("STATS prints its JSON indented, one field per line", async () => {
    const run = await cli(["STATS"]);
    expect(run.code).toBe(0);
    expect(run.stdout.startsWith("{\n  \"")).toBe(true);
    expect(JSON.parse(run.stdout)).toHaveProperty("server");
  });

  test("a connection closed while the request waits for its reply: exit 1, saying the connection closed", async () => {
    const closer = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data: (socket) => void socket.end() } });
    try {
      const run = await runTxkv(["cli", "-p", String(closer.port), "PING"]);
      expect(run.code).toBe(1);
      expect(run.stdout).toBe("");
      expect(run.stderr).toContain(`127.0.0.1:${closer.port} closed`);
    } finally {
      closer.stop(true);
    }
  });
});

describe("script lines (requestLines), as stdin delivers them in chunks", () => {
  async function linesOf(chunks: (string | number[])[]): Promise<(string | typeof NOT_UTF8)[]> {
    async function* stream() {
      for (const chunk of chunks) yield typeof chunk === "string" ? Buffer.from(chunk) : Buffer.from(chunk);
    }
    const out: (string | typeof NOT_UTF8)[] = [];
    for await (const line of requestLines(stream())) out.push(line);
    return out;
  }

  test("a line split across chunks, a character split inside its bytes, CRLF split, a last line without LF", async () => {
    const e = [...Buffer.from("é")];
    expect(await linesOf(["PUT a ", "one\nPUT b x", [e[0]!], [e[1]!, 0x0d], "\nGET", " b"])).toEqual(["PUT a one", "PUT b xé", "GET b"]);
  });

  test("a line that is not UTF-8 is reported alone; a BOM is dropped at the start of the script only", async () => {
    expect(await linesOf([[0xef, 0xbb, 0xbf], "PING\nPUT c ", [0xc3, 0x28], "\n\ufeffGET c\n"])).toEqual(["PING", NOT_UTF8, "\ufeffGET c"]);
  });
});

describe("scripted (stdin not a terminal)", () => {
  test("one reply line per request, in order; blank lines skipped; exit 0 when all are Ok", async () => {
    const script = ["PUT s:a apple", "", "GET s:a", "START", "PUT s:b banana pie", "COMMIT", "KEYS s:", "PING"].join("\n");
    const run = await cli([], script + "\n");
    expect(run.code).toBe(0);
    expect(run.stdout.split("\n")).toEqual([
      "OK",
      "apple",
      "Transaction started",
      "OK",
      "Transaction committed",
      '["s:a","s:b"]',
      "PONG",
      "",
    ]);
  });

  test("Error replies take their line in stdout and make the exit status 1", async () => {
    const run = await cli([], "GET s:none\nPING\nFROB\n");
    expect(run.code).toBe(1);
    expect(run.stdout).toBe(
      "(error) NOT_FOUND: Key not found: s:none\nPONG\n(error) UNKNOWN_COMMAND: Unknown command: FROB (HELP lists the commands)\n",
    );
  });

  test("thousands of requests are pipelined and answered in order", async () => {
    const n = 3000;
    const lines = [];
    for (let i = 0; i < n; i++) lines.push(`PUT bulk:${i} v${i}`, `GET bulk:${i}`);
    const run = await cli([], lines.join("\n") + "\n");
    expect(run.code).toBe(0);
    const out = run.stdout.trimEnd().split("\n");
    expect(out.length).toBe(2 * n);
    for (let i = 0; i < n; i++) {
      expect(out[2 * i]).toBe("OK");
      expect(out[2 * i + 1]).toBe(`v${i}`);
    }
  });

  test("a value with a newline stays on one line (JSON-quoted)", async () => {
    const run = await cli([], 'PUT {"key":"nl","value":"a\\nb"}\nGET nl\n');
    expect(run.stdout).toBe('OK\n"a\\nb"\n');
  });

  test("C1 controls, DEL and U+2028/U+2029 are escaped too, in values and in error messages that quote a key", async () => {
    const run = await cli([], 'PUT {"key":"c1","value":"a\\u0085b\\u009b31m\\u007f\\u2028"}\nGET c1\nGET {"key":"no\\nsuch\\u001b[31m"}\nPING\n');
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('OK\n"a\\u0085b\\u009b31m\\u007f\\u2028"\n(error) NOT_FOUND: Key not found: no\\u000asuch\\u001b[31m\nPONG\n');
  });

  test("...and inside JSON values and KEYS lists too: every reply stays one line, with no raw C1 or separator", async () => {
    const run = await cli(
      [],
      'PUT {"key":"u:a\\u2028b\\u0085c\\u009b31m","value":1}\nPUT {"key":"u:obj","value":{"x":"\\u009b2J\\u2028"}}\nKEYS u:\nGET u:obj\n',
    );
    expect(run.code).toBe(0);
    expect(run.stdout).toBe('OK\nOK\n["u:a\\u2028b\\u0085c\\u009b31m","u:obj"]\n{"x":"\\u009b2J\\u2028"}\n');
    const oneShot = await cli(["GET", "u:obj"]);
    expect(oneShot.stdout).toBe('{"x":"\\u009b2J\\u2028"}\n');
  });

  test("a line ends at LF only: a lone CR stays in the value (a CR before the LF is dropped)", async () => {
    const run = await cli([], "PUT cr:1 a\rb\r\nGET cr:1\n");
    expect(run).toMatchObject({ code: 0, stdout: 'OK\n"a\\rb"\n' }); // a control character: printed JSON-quoted
  });

  test("a line the protocol cannot carry (it ends in CR) gets its own error line, in its place, and the script goes on", async () => {
    const run = await cli([], "PUT cr:2 v\r\r\nPING\n");
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("(error) a request line must not contain LF or end in CR\nPONG\n");
    // Refused before sending: its line still comes after the replies to the lines before it.
    const between = await cli([], "PUT cr:3 1\nGET cr:3\nPUT cr:4 x\r\r\nGET cr:3\n");
    expect(between.stdout).toBe("OK\n1\n(error) a request line must not contain LF or end in CR\n1\n");
  });

  test("a line over the server's limit gets its TOO_LARGE line in its place, and the script goes on", async () => {
    const run = await cli([], `PUT tl:1 a\nPUT tl:2 ${"x".repeat(16_000_000)}\nGET tl:1\n`);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("OK\n(error) TOO_LARGE: Request too large: the limit is 1024 bytes\na\n");
  });

  test("a line that is not UTF-8 gets its own error line instead of being stored with U+FFFD; the lines around it run", async () => {
    const script = Buffer.concat([Buffer.from("PUT u8:ok a\nPUT u8:bad "), Buffer.from([0xc3, 0x28]), Buffer.from("\nGET u8:ok\nGET u8:bad\n")]);
    const run = await cli([], script);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe("OK\n(error) the line is not valid UTF-8\na\n(error) NOT_FOUND: Key not found: u8:bad\n");
  });

  test("when the reader of its output goes away (| head -1), the cli stops quietly instead of hanging", async () => {
    const script = Array.from({ length: 20000 }, (_, i) => `PUT pipe:${i} v${i}`).join("\n") + "\n";
    const proc = Bun.spawn(
      ["sh", "-c", `"$0" run "$1" cli -p "$2" | head -1`, process.execPath, path.resolve(import.meta.dir, "../index.ts"), shared.port],
      { stdin: new TextEncoder().encode(script), stdout: "pipe", stderr: "pipe", env: { ...process.env, ...TOOL_ENV } },
    );
    expect(await proc.exited).toBe(0);
    expect(await new Response(proc.stdout).text()).toBe("OK\n");
    expect(await new Response(proc.stderr).text()).not.toContain("EPIPE");
  });

  test("QUIT ends the script", async () => {
    const run = await cli([], "PING\nQUIT\nPING\n");
    expect(run).toMatchObject({ code: 0, stdout: "PONG\nBye\n" });
  });

  test("a line the server does not read as QUIT (other blanks before it, a non-ASCII letter) does not end the script", async () => {
    const run = await cli([], "\u00a0QUIT\n\vQUIT\nqu\u0131t\nPING\n");
    expect(run.code).toBe(1);
    expect(run.stdout.split("\n").filter((line) => line.includes("UNKNOWN_COMMAND"))).toHaveLength(3);
    expect(run.stdout).toEndWith("PONG\n");
  });

  test("when the server goes away, the cli says why and exits 1 at once, though its input never ends", async () => {
    const doomed = await spawnServer(["--in-memory"]);
    const proc = spawnCli(["-p", String(doomed.port)]); // stdin left open: a producer that has more to say later, or never stops
    proc.stdin.write("PING\n");
    await proc.stdin.flush();
    const stdout = proc.stdout.getReader();
    expect(new TextDecoder().decode((await stdout.read()).value)).toBe("PONG\n");
    await doomed.kill("SIGKILL");
    expect(await proc.exited).toBe(1);
    expect(await new Response(proc.stderr).text()).toBe(`txkv cli: connection to 127.0.0.1:${doomed.port} closed\n`);
  });

  test("a full server's refusal (BUSY) is said once, with its code once", async () => {
    const full = await spawnServer(["--in-memory", "--max-connections", "1"]);
    const holder = await connect({ port: full.port });
    await holder.ping();
    try {
      const proc = spawnCli(["-p", String(full.port)]); // nothing sent: the refusal alone ends the script
      expect(await proc.exited).toBe(1);
      expect(await new Response(proc.stderr).text()).toMatch(/^txkv cli: BUSY: Too many connections[^\n]*\n$/);
    } finally {
      await holder.close();
      await full.kill();
    }
  });

  test("stdin that cannot be read (a directory): one line saying so, exit 1", async () => {
    const proc = Bun.spawn(["sh", "-c", `"$0" run "$1" cli -p "$2" < /`, BUN, INDEX, shared.port], {
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, ...TOOL_ENV },
    });
    expect(await proc.exited).toBe(1);
    const stderr = await new Response(proc.stderr).text();
    expect(stderr).toStartWith("txkv cli: cannot read the script from stdin: EISDIR");
    expect(stderr.trimEnd().split("\n")).toHaveLength(1);
  });
});

/** A reader that takes no output until told: write() hands back false, "drain" comes on release(). */
class StalledReader extends EventEmitter {
  text = "";
  private wrote: (() => void) | null = null;

  write(text: string): boolean {
    this.text += text;
    this.wrote?.();
    return false;
  }

  /** Resolves at the next write. */
  nextWrite(): Promise<void> {
    return new Promise((resolve) => (this.wrote = resolve));
  }

  release(): void {
    this.emit("drain");
  }
}

describe("scripted mode's loop (runScript) with a reader that stalls", () => {
  test("it stops reading the script until the reader catches up, so what it holds stays bounded; then every reply comes, in order", async () => {
    // A stand-in client answering at once: nothing but the reader can hold the loop back.
    const client: ScriptClient = {
      send: async () => ({ status: "Ok", result: "PONG" }),
      closed: new Promise<void>(() => {}),
      closeReason: null,
    };
    const lines = 200_000;
    let read = 0;
    async function* script() {
      for (let i = 0; i < lines; i++) {
        read++;
        yield Buffer.from("PING\n");
      }
    }
    const reader = new StalledReader();
    const firstWrite = reader.nextWrite();
    const running = runScript(client, script(), new LineWriter(reader), { json: false, color: false, multiline: false, quoteStrings: false });
    await firstWrite;
    // Before the fix the whole script had been read, and its replies held, by the first write.
    expect(read).toBeLessThan(lines / 4);
    let finished = false;
    void running.then(() => (finished = true));
    while (!finished) {
      const written = reader.nextWrite();
      reader.release();
      await Promise.race([written, running]);
    }
    expect(await running).toEqual({ sawError: false, failure: null });
    expect(reader.text).toBe("PONG\n".repeat(lines));
  });
});

describe("options and failures", () => {
  test("a password from -a or TXKV_PASSWORD is sent as AUTH first", async () => {
    const guarded = await spawnServer(["--in-memory", "--password", "pw1"]);
    const guardedPort = String(guarded.port);
    const without = await runTxkv(["cli", "-p", guardedPort, "PING"]);
    expect(without.code).toBe(1);
    expect(without.stderr).toContain("AUTH_REQUIRED");
    expect(await runTxkv(["cli", "-p", guardedPort, "-a", "pw1", "PING"])).toMatchObject({ code: 0, stdout: "PONG\n" });
    const fromEnv = await runTxkv(["cli", "-p", guardedPort, "PING"], "", { TXKV_PASSWORD: "pw1" });
    expect(fromEnv).toMatchObject({ code: 0, stdout: "PONG\n" });
    const wrong = await runTxkv(["cli", "-p", guardedPort, "-a", "nope", "PING"]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toContain("AUTH_FAILED");
    await guarded.kill();
  });

  test("no server on the port: exit 1 with a message naming the address (an IPv6 one in brackets)", async () => {
    const port = closedPort();
    const run = await runTxkv(["cli", "-p", String(port), "PING"]);
    expect(run.code).toBe(1);
    expect(run.stderr).toStartWith(`txkv cli: cannot connect to 127.0.0.1:${port}: `);
    const ipv6 = await runTxkv(["cli", "-h", "::1", "-p", String(port), "PING"]);
    expect(ipv6.code).toBe(1);
    expect(ipv6.stderr).toStartWith(`txkv cli: cannot connect to [::1]:${port}: `);
  });

  test("--help names every way out of the prompt, Ctrl-C included", async () => {
    const help = await runTxkv(["cli", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("QUIT, EXIT, Ctrl-D or Ctrl-C leaves");
  });

  test("--tls-ca trusts the given CA; --tls alone refuses an unknown certificate (TLS stand-in server)", async () => {
    const certs = makeTestCertificates();
    const fake = tlsPongServer(certs);
    const fakePort = String(fake.port);
    expect(await runTxkv(["cli", "-p", fakePort, "--tls-ca", certs.caFile, "PING"])).toMatchObject({ code: 0, stdout: "PONG\n" });
    const refused = await runTxkv(["cli", "-p", fakePort, "--tls", "PING"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain("TLS connection to 127.0.0.1:" + fakePort + " refused");
    fake.stop(true);
    certs.remove();
  });

  test("a bad option or port: exit 2 with one line naming it", async () => {
    const bad = await runTxkv(["cli", "--frobnicate", "PING"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--frobnicate");
    const badPort = await runTxkv(["cli", "-p", "99999", "PING"]);
    expect(badPort.code).toBe(2);
    expect(badPort.stderr).toContain("--port 99999");
    const dashed = await runTxkv(["cli", "-p", "-1", "PING"]);
    expect(dashed.code).toBe(2);
    expect(dashed.stderr.trim().split("\n")).toHaveLength(1);
    expect(dashed.stderr).toContain("use '--port=-XYZ'");
  });

  test("the port is read as the server reads its own: decimal digits only (not 0x1F90 or 1e3, which Number() would take)", async () => {
    for (const spelling of ["0x1F90", " 1e3", "80.0", ""]) {
      const run = await runTxkv(["cli", "-p", spelling, "PING"]);
      expect(run.code).toBe(2);
      expect(run.stderr).toContain(`--port ${spelling}: expected a whole number from 1 to 65535`);
    }
    expect(await runTxkv(["cli", "-p", shared.port, "PING"])).toMatchObject({ code: 0, stdout: "PONG\n" });
  });
});

describe("interactive REPL (on a pseudo-terminal)", () => {
  /** Spawns the cli on a PTY; `until(text, from)` waits for output (from a mark on) containing text. */
  /** A server that reads and never answers; `arrived` resolves once what it was sent holds `text`. */
  function silentServer(text: string) {
    let received = "";
    let textArrived!: () => void;
    const arrived = new Promise<void>((resolve) => (textArrived = resolve));
    const silent = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        data(_socket, chunk) {
          received += chunk.toString();
          if (received.includes(text)) textArrived();
        },
      },
    });
    return { silent, arrived };
  }

  function startRepl(env: Record<string, string> = {}, replPort = shared.port) {
    let output = "";
    let waiter: { text: string; from: number; resolve: () => void } | null = null;
    const proc = tracked(Bun.spawn([process.execPath, "run", path.resolve(import.meta.dir, "../index.ts"), "cli", "-p", replPort], {
      env: { ...process.env, TXKV_HISTFILE: "", ...env },
      terminal: {
        cols: 200,
        data(_terminal, data) {
          output += new TextDecoder().decode(data);
          if (waiter && output.includes(waiter.text, waiter.from)) {
            waiter.resolve();
            waiter = null;
          }
        },
      },
    }));
    /** Resolves once the output from `from` on holds text. */
    const until = (text: string, from = 0) =>
      output.includes(text, from) ? Promise.resolve() : new Promise<void>((resolve) => (waiter = { text, from, resolve }));
    return {
      proc,
      until,
      /** Everything printed since `mark`. */
      since: (mark: number) => output.slice(mark),
      get length() {
        return output.length;
      },
      type: (text: string) => proc.terminal!.write(text),
      /** Types QUIT and expects the cli to leave with status 0. */
      async quit() {
        proc.terminal!.write("QUIT\r");
        expect(await proc.exited).toBe(0);
        proc.terminal!.close();
      },
    };
  }

  test("prompt with host:port, readable replies, errors in red, QUIT leaves with status 0", async () => {
    const repl = startRepl();
    const prompt = `127.0.0.1:${shared.port}> `;
    await repl.until(prompt);
    let mark = repl.length;
    repl.type("PUT r:1 hello there\r");
    await repl.until("OK");
    repl.type("GET r:1\r");
    await repl.until('"hello there"');
    mark = repl.length;
    repl.type("GET r:missing\r");
    await repl.until("NOT_FOUND");
    expect(repl.since(mark)).toContain("\x1b[31m(error) NOT_FOUND: Key not found: r:missing\x1b[0m");
    await repl.quit();
  });

  test.each([
    ["EXIT leaves with status 0, as QUIT does", "exit\r"],
    ["Ctrl-C at an idle prompt leaves with status 0 (nothing was waiting)", "\x03"],
  ])("%s", async (_name, keys) => {
    const repl = startRepl();
    await repl.until(`127.0.0.1:${shared.port}> `);
    repl.type(keys);
    expect(await repl.proc.exited).toBe(0);
    repl.proc.terminal!.close();
  });

  test("blank lines are not sent: no error for them, just the prompt again", async () => {
    const repl = startRepl();
    await repl.until(`127.0.0.1:${shared.port}> `);
    const mark = repl.length;
    repl.type("\r \t \rPING\r");
    await repl.until("PONG", mark);
    expect(repl.since(mark)).not.toContain("(error)");
    await repl.quit();
  });

  test("one connection for the whole session: START, PUT, COMMIT commit together, and nothing says reconnected", async () => {
    const repl = startRepl();
    await repl.until(`127.0.0.1:${shared.port}> `);
    repl.type("START\r");
    await repl.until("Transaction started");
    repl.type("PUT r:tx in-transaction\r");
    repl.type("GET r:tx\r");
    await repl.until('"in-transaction"');
    expect((await cli(["GET", "r:tx"])).code).toBe(1); // not visible outside the transaction yet
    const mark = repl.length;
    repl.type("COMMIT\r");
    await repl.until("Transaction committed", mark);
    expect((await cli(["GET", "r:tx"])).stdout).toBe("in-transaction\n");
    expect(repl.since(0)).not.toContain("reconnected");
    await repl.quit();
  });

  test("strings are shown quoted so their type shows: GET values and KEYS entries; NO_COLOR turns the colour off", async () => {
    await cli(["PUT", "rk:1", "x"]);
    const repl = startRepl({ NO_COLOR: "1" });
    await repl.until(`127.0.0.1:${shared.port}> `);
    repl.type("KEYS rk:\r");
    await repl.until('1) "rk:1"');
    repl.type("GET rk:1\r");
    await repl.until('"x"');
    const mark = repl.length;
    repl.type("GET rk:missing\r");
    await repl.until("(error) NOT_FOUND", mark);
    expect(repl.since(0)).not.toContain("\x1b[31m");
    await repl.quit();
  });

  test("arrow up recalls the newest line of the history file first", async () => {
    const historyFile = path.join(scratchDir(), "history");
    fs.writeFileSync(historyFile, "KEYS\nPING\n");
    const repl = startRepl({ TXKV_HISTFILE: historyFile });
    await repl.until(`127.0.0.1:${shared.port}> `);
    const mark = repl.length;
    repl.type("\x1b[A\r");
    await repl.until("PONG", mark);
    await repl.quit();
  });

  test("Ctrl-D leaves; earlier lines are in the history (arrow up recalls them) and saved to the history file", async () => {
    const historyFile = path.join(scratchDir(), "history");
    const repl = startRepl({ TXKV_HISTFILE: historyFile });
    const prompt = `127.0.0.1:${shared.port}> `;
    await repl.until(prompt);
    repl.type("PING\r");
    await repl.until("PONG");
    const mark = repl.length;
    repl.type("\x1b[A"); // arrow up: the last command comes back on the line
    await repl.until(`${prompt}PING`);
    expect(repl.since(mark)).toContain("PING");
    repl.type("\x15"); // Ctrl-U clears the line
    repl.type("\x04"); // Ctrl-D on an empty line
    expect(await repl.proc.exited).toBe(0);
    repl.proc.terminal!.close();
    expect(fs.readFileSync(historyFile, "utf8")).toBe("PING\n");
  });

  test("a history file that is a symbolic link stays one: the new lines go to its target, mode 0600", async () => {
    const dir = scratchDir();
    const target = path.join(dir, "dotfiles-history");
    const link = path.join(dir, "history");
    fs.writeFileSync(target, "KEYS\n");
    fs.symlinkSync(target, link);
    const repl = startRepl({ TXKV_HISTFILE: link });
    await repl.until(`127.0.0.1:${shared.port}> `);
    repl.type("PING\r");
    await repl.until("PONG");
    await repl.quit();
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(target, "utf8")).toBe("KEYS\nPING\nQUIT\n");
    expect(fs.statSync(target).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(dir).sort()).toEqual(["dotfiles-history", "history"]);
  });

  test("Ctrl-C while a command waits for a reply that never comes: the history is saved and the cli leaves with status 130", async () => {
    const { silent, arrived } = silentServer("PING\n");
    const historyFile = path.join(scratchDir(), "history");
    const repl = startRepl({ TXKV_HISTFILE: historyFile }, String(silent.port));
    await repl.until(`127.0.0.1:${silent.port}> `);
    repl.type("PING\r");
    await arrived;
    repl.type("\x03");
    expect(await repl.proc.exited).toBe(130);
    repl.proc.terminal!.close();
    expect(fs.readFileSync(historyFile, "utf8")).toBe("PING\n");
    silent.stop(true);
  });

  test("Ctrl-C while the first connection waits (its AUTH never answered): the cli leaves with status 130, not after the connect timeout, and does not crash", async () => {
    const { silent, arrived } = silentServer("AUTH");
    const repl = startRepl({ TXKV_PASSWORD: "pw" }, String(silent.port));
    await arrived;
    repl.type("\x03");
    expect(await repl.proc.exited).toBe(130);
    repl.proc.terminal!.close();
    expect(repl.since(0)).not.toContain("ERR_USE_AFTER_CLOSE");
    silent.stop(true);
  });

  test("AUTH lines stay out of the history, in the file and for arrow up (any case, leading blanks too)", async () => {
    const guarded = await spawnServer(["--in-memory", "--password", "sekret"]);
    const historyFile = path.join(scratchDir(), "history");
    const repl = startRepl({ TXKV_HISTFILE: historyFile }, String(guarded.port));
    await repl.until(`127.0.0.1:${guarded.port}> `);
    repl.type("  auth sekret\r");
    await repl.until("Authenticated");
    repl.type("PING\r");
    await repl.until("PONG");
    let mark = repl.length;
    repl.type("AUTH sekret\r");
    await repl.until("Authenticated", mark);
    // Arrow up: with the AUTH lines left out, the newest entry is PING, which runs again.
    mark = repl.length;
    repl.type("\x1b[A\r");
    await repl.until("PONG", mark);
    expect(repl.since(mark)).not.toContain("sekret");
    await repl.quit();
    expect(fs.readFileSync(historyFile, "utf8")).toBe("PING\nQUIT\n");
    await guarded.kill();
  });

  /** A REPL types `line` and sees `answer`; then its server is killed and a new one started on the same port. */
  async function replAcrossRestart(serverArgs: string[], line: string, answer: string) {
    const first = await spawnServer(serverArgs);
    const port = String(first.port);
    const repl = startRepl({}, port);
    await repl.until(`127.0.0.1:${port}> `);
    repl.type(`${line}\r`);
    await repl.until(answer);
    await first.kill("SIGKILL");
    const second = await spawnServer([...serverArgs, "--port", port]);
    return { repl, second };
  }

  /** A REPL across a server restart: the line typed before, the line after, and what the reconnect notice must say. */
  const reconnects: { name: string; serverArgs: string[]; before: [string, string]; after: [string, string]; notice: string }[] = [
    {
      name: "after a reconnect, the AUTH typed before is sent again, and the notice says so",
      serverArgs: ["--in-memory", "--password", "sekret"],
      before: ["AUTH sekret", "Authenticated"],
      after: ["PING", "PONG"],
      notice: "the AUTH you typed was sent again",
    },
    {
      name: "a lost connection is reconnected by the next command, which says an open transaction was rolled back",
      serverArgs: ["--in-memory"],
      before: ["START", "Transaction started"],
      after: ["PUT r:after 1", "OK"],
      notice: "a transaction open on it was rolled back",
    },
  ];
  for (const { name, serverArgs, before, after, notice } of reconnects) {
    test(name, async () => {
      const { repl, second } = await replAcrossRestart(serverArgs, ...before);
      const mark = repl.length;
      repl.type(`${after[0]}\r`);
      await repl.until(after[1]);
      expect(repl.since(mark)).toContain(notice);
      await repl.quit();
      await second.kill();
    });
  }

  test("an AUTH the server refused is not sent again after a reconnect", async () => {
    const { repl, second } = await replAcrossRestart(["--in-memory", "--password", "sekret"], "AUTH wrong", "(error)");
    const mark = repl.length;
    repl.type("PING\r");
    await repl.until("(reconnected", mark);
    await repl.until("(error)", mark);
    expect(repl.since(mark)).not.toContain("AUTH you typed");
    expect(repl.since(mark)).not.toContain("PONG");
    await repl.quit();
    await second.kill();
  });

  test("when the server goes away: the error is shown, the prompt says not connected, the REPL stays usable", async () => {
    const doomed = await spawnServer(["--in-memory"]);
    const repl = startRepl({}, String(doomed.port));
    await repl.until(`127.0.0.1:${doomed.port}> `);
    await doomed.kill("SIGKILL");
    repl.type("PING\r");
    await repl.until("not connected> ");
    expect(repl.since(0)).toContain(`127.0.0.1:${doomed.port}`);
    const mark = repl.length;
    repl.type("PING\r"); // reconnecting fails too: reported, and the REPL goes on
    await repl.until(`cannot connect to 127.0.0.1:${doomed.port}`);
    expect(repl.since(mark)).not.toContain("PONG");
    await repl.quit();
  });
});
