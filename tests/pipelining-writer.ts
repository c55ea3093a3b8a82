/**
 * A test client in a process of its own (tests/abuse.test.ts): sends `count`
 * pipelined `PUT <tag>-<i> <value>` lines in one burst and checks each reply.
 * Alone in its process, its event loop does nothing but write and collect,
 * so it never pauses inside a line for the server's 10 ms rule to see.
 * Prints the number of wrong replies and the first one.
 *
 *   bun tests/pipelining-writer.ts <port> <tag> <count> <value-bytes>
 */
import { connect } from "node:net";

const [port, tag, count, valueBytes] = process.argv.slice(2);
const value = "x".repeat(Number(valueBytes));
const requests = Number(count);
let burst = "";
for (let i = 0; i < requests; i++) burst += `PUT ${tag}-${i} ${value}\n`;
const chunks: Buffer[] = [];
let lines = 0;
const socket = connect({ host: "127.0.0.1", port: Number(port) }, () => socket.write(burst));
socket.on("data", (chunk: Buffer) => {
  chunks.push(chunk);
  for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) lines++;
  if (lines < requests) return;
  const replies = Buffer.concat(chunks).toString().split("\n").slice(0, requests);
  const wrong = replies.filter((line, i) => line !== `{"status":"Ok","result":{"key":"${tag}-${i}","value":"${value}"}}`);
  console.log(JSON.stringify({ wrong: wrong.length, first: wrong[0]?.slice(0, 120) ?? null }));
  socket.destroy();
});
