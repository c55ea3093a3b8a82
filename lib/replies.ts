/**
 * Reply encoding: results → the bytes of one reply line.
 *
 * Owns: the reply shapes of PROTOCOL §2 (`{"status":"Ok","result":...}` and
 * `{"status":"Error","code":...,"message":...}`), the error codes, and
 * preassembled constant replies. Replies are built as strings around a
 * JSON.stringify of just the parts that vary; values arrive already encoded.
 * The fast path's replies (plain GET/PUT, see Executor.executePlain) are
 * written as bytes into a ByteBuffer instead, byte for byte the same as the
 * strings would encode to: their keys and values need no JSON escaping.
 * Must not: decide what a command means or touch sockets.
 */
import type { EncodedValue } from "./commit-log.ts";
import type { ByteBuffer } from "./byte-buffer.ts";
import type { AsciiEntry } from "./compact-map.ts";
import { jsonString } from "./text.ts";

export type ErrorCode =
  | "BAD_REQUEST"
  | "UNKNOWN_COMMAND"
  | "TOO_LARGE"
  | "NOT_FOUND"
  | "NO_TRANSACTION"
  | "CONFLICT"
  | "ABORTED"
  | "AUTH_REQUIRED"
  | "AUTH_FAILED"
  | "PERSISTENCE"
  | "BUSY";

/** An Ok reply whose result is the given JSON text. */
export function okJson(resultJson: string): string {
  return '{"status":"Ok","result":' + resultJson + "}\n";
}

/** The Ok reply of PUT, GET and DEL: `{"key":K,"value":V}`. */
export function okEntry(key: string, value: EncodedValue): string {
  return '{"status":"Ok","result":{"key":' + jsonString(key) + ',"value":' + value + "}}\n";
}

export function error(code: ErrorCode, message: string): string {
  return '{"status":"Error","code":"' + code + '","message":' + JSON.stringify(message) + "}\n";
}

export function notFound(key: string): string {
  return error("NOT_FOUND", "Key not found: " + key);
}

export const REPLY = {
  started: okJson('"Transaction started"'),
  committed: okJson('"Transaction committed"'),
  rolledBack: okJson('"Transaction rolled back"'),
  pong: okJson('"PONG"'),
  bye: okJson('"Bye"'),
  authenticated: okJson('"Authenticated"'),
  saved: okJson('"Saved"'),
} as const;

// ---- byte replies of the fast path ----

const QUOTE = 0x22;
const ascii = (text: string): Uint8Array => Buffer.from(text, "latin1");
const ENTRY_HEAD = ascii('{"status":"Ok","result":{"key":"');
const ENTRY_MIDDLE = ascii('","value":');
const ENTRY_TAIL = ascii("}}\n");
const NOT_FOUND_HEAD = ascii('{"status":"Error","code":"NOT_FOUND","message":"Key not found: ');
const NOT_FOUND_TAIL = ascii('"}\n');

/** Bytes that entryTail() appends. */
export const ENTRY_TAIL_BYTES = ENTRY_TAIL.length;

/** okEntry() up to the value, for the key src[keyStart, keyEnd) (bytes that need no JSON escaping). */
export function entryHead(out: ByteBuffer, src: Uint8Array, keyStart: number, keyEnd: number): void {
  out.constant(ENTRY_HEAD);
  out.range(src, keyStart, keyEnd);
  out.constant(ENTRY_MIDDLE);
}

/** The rest of okEntry() after the value. */
export function entryTail(out: ByteBuffer): void {
  out.constant(ENTRY_TAIL);
}

/**
 * okEntry() of a key and a string value given as bytes that need no JSON
 * escaping. Returns where the value's JSON text (quotes included) starts in out.bytes.
 */
export function stringEntry(
  out: ByteBuffer,
  src: Uint8Array,
  keyStart: number,
  keyEnd: number,
  valueStart: number,
  valueEnd: number,
): number {
  entryHead(out, src, keyStart, keyEnd);
  const valueAt = out.length;
  out.byte(QUOTE);
  out.range(src, valueStart, valueEnd);
  out.byte(QUOTE);
  entryTail(out);
  return valueAt;
}

/** okEntry() of the key src[keyStart, keyEnd) and the encoded value of entry (bytes that need no JSON escaping). */
export function entryWithValueOf(out: ByteBuffer, src: Uint8Array, keyStart: number, keyEnd: number, entry: AsciiEntry): void {
  entryHead(out, src, keyStart, keyEnd);
  out.range(entry.valueSrc, entry.valueStart, entry.valueEnd);
  entryTail(out);
}

/** notFound() for the key src[keyStart, keyEnd) (bytes that need no JSON escaping). */
export function notFoundBytes(out: ByteBuffer, src: Uint8Array, keyStart: number, keyEnd: number): void {
  out.constant(NOT_FOUND_HEAD);
  out.range(src, keyStart, keyEnd);
  out.constant(NOT_FOUND_TAIL);
}
