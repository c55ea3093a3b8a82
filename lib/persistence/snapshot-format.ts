/**
 * The snapshot file format: one JSON document, one key per line.
 *
 *   {"txkv":{"format":"txkv-snapshot","version":1,"seq":42},"data":{
 *   "key1":"value1",
 *   "key2":{"a":1}
 *   },"end":{"keys":2,"crc32":123456789,"seq":42}}
 *
 * The whole file is valid JSON (`jq .data data.json` works). The header line
 * carries the commit seq the snapshot starts from; the last line carries the
 * number of entries and the CRC-32 of the bytes between the two, so a damaged
 * snapshot is detected without parsing every value, and the seq again: the
 * CRC does not cover the header, and a seq changed there would silently skip
 * journal records (snapshots written before it was added have no second seq). Values are stored as the
 * JSON text the store already holds, so loading never re-encodes them.
 * A plain JSON object `{"key": value, ...}` (the original Python server's
 * data.json) is also accepted as a snapshot at seq 0, unless the file has a
 * txkv snapshot's first line, or the end of one and its last line (then it is
 * a damaged one).
 *
 * Owns: encoding and decoding of snapshot bytes. Must not: touch files.
 */
import * as v from "valibot";
import { CompactMap } from "../compact-map.ts";
import { parseJsonExact } from "../exact-json.ts";
import { errorMessage } from "../errors.ts";

const FORMAT = "txkv-snapshot";
const VERSION = 1;
const HEADER_PREFIX = `{"txkv":{"format":"${FORMAT}"`;
const DATA_OPEN = `,"data":{`;
const TRAILER_PREFIX = `},"end":{"keys":`;
const BACKSLASH = 92;
const QUOTE = 34;
const COLON = 58;
const COMMA = 44;

/** The first line of a snapshot starting at `seq` (entries follow, each beginning with a newline). */
export function snapshotHeader(seq: number): string {
  return `${HEADER_PREFIX},"version":${VERSION},"seq":${seq}}${DATA_OPEN}`;
}

/** One entry, preceded by its separator: `\n"key":value` for the first, `,\n"key":value` after. */
export function snapshotEntry(first: boolean, key: string, value: string): string {
  return (first ? "\n" : ",\n") + JSON.stringify(key) + ":" + singleLine(value);
}

/** The closing line; `crc32` covers every byte written between header and trailer; `seq` repeats the header's. */
export function snapshotTrailer(keys: number, crc32: number, seq: number): string {
  return `\n${TRAILER_PREFIX}${keys},"crc32":${crc32},"seq":${seq}}}\n`;
}

/**
 * JSON text with a raw line feed (only possible as insignificant whitespace)
 * would break the one-entry-per-line layout: re-encode it compactly.
 */
export function singleLine(encodedValue: string): string {
  return encodedValue.includes("\n") ? JSON.stringify(parseJsonExact(encodedValue)) : encodedValue;
}

export interface DecodedSnapshot {
  readonly seq: number;
  /** A CompactMap, handed to the Store as is (no copy of a million entries at start-up). */
  readonly entries: CompactMap;
  /** "txkv" for our own format, "plain-json" for a `{"key": value}` object. */
  readonly format: "txkv" | "plain-json";
}

/** Thrown with the problem only; the caller adds the file name. */
export class SnapshotFormatError extends Error {}

export function decodeSnapshot(bytes: Uint8Array): DecodedSnapshot {
  if (bytes.length === 0) throw new SnapshotFormatError("the file is empty");
  const headerEnd = bytes.indexOf(10);
  const firstLine = utf8(bytes.subarray(0, headerEnd === -1 ? bytes.length : headerEnd));
  if (!hasTxkvLayout(bytes, firstLine)) return decodePlainJson(bytes);
  return decodeTxkvSnapshot(bytes, firstLine, headerEnd);
}

