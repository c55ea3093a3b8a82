/**
 * Reply encoding: results → the bytes of one reply line.
 *
 * Owns: the reply shapes of PROTOCOL §2 (`{"status":"Ok","result":...}` and
 * `{"status":"Error","code":...,"message":...}`), the error codes, and
 * preassembled constant replies. Replies are built as strings around a
 * JSON.stringify of just the parts that vary; values arrive already encoded.
 * Must not: decide what a command means or touch sockets.
 */
import type { EncodedValue } from "./commit-log.ts";
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
