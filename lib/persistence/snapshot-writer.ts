/**
 * Writes a snapshot of the live store incrementally and replaces the old one atomically.
 *
 * The store's entries (`StoreView.entries()`, a live walk of the CompactMap)
 * are written in time-boxed slices (about `sliceMs` each) with a yield to the
 * event loop between slices, so clients are never stalled for a time that
 * grows with the data. The walk survives writes between slices: a key present
 * throughout is visited once, with some value it had meanwhile, and a key
 * added or removed meanwhile may or may not be. So the result is a fuzzy
 * snapshot. It is made exact by replaying the journal records newer than the
 * snapshot's start seq (each record holds whole values, so replaying one over
 * a later value of its keys is harmless), which `beforeRename` must make
 * durable up to the end of the walk before the snapshot takes the old one's
 * place.
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
  /** Number of slices, and the longest time one of them held the event loop. */
  readonly slices: number;
  readonly longestSliceMs: number;
}

/** Characters encoded between two clock reads (one write each). */
const CHUNK_CHARS = 32 * 1024;
/** Reused encode buffer: a chunk plus its last entry, 3 UTF-8 bytes per UTF-16 unit at worst, usually fits. */
const SCRATCH_BYTES = 4 * CHUNK_CHARS;

export async function writeSnapshot(job: SnapshotJob): Promise<SnapshotWritten> {
  const { files } = job;
  const handle = await fs.promises.open(files.snapshotTemp, "w");
  let open = true;
  const scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  try {
    let bytes = writeAll(handle.fd, Buffer.from(snapshotHeader(job.seq)));
    let crc = 0;
    let lines = 0;
    let slices = 0;
    let longestSliceMs = 0;
    for (let done = false; !done; ) {
      job.checkCancelled();
      const sliceStart = performance.now();
      // Chunks are small so that the clock check also covers their encoding and write.
      do {
        let chunk = "";
        while (chunk.length < CHUNK_CHARS) {
          const next = job.entries.next();
          if (next.done) {
            done = true;
            break;
          }
          chunk += snapshotEntry(lines === 0, next.value[0], next.value[1]);
          lines++;
        }
        if (chunk.length > 0) {
          const buf = encodeInto(scratch, chunk);
          crc = Bun.hash.crc32(buf, crc);
          bytes += writeAll(handle.fd, buf);
        }
      } while (!done && performance.now() - sliceStart < job.sliceMs);
      slices++;
      longestSliceMs = Math.max(longestSliceMs, performance.now() - sliceStart);
      if (!done) await yieldToEventLoop();
    }
    bytes += writeAll(handle.fd, Buffer.from(snapshotTrailer(lines, crc, job.seq)));
    await handle.datasync();
    open = false;
    await handle.close();
    await job.beforeRename();
    // On the thread pool: replacing a large snapshot frees the old one's blocks, tens of ms.
    await fs.promises.rename(files.snapshotTemp, files.snapshot);
    await fsyncDir(files.dir);
    return { lines, bytes, slices, longestSliceMs: Math.round(longestSliceMs * 100) / 100 };
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

/** UTF-8 bytes of `text`, in `scratch` when they fit (no allocation per chunk). */
function encodeInto(scratch: Buffer, text: string): Buffer {
  if (text.length * 3 > scratch.length) return Buffer.from(text);
  return scratch.subarray(0, scratch.write(text, "utf8"));
}

function writeAll(fd: number, buf: Buffer): number {
  let offset = 0;
  while (offset < buf.length) offset += fs.writeSync(fd, buf, offset, buf.length - offset);
  return buf.length;
}

/**
 * A timer, not setImmediate: measured on Bun 1.4.5, a chain of setImmediate
 * slices delays socket reads by about one slice each time (GET p50 ~1 ms),
 * while a 0 ms timer lets the event loop poll I/O first (p50 ~0.02 ms), at the
 * price of an idle millisecond between slices.
 */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}
