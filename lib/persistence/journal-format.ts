/**
 * The journal file format: JSON lines, one committed transaction per line.
 *
 *   {"seq":7,"ops":[["key1","value1"],["key2",{"a":1}],["gone"]],"crc32":1234567890}
 *
 * `[key, value]` is a put (value is the JSON value itself), `[key]` a delete
 * (so a put of JSON `null` stays distinct from a delete). `crc32` is the
 * CRC-32 of the line's bytes before `,"crc32":`, so a byte damaged on disk
 * is found even where the line stays valid JSON (a value's letter changed);
 * lines written before it was added have none and are read as they are. A
 * line is written whole with its final LF, so a transaction is all or
 * nothing on disk: a crash mid-append leaves a final line without its LF
 * (or, after a power cut, zero bytes in it), which recovery drops.
 *
 * Owns: encoding and decoding of journal lines. Must not: touch files.
 */
import * as v from "valibot";
import type { CommitOp, CommitRecord } from "../commit-log.ts";
import type { ByteBuffer } from "../byte-buffer.ts";
import type { AsciiEntry } from "../compact-map.ts";
import { crc32 } from "../crc32.ts";
import { parseJsonExact } from "../exact-json.ts";
import { jsonString, strictUtf8 } from "../text.ts";
import { singleLine } from "./snapshot-format.ts";
import { errorMessage } from "../errors.ts";
import { CR, LF } from "../ascii.ts";

export function encodeRecord(record: CommitRecord): string {
  let line = `{"seq":${record.seq},"ops":[`;
  for (let i = 0; i < record.ops.length; i++) {
    const [key, value] = record.ops[i]!;
    if (i > 0) line += ",";
    line += value === null ? `[${jsonString(key)}]` : `[${jsonString(key)},${singleLine(value)}]`;
  }
  line += "]";
  // Bun.hash.crc32 of a string is that of its UTF-8 bytes: the bytes the line is written as.
  return line + CRC_FIELD + Bun.hash.crc32(line) + "}\n";
}

/**
 * encodeRecord() of a record of PUTs only, entries[0, count), written as
 * bytes into out: the keys and the encoded values are ASCII needing no
 * escaping (and so hold no line break).
 */
export function writeAsciiPutsRecord(out: ByteBuffer, seq: number, entries: readonly AsciiEntry[], count: number): void {
  const start = out.length;
  out.constant(RECORD_START);
  out.decimal(seq);
  out.constant(OPS_START);
  for (let i = 0; i < count; i++) {
    const entry = entries[i]!;
    if (i > 0) out.constant(OP_BETWEEN);
    out.range(entry.keySrc, entry.keyStart, entry.keyEnd);
    out.constant(KEY_END);
    out.range(entry.valueSrc, entry.valueStart, entry.valueEnd);
  }
  out.constant(OPS_END);
  const crc = crc32(out.bytes, start, out.length); // not Bun.hash.crc32 here: see crc32.ts
  out.constant(CRC_FIELD_BYTES);
  out.decimal(crc);
  out.constant(RECORD_END);
}
const CRC_FIELD = ',"crc32":';
const RECORD_START = Buffer.from('{"seq":', "latin1");
const OPS_START = Buffer.from(',"ops":[["', "latin1");
const KEY_END = Buffer.from('",', "latin1");
const OP_BETWEEN = Buffer.from('],["', "latin1");
const OPS_END = Buffer.from("]]", "latin1");
const CRC_FIELD_BYTES = Buffer.from(CRC_FIELD, "latin1");
const RECORD_END = Buffer.from("}\n", "latin1");

/** Thrown with the problem only; the caller adds the file name. */
export class JournalFormatError extends Error {}

export interface JournalScan {
  /** Byte length of the complete, valid records (where a torn tail is cut off). */
  readonly validBytes: number;
  /** Why the final line was dropped, or null when the file ends cleanly. */
  readonly tornTail: string | null;
  readonly records: number;
  readonly lastSeq: number;
}

/** The number (from 1) of the first LF-ended line of bytes that is not valid UTF-8, or 0. */
function firstLineNotUtf8(bytes: Uint8Array): number {
  let start = 0;
  for (let lineNo = 1; ; lineNo++) {
    const newline = bytes.indexOf(0x0a, start);
    if (newline === -1) return 0;
    try {
      strictUtf8.decode(bytes.subarray(start, newline));
    } catch {
      return lineNo;
    }
    start = newline + 1;
  }
}

/**
 * Decodes every record of one journal file, in order, calling `onRecord`.
 * `afterSeq`: seqs must be strictly greater than the previous one (across files).
 * A final line without its line end is a torn tail (reported, the records
 * before it kept), and so is a final line that is unreadable because it holds
 * zero bytes (what a power cut leaves where data never reached the disk).
 * Any other bad line, final or not, is corruption (a record that does not
 * parse, is not UTF-8, has a damaged field, or fails its checksum): one
 * write() puts a whole line with its LF, so a crash leaves a line unfinished
 * or zeroed, not finished and wrong.
 */