/**
 * A txkv snapshot, possibly with a damaged first line: its header's start, or
 * both its header's end and its closing line, mark it. The header is outside
 * the checksum, so a byte flipped there must not turn the file into a "plain
 * JSON object" whose three keys (txkv, data, end) would be loaded in place of
 * the data; one byte cannot damage both marks. A hand-formatted plain object
 * may have either mark alone, not both.
 */
function hasTxkvLayout(bytes: Uint8Array, firstLine: string): boolean {
  if (firstLine.startsWith(HEADER_PREFIX)) return true;
  if (!firstLine.endsWith(DATA_OPEN) || bytes.length < 2 || bytes[bytes.length - 1] !== 10) return false;
  const lastLineStart = bytes.lastIndexOf(10, bytes.length - 2) + 1;
  return utf8(bytes.subarray(lastLineStart, bytes.length - 1)).startsWith(TRAILER_PREFIX);
}

function decodeTxkvSnapshot(bytes: Uint8Array, headerLine: string, headerEnd: number): DecodedSnapshot {
  const seq = parseHeader(headerLine);
  if (bytes.length < 2 || bytes[bytes.length - 1] !== 10) {
    throw new SnapshotFormatError("the file is truncated (no closing line)");
  }
  const trailerStart = bytes.lastIndexOf(10, bytes.length - 2);
  if (trailerStart < headerEnd) throw new SnapshotFormatError("the file is truncated (no closing line)");
  const trailer = parseTrailer(utf8(bytes.subarray(trailerStart + 1, bytes.length - 1)));
  if (trailer.seq !== null && trailer.seq !== seq) {
    throw new SnapshotFormatError(`line 1 gives seq ${seq} but the closing line seq ${trailer.seq}: the file is damaged`);
  }
  const body = bytes.subarray(headerEnd, trailerStart);
  const crc = Bun.hash.crc32(body);
  if (crc !== trailer.crc32) {
    throw new SnapshotFormatError(`checksum mismatch (stored crc32 ${trailer.crc32}, computed ${crc}): the file is damaged`);
  }
  // Sized once for the announced count; a damaged count cannot ask for more than the body could hold.
  const entries = new CompactMap(Math.min(Math.max(trailer.keys, 0), body.length >>> 2));
  const lines = body.length === 0 ? 0 : parseEntryLines(utf8(body.subarray(1)), entries);
  if (lines !== trailer.keys) {
    throw new SnapshotFormatError(`the closing line announces ${trailer.keys} entries but the file holds ${lines}`);
  }
  return { seq, entries, format: "txkv" };
}

const NO_FORMAT = "line 1: damaged snapshot header (no txkv-snapshot format field)";
const NO_SEQ = "line 1: the header has no valid seq";
/** Line 1 without its data section: `{"txkv":{"format":...,"version":1,"seq":N}}`, checked in that order. */
const HeaderSchema = v.object(
  {
    txkv: v.object(
      {
        format: v.literal(FORMAT, NO_FORMAT),
        version: v.literal(VERSION, (issue) => `line 1: unsupported snapshot version ${JSON.stringify(issue.input)}`),
        seq: v.pipe(v.number(NO_SEQ), v.safeInteger(NO_SEQ), v.minValue(0, NO_SEQ)),
      },
      // Also the words for a field that is missing: name the one.
      (issue) => {
        const missing = issue.path?.at(-1)?.key;
        return missing === "version" ? "line 1: the header names no snapshot version" : missing === "seq" ? NO_SEQ : NO_FORMAT;
      },
    ),
  },
  NO_FORMAT,
);
const count = v.pipe(v.number(), v.safeInteger());
/** The closing line after its `},`; seq is absent in a snapshot written before the closing line repeated it. */
const TrailerSchema = v.object({
  end: v.object({ keys: count, crc32: count, seq: v.optional(v.pipe(count, v.minValue(0))) }),
});

