/**
 * Writes a snapshot of the live store incrementally and replaces the old one atomically.
 *
 * The store's Map is walked in time-boxed slices (about `sliceMs` each) with
 * a yield to the event loop between slices, so clients are never stalled for
 * a time that grows with the data. JS Map iterators survive concurrent
 * set/delete, so the result is a fuzzy snapshot: each key holds some value it
 * had while the walk ran. It is made exact by replaying the journal records
 * newer than the snapshot's start seq, which `beforeRename` must make durable
 * up to the end of the walk before the snapshot takes the old one's place.
 *
 * Owns: temp file, slices, CRC, fsync, rename, directory fsync.
 * Must not: decide when to snapshot or touch the journal.
 */
import fs from "node:fs";
import { fsyncDir, type DataFiles } from "./files.ts";
import { snapshotEntry, snapshotHeader, snapshotTrailer } from "./snapshot-format.ts";

export interface SnapshotJob {
  readonly files: DataFiles;
  /** Commit seq at which the walk starts (every record after it is in the journal). */
  readonly seq: number;
  readonly entries: Iterator<[string, string]>;
  /** Longest time one slice may hold the event loop. */
  readonly sliceMs: number;
  /** Throws to abandon the snapshot (shutdown). Called between slices. */
  readonly checkCancelled: () => void;
  /** Makes the journal durable up to the newest commit; awaited right before the rename. */
  readonly beforeRename: () => Promise<void>;
}

export interface SnapshotWritten {
  readonly lines: number;
  readonly bytes: number;
}

/** Entries encoded between two clock reads. */
const ENTRIES_PER_CLOCK_CHECK = 256;

export async function writeSnapshot(job: SnapshotJob): Promise<SnapshotWritten> {
  const { files } = job;
  const handle = await fs.promises.open(files.snapshotTemp, "w");
  let open = true;
  try {
    let bytes = writeAll(handle.fd, Buffer.from(snapshotHeader(job.seq)));
    let crc = 0;
    let lines = 0;
    for (let done = false; !done; ) {
      job.checkCancelled();
      const sliceEnd = performance.now() + job.sliceMs;
      let chunk = "";
      while (!done) {
        for (let i = 0; i < ENTRIES_PER_CLOCK_CHECK; i++) {
          const next = job.entries.next();
          if (next.done) {
            done = true;
            break;
          }
          chunk += snapshotEntry(lines === 0, next.value[0], next.value[1]);
          lines++;
        }
        if (performance.now() >= sliceEnd) break;
      }
      if (chunk.length > 0) {
        const buf = Buffer.from(chunk);
        crc = Bun.hash.crc32(buf, crc);
        bytes += writeAll(handle.fd, buf);
      }
      if (!done) await yieldToEventLoop();
    }
    bytes += writeAll(handle.fd, Buffer.from(snapshotTrailer(lines, crc)));
    await handle.datasync();
    open = false;
    await handle.close();
    await job.beforeRename();
    fs.renameSync(files.snapshotTemp, files.snapshot);
    await fsyncDir(files.dir);
    return { lines, bytes };
  } catch (err) {
    if (open) await handle.close().catch(() => {});
    try {
      fs.unlinkSync(files.snapshotTemp);
    } catch {
      // Never created or already gone.
    }
    throw err;
  }
}

function writeAll(fd: number, buf: Buffer): number {
  let offset = 0;
  while (offset < buf.length) offset += fs.writeSync(fd, buf, offset, buf.length - offset);
  return buf.length;
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
