/**
 * A process for the lock race test (persistence-log.test.ts): tries to take
 * the locks <dir>/lock0 .. lock<count-1>, each at its own millisecond from
 * <startAt> (epoch ms), so that two such processes try each one at the same
 * moment; prints the indexes it took as a JSON line, then stays alive a
 * moment (a lock whose owner has exited would be stale for the other).
 */
import { acquireLock } from "../lib/persistence/lock.ts";

const [dir, countArg, startAtArg] = process.argv.slice(2);
const count = Number(countArg);
const startAt = Number(startAtArg);
const now = () => performance.timeOrigin + performance.now();
const taken: number[] = [];
for (let i = 0; i < count; i++) {
  while (now() < startAt + i); // spin: a timer's granularity is too coarse to meet the other process
  try {
    acquireLock(`${dir}/lock${i}`);
    taken.push(i);
  } catch {
    // Held by the other process.
  }
}
console.log(JSON.stringify(taken));
await Bun.sleep(1500);
