/**
 * CRC-32 (the zlib / ISO-HDLC one, as Bun.hash.crc32 computes) of a byte
 * range, in JavaScript, eight bytes per step ("slicing-by-8").
 *
 * Why not Bun.hash.crc32: on the journal's PUT path it needs a subarray and a
 * native call per record, and in the server that cost 6 % of the CPU of an
 * `everysec` PUT (11 alternating rounds of 3 s), against 2 % for this loop
 * and about 100 ns in a micro-benchmark: bench/BENCHMARKS.md item 24, as item 20
 * saw for other native calls there. Recovery checks records over the file's
 * bytes with it too (no subarray per record; replay time unchanged).
 * Bun.hash.crc32 stays where a whole string or buffer is at hand: the
 * encoder of other commits' records and the snapshot's writer and check; a
 * test checks that both agree.
 *
 * Owns: the checksum arithmetic. Must not: know what the bytes are.
 */

/** TABLES[k][b]: the CRC of byte b followed by k zero bytes. */
const TABLES = buildTables();

function buildTables(): Int32Array[] {
  const tables = Array.from({ length: 8 }, () => new Int32Array(256));
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    tables[0]![n] = c;
  }
  for (let n = 0; n < 256; n++) {
    for (let k = 1; k < 8; k++) tables[k]![n] = (tables[k - 1]![n]! >>> 8) ^ tables[0]![tables[k - 1]![n]! & 0xff]!;
  }
  return tables;
}

const [T0, T1, T2, T3, T4, T5, T6, T7] = TABLES as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array];

/** CRC-32 of bytes[start, end), as an unsigned 32-bit number. */
export function crc32(bytes: Uint8Array, start: number, end: number): number {
  let c = -1;
  let i = start;
  for (; i + 8 <= end; i += 8) {
    const low = c ^ (bytes[i]! | (bytes[i + 1]! << 8) | (bytes[i + 2]! << 16) | (bytes[i + 3]! << 24));
    const high = bytes[i + 4]! | (bytes[i + 5]! << 8) | (bytes[i + 6]! << 16) | (bytes[i + 7]! << 24);
    c =
      T7[low & 0xff]! ^ T6[(low >>> 8) & 0xff]! ^ T5[(low >>> 16) & 0xff]! ^ T4[low >>> 24]! ^
      T3[high & 0xff]! ^ T2[(high >>> 8) & 0xff]! ^ T1[(high >>> 16) & 0xff]! ^ T0[high >>> 24]!;
  }
  for (; i < end; i++) c = T0[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}
