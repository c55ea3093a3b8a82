/** RaceableEvent (lib/raceable-event.ts): races work against a one-time event, and keeps no result alive. */
import { describe, expect, test } from "bun:test";
import { RaceableEvent } from "../lib/raceable-event.ts";

const EVENT = Symbol("event");

function eventAndTrigger(): { event: RaceableEvent<typeof EVENT>; trigger: () => void } {
  let trigger!: () => void;
  const event = new RaceableEvent(new Promise<typeof EVENT>((resolve) => (trigger = () => resolve(EVENT))));
  return { event, trigger };
}

describe("RaceableEvent", () => {
  test("settles with the work when the work comes first", async () => {
    const { event } = eventAndTrigger();
    expect(await event.race(Promise.resolve(7))).toBe(7);
    await expect(event.race(Promise.reject(new Error("no")))).rejects.toThrow("no");
  });

  test("settles with the event when it comes first, for every wait pending then", async () => {
    const { event, trigger } = eventAndTrigger();
    const never = new Promise<number>(() => {});
    const first = event.race(never);
    const second = event.race(never);
    trigger();
    expect(await first).toBe(EVENT);
    expect(await second).toBe(EVENT);
  });

  test("once the event has happened, a new race settles with it at once", async () => {
    const { event, trigger } = eventAndTrigger();
    trigger();
    await event.race(new Promise(() => {}));
    expect(await event.race(new Promise(() => {}))).toBe(EVENT);
    // Work that fails after losing is not an unhandled rejection.
    expect(await event.race(Promise.reject(new Error("late")))).toBe(EVENT);
  });

  test("a finished race's result is not kept alive by the pending event (Promise.race keeps it)", async () => {
    const { event } = eventAndTrigger();
    const refs: WeakRef<object>[] = [];
    for (let i = 0; i < 20; i++) {
      const result = (await event.race(Promise.resolve({ line: "x".repeat(1000) + i }))) as object;
      refs.push(new WeakRef(result));
    }
    await Bun.sleep(0);
    Bun.gc(true);
    // The GC scans the stack conservatively, so one may linger; Promise.race keeps all twenty.
    expect(refs.filter((ref) => ref.deref() !== undefined).length).toBeLessThanOrEqual(2);
  });
});
