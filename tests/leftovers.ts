/**
 * Preloaded by bunfig.toml for every `bun test` run: when the run ends,
 * SIGKILLs the subprocesses helpers.ts tracked that are still alive (those
 * of a test that failed before it stopped them), so no server or cli
 * outlives the run. Must not: stop anything earlier; a test's own processes
 * are its own to stop.
 */
import { afterAll } from "bun:test";
import { liveSubprocesses } from "./helpers.ts";

afterAll(() => {
  for (const proc of liveSubprocesses) proc.kill("SIGKILL");
});