function parseHeader(line: string): number {
  let header: unknown;
  try {
    if (!line.endsWith(DATA_OPEN)) throw new Error("no data section");
    header = JSON.parse(line.slice(0, line.length - DATA_OPEN.length) + "}");
  } catch {
    throw new SnapshotFormatError("line 1: unreadable snapshot header");
  }
  const result = v.safeParse(HeaderSchema, header, { abortEarly: true });
  if (!result.success) throw new SnapshotFormatError(result.issues[0].message);
  return result.output.txkv.seq;
}

/** seq: null in a snapshot written before the closing line repeated it. */
function parseTrailer(line: string): { keys: number; crc32: number; seq: number | null } {
  try {
    if (!line.startsWith("},")) throw new Error("no closing brace");
    const result = v.safeParse(TrailerSchema, JSON.parse("{" + line.slice(2)));
    if (result.success) return { ...result.output.end, seq: result.output.end.seq ?? null };
  } catch {
    // reported below
  }
  throw new SnapshotFormatError("the closing line is missing or unreadable (the file is truncated or damaged)");
}

/** Parses `"key":value[,]` lines into `into`; returns the number of lines. Hot at start-up: no per-line allocation beyond the two strings. */
function parseEntryLines(text: string, into: CompactMap): number {
  let count = 0;
  let start = 0;
  while (start <= text.length) {
    let end = text.indexOf("\n", start);
    if (end === -1) end = text.length;
    count++;
    if (text.charCodeAt(start) !== QUOTE) throw badEntry(count + 1);
    let close = text.indexOf('"', start + 1);
    if (close === -1 || close >= end) throw badEntry(count + 1);
    let key = text.slice(start + 1, close);
    // Only a key with an escape needs the JSON parser (and the escape-aware search for its end).
    if (key.includes("\\")) {
      close = closingQuote(text, start + 1, end);
      key = parseEscapedKey(text, start, close, count + 1);
    }
    const valueEnd = text.charCodeAt(end - 1) === COMMA ? end - 1 : end;
    if (text.charCodeAt(close + 1) !== COLON || valueEnd <= close + 2) throw badEntry(count + 1);
    into.set(key, text.slice(close + 2, valueEnd));
    start = end + 1;
  }
  return count;
}

function parseEscapedKey(text: string, start: number, close: number, lineNo: number): string {
  if (close === -1) throw badEntry(lineNo);
  try {
    return JSON.parse(text.slice(start, close + 1)) as string;
  } catch {
    throw badEntry(lineNo);
  }
}

/** Index of the quote closing a JSON string whose body starts at `from`, honouring escapes. */
function closingQuote(text: string, from: number, end: number): number {
  for (let i = from; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c === BACKSLASH) i++;
    else if (c === QUOTE) return i;
  }
  return -1;
}

function badEntry(lineNo: number): SnapshotFormatError {
  return new SnapshotFormatError(`line ${lineNo}: not a "key":value entry`);
}

function decodePlainJson(bytes: Uint8Array): DecodedSnapshot {
  let parsed: unknown;
  try {
    parsed = parseJsonExact(utf8(bytes));
  } catch (err) {
    throw new SnapshotFormatError(`not valid JSON (${errorMessage(err)})`);
  }
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new SnapshotFormatError("not a txkv snapshot and not a JSON object of key/value pairs");
  }
  const entries = new CompactMap();
  for (const [key, value] of Object.entries(parsed)) {
    if (key === "") throw new SnapshotFormatError("holds an empty key");
    entries.set(key, JSON.stringify(value));
  }
  return { seq: 0, entries, format: "plain-json" };
}

/** Not text.ts's strictUtf8: a BOM at the start of a hand-saved plain data.json is dropped here, not data. */
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** Decodes without copying the bytes first; bytes that are not UTF-8 are damage (txkv writes only UTF-8). */
function utf8(bytes: Uint8Array): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new SnapshotFormatError("not valid UTF-8");
  }
}
