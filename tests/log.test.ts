/**
 * The structured logger: JSON lines, the level filter, and storm suppression
 * (`limited`): the first events of a kind per window are logged, the rest
 * summarised in one line when the window ends.
 */
import { describe, expect, test } from "bun:test";
import { Logger, type StormLimits } from "../lib/log.ts";
import { waitFor } from "./helpers.ts";

function collecting(level: "debug" | "info" | "warn" | "error", limits?: StormLimits) {
  const lines: string[] = [];
  const log = new Logger(level, (line) => lines.push(line), limits);
  const entries = () => lines.map((line) => JSON.parse(line) as Record<string, unknown>);
  return { log, lines, entries };
}

describe("log lines", () => {
  test("each event is one JSON line with time, level, msg and its fields; errors become their message", () => {
    const { log, lines, entries } = collecting("debug");
    log.info("listening on 127.0.0.1:1", { keys_loaded: 3, reason: new Error("disk full") });
    expect(lines).toHaveLength(1);
    expect(lines[0]!.endsWith("\n")).toBe(true);
    expect(lines[0]!.indexOf("\n")).toBe(lines[0]!.length - 1);
    const entry = entries()[0]!;
    expect(entry).toMatchObject({ level: "info", msg: "listening on 127.0.0.1:1", keys_loaded: 3, reason: "disk full" });
    expect(Number.isNaN(Date.parse(entry.time as string))).toBe(false);
  });

  test("time, level and msg lead every line, and a field of the same name does not replace them", () => {
    const { log, lines, entries } = collecting("debug");
    log.warn("real message", { msg: "a field", level: "debug", time: "then", other: 1 });
    expect(lines[0]).toStartWith('{"time":"');
    expect(Object.keys(entries()[0]!)).toEqual(["time", "level", "msg", "other"]);
    expect(entries()[0]).toMatchObject({ level: "warn", msg: "real message", other: 1 });
    expect(Number.isNaN(Date.parse(entries()[0]!.time as string))).toBe(false);
  });

  test("by default the first 3 of a kind in a 10-second window are logged (as the README says)", () => {
    const { log, entries } = collecting("info");
    for (let i = 0; i < 5; i++) log.limited("warn", "kind", "storm");
    log.flushSuppressed();
    expect(entries().map((e) => e.msg)).toEqual(["storm", "storm", "storm", "storm: 2 similar events suppressed"]);
    expect(entries()[3]).toMatchObject({ event: "kind", suppressed: 2, window_ms: 10_000 });
  });

  test("the level filter drops less severe events", () => {
    const { log, entries } = collecting("warn");
    log.debug("d");
    log.info("i");
    log.warn("w");
    log.error("e");
    expect(entries().map((e) => e.level)).toEqual(["warn", "error"]);
  });
});

describe("storm suppression", () => {
  test("the first `burst` events of a kind are logged, the rest summarised once when the window ends", async () => {
    const { log, entries } = collecting("info", { windowMs: 100, burst: 2 });
    for (let i = 0; i < 10; i++) log.limited("warn", "refused", "connection refused", { reason: "too many connections", n: i });
    expect(entries().map((e) => e.n)).toEqual([0, 1]);
    await waitFor(() => entries().length === 3, 5000, "the summary line");
    expect(entries()[2]).toMatchObject({
      level: "warn",
      msg: "connection refused: 8 similar events suppressed",
      event: "refused",
      suppressed: 8,
      window_ms: 100,
    });
    // A new window starts with the next event: it is logged again.
    log.limited("warn", "refused", "connection refused", { n: 10 });
    expect(entries()[3]).toMatchObject({ msg: "connection refused", n: 10 });
    log.flushSuppressed();
  });

  test("kinds are counted apart; a window without suppressed events writes no summary", () => {
    const { log, entries } = collecting("info", { windowMs: 60_000, burst: 1 });
    log.limited("warn", "a", "event a");
    log.limited("warn", "a", "event a");
    log.limited("warn", "a", "event a");
    log.limited("info", "b", "event b");
    log.limited("info", "c", "event c");
    log.limited("info", "c", "event c");
    expect(entries().map((e) => e.msg)).toEqual(["event a", "event b", "event c"]);
    log.flushSuppressed();
    expect(entries().slice(3)).toEqual([
      expect.objectContaining({ level: "warn", msg: "event a: 2 similar events suppressed", suppressed: 2 }),
      expect.objectContaining({ level: "info", msg: "event c: 1 similar events suppressed", suppressed: 1 }),
    ]);
    log.flushSuppressed();
    expect(entries()).toHaveLength(5);
  });

  test("events below the level are neither logged nor counted", () => {
    const { log, entries } = collecting("warn", { windowMs: 60_000, burst: 1 });
    for (let i = 0; i < 5; i++) log.limited("info", "quiet", "quiet event");
    log.flushSuppressed();
    expect(entries()).toEqual([]);
  });
});
