/**
 * ShutdownOnSignal (lib/signals.ts) with a stand-in server and a recorded
 * exit: the cases a real process cannot be brought to on cue (a shutdown
 * that hangs past its hard deadline, one that fails). The real signals,
 * through subprocesses, are in lifecycle.test.ts.
 */
import { afterEach, expect, spyOn, test } from "bun:test";
import type { RunningServer, ShutdownReport } from "../lib/app.ts";
import { Logger } from "../lib/log.ts";
import { FLUSH_GRACE_MS, ShutdownOnSignal } from "../lib/signals.ts";

const REPORT: ShutdownReport = { connectionsClosed: 2, connectionsForced: 1, transactionsRolledBack: 1, ms: 12 };

/** A server whose shutdown() settles as the test says; counts the calls. */
function standIn(shutdown: () => Promise<ShutdownReport>) {
  const server = { calls: 0, shutdown: () => (server.calls++, shutdown()) };
  return server as typeof server & RunningServer;
}

function harness(timing: { shutdownTimeoutMs: number; flushGraceMs?: number }) {
  const lines: Record<string, unknown>[] = [];
  const log = new Logger("debug", (line) => lines.push(JSON.parse(line)), { windowMs: 60_000, burst: 1 });
  let exited!: (code: number) => void;
  const exit = new Promise<number>((resolve) => (exited = resolve));
  const codes: number[] = [];
  const signals = new ShutdownOnSignal(timing, log, (code) => {
    codes.push(code);
    exited(code);
  });
  return { log, lines, exit, codes, signals, messages: () => lines.map((l) => l.msg) };
}

const spies: { mockRestore(): void }[] = [];
afterEach(() => spies.splice(0).forEach((spy) => spy.mockRestore()));

test("a shutdown that never ends (a hung disk) is given up at the hard deadline: exit 1, saying so", async () => {
  const h = harness({ shutdownTimeoutMs: 0, flushGraceMs: 20 });
  const server = standIn(() => new Promise(() => {}));
  h.signals.serverIsUp(server);
  h.signals.onSignal("SIGTERM");
  expect(await h.exit).toBe(1);
  expect(h.lines.at(-1)).toMatchObject({ level: "error", msg: "shutdown did not finish in time: exiting without it", deadline_ms: 20 });
});

test("the hard deadline is the drain timeout plus 5 s of flushing", () => {
  const timers = spyOn(globalThis, "setTimeout");
  spies.push(timers);
  const h = harness({ shutdownTimeoutMs: 10_000 });
  h.signals.serverIsUp(standIn(() => new Promise(() => {})));
  h.signals.onSignal("SIGINT");
  expect(FLUSH_GRACE_MS).toBe(5000);
  expect(timers.mock.calls.map(([, ms]) => ms)).toEqual([15_000]);
  clearTimeout(timers.mock.results[0]!.value as Timer);
});

test("a shutdown that fails exits 1 with the reason; one that completes logs stopped, last, and exits 0", async () => {
  const failing = harness({ shutdownTimeoutMs: 0, flushGraceMs: 60_000 });
  failing.signals.serverIsUp(standIn(() => Promise.reject(new Error("could not flush the journal before exit: EIO"))));
  failing.signals.onSignal("SIGTERM");
  expect(await failing.exit).toBe(1);
  expect(failing.lines.at(-1)).toMatchObject({ level: "error", msg: "shutdown failed" });
  expect(String(failing.lines.at(-1)!.reason)).toContain("EIO");

  const clean = harness({ shutdownTimeoutMs: 0, flushGraceMs: 60_000 });
  clean.signals.serverIsUp(standIn(async () => REPORT));
  clean.log.limited("warn", "storm", "connection refused");
  clean.log.limited("warn", "storm", "connection refused"); // suppressed: its summary must come out before "stopped"
  clean.signals.onSignal("SIGTERM");
  expect(await clean.exit).toBe(0);
  expect(clean.messages()).toEqual(["connection refused", "shutting down", "connection refused: 1 similar events suppressed", "stopped"]);
  expect(clean.lines.at(-1)).toMatchObject({ connections_closed: 2, connections_forced: 1, transactions_rolled_back: 1, ms: 12 });
});

test("a signal before the server is up waits for it, then shuts it down; a second signal exits at once with 128 + its number", async () => {
  const h = harness({ shutdownTimeoutMs: 0, flushGraceMs: 60_000 });
  const server = standIn(() => new Promise(() => {}));
  h.signals.onSignal("SIGTERM");
  expect(server.calls).toBe(0);
  expect(h.codes).toEqual([]);
  h.signals.serverIsUp(server);
  expect(server.calls).toBe(1);
  h.signals.onSignal("SIGINT");
  expect(await h.exit).toBe(130);
  expect(h.lines.at(-1)).toMatchObject({ level: "warn", msg: "second signal: exiting at once, without waiting for the shutdown", signal: "SIGINT" });
  expect(server.calls).toBe(1);
});