export function scanJournal(
  bytes: Uint8Array,
  afterSeq: number,
  onRecord: (seq: number, ops: CommitOp[]) => void,
): JournalScan {
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("utf8");
  // The lenient decoding above turns bad bytes into U+FFFD; only then is it worth finding them exactly.
  const badUtf8Line = text.includes("\uFFFD") ? firstLineNotUtf8(bytes) : 0;
  let lastSeq = afterSeq;
  let records = 0;
  let start = 0;
  // The same line's start in bytes: each LF of the text is an LF byte, in the same order.
  let byteStart = 0;
  let lineNo = 0;
  while (start < text.length) {
    lineNo++;
    const newline = text.indexOf("\n", start);
    const isFinal = newline === -1 || newline === text.length - 1;
    const torn = (reason: string): JournalScan => ({ validBytes: byteStart, tornTail: `line ${lineNo}: ${reason}`, records, lastSeq });
    if (newline === -1) return torn("incomplete final record (no line end)");
    const byteNewline = bytes.indexOf(LF, byteStart);
    // A CR before the LF (a file whose line ends were converted) is not part of the record.
    const crlf = newline > start && text.charCodeAt(newline - 1) === CR;
    const line = text.slice(start, crlf ? newline - 1 : newline);
    let decoded: DecodedRecord;
    try {
      if (lineNo === badUtf8Line) throw new Error("not valid UTF-8");
      decoded = decodeSimpleRecord(line) ?? decodeRecord(line);
    } catch (err) {
      if (isFinal && line.includes("\u0000")) return torn(`unreadable final record with zero bytes (${errorMessage(err)})`);
      throw new JournalFormatError(`line ${lineNo}: ${errorMessage(err)}`);
    }
    if (decoded.crc !== null) {
      const computed = crc32(bytes, byteStart, byteNewline - (crlf ? 1 : 0) - decoded.crcSuffixLength);
      if (computed !== decoded.crc) {
        throw new JournalFormatError(`line ${lineNo}: checksum mismatch (stored crc32 ${decoded.crc}, computed ${computed}): the record is damaged`);
      }
    }
    if (decoded.seq <= lastSeq) {
      throw new JournalFormatError(`line ${lineNo}: seq ${decoded.seq} does not follow seq ${lastSeq}`);
    }
    lastSeq = decoded.seq;
    records++;
    onRecord(decoded.seq, decoded.ops);
    start = newline + 1;
    byteStart = byteNewline + 1;
  }
  return { validBytes: bytes.length, tornTail: null, records, lastSeq };
}


/** A decoded line; crc: its crc32 field (null in a line written before it existed), which takes the line's last crcSuffixLength characters. */
interface DecodedRecord {
  readonly seq: number;
  readonly ops: CommitOp[];
  readonly crc: number | null;
  readonly crcSuffixLength: number;
}

/**
 * The common record, one put of a string (or true/false/null) whose key and
 * value need no escapes: matched whole by a regex that accepts only valid
 * JSON, and the value text kept as written (it is what JSON.stringify gives),
 * which halves the replay time of a long journal. Anything else: null.
 */
const SIMPLE_PUT = /^\{"seq":([1-9][0-9]{0,15}),"ops":\[\["([^"\\\x00-\x1f]+)",("[^"\\\x00-\x1f]*"|true|false|null)\]\](?:,"crc32":(0|[1-9][0-9]{0,9}))?\}$/;

function decodeSimpleRecord(line: string): DecodedRecord | null {
  const match = SIMPLE_PUT.exec(line);
  if (match === null) return null;
  const seq = Number(match[1]);
  if (!Number.isSafeInteger(seq)) return null;
  const crcDigits = match[4];
  return {
    seq,
    ops: [[match[2]!, match[3]!]],
    crc: crcDigits === undefined ? null : Number(crcDigits),
    crcSuffixLength: crcDigits === undefined ? 0 : CRC_FIELD.length + crcDigits.length + 1,
  };
}

/** The record's own checksum field, last in the line. */
const CRC_AT_END = /,"crc32":(0|[1-9][0-9]{0,9})\}$/;

/** A record's shape (the checksum field taken off first); see recordProblem for the words of a refusal. */
const RecordSchema = v.strictObject({
  seq: v.pipe(v.number(), v.safeInteger(), v.minValue(1)),
  ops: v.array(v.union([v.strictTuple([v.string()]), v.strictTuple([v.string(), v.unknown()])])),
});

function decodeRecord(line: string): DecodedRecord {
  // The checksum field is taken off before parsing: the parser need not read it, and any crc32 left is misplaced.
  const crcField = CRC_AT_END.exec(line);
  let parsed: unknown;
  try {
    parsed = parseJsonExact(crcField === null ? line : line.slice(0, crcField.index) + "}");
  } catch {
    throw new Error("not valid JSON");
  }
  const result = v.safeParse(RecordSchema, parsed);
  if (!result.success) throw new Error(recordProblem(result.issues));
  const { seq, ops } = result.output;
  const decoded: CommitOp[] = ops.map((op) => (op.length === 1 ? [op[0], null] : [op[0], JSON.stringify(op[1])]));
  return { seq, ops: decoded, crc: crcField === null ? null : Number(crcField[1]), crcSuffixLength: crcField === null ? 0 : crcField[0].length };
}

/**
 * Why a parsed line is no record. A field of another name comes first: a
 * damaged field name (of crc32 above all) must not pass as a field nobody
 * reads, and "ops" damaged into "opz" is better named as such than as a
 * missing ops.
 */
function recordProblem(issues: readonly v.BaseIssue<unknown>[]): string {
  const unknown = issues.find((issue) => issue.type === "strict_object" && issue.expected === "never");
  if (unknown !== undefined) {
    const field = v.getDotPath(unknown);
    return field === "crc32" ? "crc32 is not the last field" : `unknown field ${JSON.stringify(field)}`;
  }
  const path = v.getDotPath(issues[0]!);
  if (path === null) return "not a JSON object";
  if (path === "seq") return "no valid seq";
  if (path === "ops") return "no ops array";
  return "an op is not [key, value] or [key]";
}
