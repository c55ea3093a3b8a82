/**
 * The seed README's Python client example, run with python3 against a real
 * server: printed as in the seed, with its two bugs fixed (the missing comma
 * in `commands`, and the undefined `send_command`, replaced by reading the
 * replies).
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { RunningServer } from "../lib/app.ts";
import { LineClient, startInProcess, tempDir, waitFor } from "./helpers.ts";

const SEED_CLIENT = `import socket

# Connect to the server
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server_address = ('localhost', 8080)
sock.connect(server_address)

# Add a key-value pair
sock.sendall(b'PUT key1 value1')
# Receive the response from the server
# Limit the response to prevent overflow
response = sock.recv(1024).decode()
# Print the response
print(response)

# Add another key-value pair
sock.sendall(b'PUT key2 value2')
response = sock.recv(1024).decode()
print(response)

# Get the value of a key
sock.sendall(b'GET key1')
response = sock.recv(1024).decode()
print(response)

# Start a new transaction
commands = [
  b'START',
  b'DEL key1',
  b'COMMIT'
]

sock.sendall(b'\\n'.join(commands))
responses = sock.recv(1024).decode()
print(responses)
# Close the socket
sock.close()
`;

let server: RunningServer;
const dir = tempDir();
beforeAll(async () => {
  server = await startInProcess();
});
afterAll(async () => {
  await server.shutdown();
  dir.cleanup();
});

test("the seed's Python client works as printed (bugs fixed) and its transaction deletes key1", async () => {
  const script = join(dir.path, "client.py");
  writeFileSync(script, SEED_CLIENT.replace("8080", String(server.port)));
  const proc = Bun.spawn(["python3", script], { stdout: "pipe", stderr: "pipe" });
  const [out, errText, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  expect(errText).toBe("");
  expect(code).toBe(0);
  const lines = out.split("\n").filter((l) => l.trim() !== "").map((l) => JSON.parse(l));
  expect(lines.slice(0, 3)).toEqual([
    { status: "Ok", result: { key: "key1", value: "value1" } },
    { status: "Ok", result: { key: "key2", value: "value2" } },
    { status: "Ok", result: { key: "key1", value: "value1" } },
  ]);
  // START and DEL come back at once; COMMIT (sent without LF) follows after the pause,
  // so one recv(1024) may or may not include it.
  expect(lines[3]).toEqual({ status: "Ok", result: "Transaction started" });
  expect(lines[4]).toEqual({ status: "Ok", result: { key: "key1", value: "value1" } });
  // The COMMIT ran when the client closed: key1 is gone.
  await waitFor(() => server.executor.stats.txOpen === 0, 5000, "the transaction to end");
  const c = await LineClient.connect(server.port);
  expect(await c.request("GET key1")).toMatchObject({ code: "NOT_FOUND" });
  c.close();
});
