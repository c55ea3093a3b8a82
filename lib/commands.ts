/**
 * Parsing: one request line → a typed `Command`.
 *
 * Owns: command names, the plain form (words split on spaces/tabs, PUT's value
 * is the verbatim rest of the line) and the JSON form (an argument starting
 * with `{`, validated with valibot, unknown fields rejected), and the HELP text.
 * Plain requests are parsed with index scans: no regex, no JSON.
 * `parsePlainRequest` reads the commonest requests (plain GET and PUT whose
 * key and value need no JSON escaping) straight from the line's bytes, for
 * the server's fast path, and `noArgCommandOf` recognises the argument-less
 * commands (START, COMMIT, PING...) from the bytes too; every other line is
 * decoded and parsed as text. `commandNameOf` gives a line's command name
 * as the parser reads it, for txkv cli.
 * Must not: look at the store, the session or the transaction state; a parse
 * failure is returned as an `Invalid` command, never thrown.
 */
import * as v from "valibot";
import type { EncodedValue } from "./commit-log.ts";
import { isRawJsonText, parseJsonExact } from "./exact-json.ts";
import { HTTP_REQUEST, INVALID_UTF8, TOO_LARGE, type Frame } from "./framing.ts";
import { TAB, SPACE, OPEN_BRACE, CASE_BIT, skipBlankBytes } from "./ascii.ts";

export type NoArgCommandType = "START" | "COMMIT" | "ROLLBACK" | "PING" | "STATS" | "SAVE" | "HELP" | "QUIT";

export type Command =
  | { readonly type: "PUT"; readonly key: string; readonly value: EncodedValue; readonly line: string }
  | { readonly type: "GET"; readonly key: string }
  | { readonly type: "DEL"; readonly key: string; readonly line: string }
  | { readonly type: "KEYS"; readonly prefix: string }
  | { readonly type: "AUTH"; readonly password: string }
  | { readonly type: NoArgCommandType }
  | Invalid;

export type InvalidCode = "BAD_REQUEST" | "UNKNOWN_COMMAND" | "TOO_LARGE";
export type CommandName = Exclude<Command["type"], "INVALID">;
export interface Invalid {
  readonly type: "INVALID";
  readonly code: InvalidCode;
  readonly message: string;
  /** The command the line named, when it named one (PROTOCOL §4: in a failed level a PUT answers ABORTED, malformed or not). */
  readonly command?: CommandName;
  /** An HTTP request line (the framer's HTTP_REQUEST): the server closes the connection instead of answering. */
  readonly crossProtocol?: true;
}

export const COMMAND_HELP: readonly string[] = [
  "PUT <key> <value>                store a string value (the rest of the line)",
  'PUT {"key":K,"value":V}          store any JSON value',
  'GET <key> | GET {"key":K}        read a value',
  'DEL <key> | DEL {"key":K}        delete a key, answering its value',
  'KEYS [<prefix>] | KEYS {"prefix":P}  sorted keys starting with prefix',
  "START                            begin a transaction (inside one: a nested level)",
  "COMMIT                           commit the innermost level (the outermost applies everything)",
  "ROLLBACK                         discard the innermost level",
  "AUTH <password>                  authenticate (when the server has a password)",
  "PING                             answer PONG",
  "STATS                            server statistics",
  "SAVE                             write a snapshot now; answers when it is durable",
  "HELP                             this list",
  "QUIT                             close the connection",
];

const NO_ARG_COMMANDS: ReadonlySet<string> = new Set<NoArgCommandType>([
  "START", "COMMIT", "ROLLBACK", "PING", "STATS", "SAVE", "HELP", "QUIT",
]);
/** Shared command objects for argument-less requests: nothing to allocate. */
const NO_ARG: Record<string, Command> = {};
for (const name of NO_ARG_COMMANDS) NO_ARG[name] = Object.freeze({ type: name as NoArgCommandType });
/** The same, with each name's lower-case char codes, grouped by name length, for noArgCommandOf. */
const NO_ARG_BY_LENGTH: { codes: number[]; command: Command }[][] = [];
for (const name of NO_ARG_COMMANDS) {
  (NO_ARG_BY_LENGTH[name.length] ??= []).push({
    codes: [...name.toLowerCase()].map((c) => c.charCodeAt(0)),
    command: NO_ARG[name]!,
  });
}

export function invalid(code: InvalidCode, message: string): Invalid {
  return { type: "INVALID", code, message };
}

/** cmd, or, when it is a refusal, the refusal with the command its line named. */
function named(command: CommandName, cmd: Command): Command {
  return cmd.type === "INVALID" ? { ...cmd, command } : cmd;
}

/** Parses one non-blank request line. */
export function parseCommand(line: string): Command {
  const nameStart = skipBlanks(line, 0);
  const nameEnd = wordEnd(line, nameStart);
  const argStart = skipBlanks(line, nameEnd);
  // The data commands are recognised from char codes: no slice, no case conversion.
  if (nameEnd - nameStart === 3) {
    const c0 = line.charCodeAt(nameStart) | CASE_BIT;
    const c1 = line.charCodeAt(nameStart + 1) | CASE_BIT;
    const c2 = line.charCodeAt(nameStart + 2) | CASE_BIT;
    if (c0 === 0x67 && c1 === 0x65 && c2 === 0x74) return named("GET", parseGetOrDel("GET", line, argStart)); // get
    if (c0 === 0x70 && c1 === 0x75 && c2 === 0x74) return named("PUT", parsePut(line, argStart)); // put
    if (c0 === 0x64 && c1 === 0x65 && c2 === 0x6c) return named("DEL", parseGetOrDel("DEL", line, argStart)); // del
  }
  const rawName = line.slice(nameStart, nameEnd);
  const name = asciiUpperCase(rawName);
  switch (name) {
    case "KEYS":
      return named("KEYS", parseKeys(line, argStart));
    case "AUTH":
      return named("AUTH", parseAuth(line, argStart));
  }
  const noArg = NO_ARG[name];
  if (noArg !== undefined) {
    return argStart < line.length ? named(noArg.type as CommandName, invalid("BAD_REQUEST", `${name} takes no arguments`)) : noArg;
  }
  return invalid("UNKNOWN_COMMAND", `Unknown command: ${shortened(rawName)} (HELP lists the commands)`);
}

/** Longest part of an unknown command's name quoted back (Redis quotes 128 bytes): a megabyte of junk must not come back whole. */
const QUOTED_NAME_MAX = 128;

/** The name, or its first QUOTED_NAME_MAX characters (code points: an emoji is one, as a reader counts) and how many it has. */
function shortened(name: string): string {
  if (name.length <= QUOTED_NAME_MAX) return name;
  const end = codeUnitsOfFirstCharacters(name, QUOTED_NAME_MAX);
  if (end === name.length) return name;
  return `${name.slice(0, end)}... (${characterCount(name)} characters)`;
}

/** Code units that the first `characters` characters of text take (all of it when it has fewer). */
function codeUnitsOfFirstCharacters(text: string, characters: number): number {
  let end = 0;
  for (let counted = 0; counted < characters && end < text.length; counted++) end += isSurrogatePairAt(text, end) ? 2 : 1;
  return end;
}

function characterCount(text: string): number {
  let count = text.length;
  for (let i = 0; i < text.length - 1; i++) {
    if (isSurrogatePairAt(text, i)) {
      count--;
      i++;
    }
  }
  return count;
}

/** A well-formed pair (a line is valid UTF-8, so any high surrogate in it is one's first half). */
function isSurrogatePairAt(text: string, i: number): boolean {
  const code = text.charCodeAt(i);
  return code >= 0xd800 && code <= 0xdbff && i + 1 < text.length;
}

/**
 * The command name a line starts with, as parseCommand reads it: its first
 * word after spaces and tabs, upper case in ASCII (see asciiUpperCase). For
 * a tool that must agree with the server about a line (txkv cli's QUIT).
 */
export function commandNameOf(line: string): string {
  const start = skipBlanks(line, 0);
  return asciiUpperCase(line.slice(start, wordEnd(line, start)));
}

/**
 * Command names compare case-insensitively in ASCII only, as Redis compares
 * them: a name with any other character stays as it is and names no command
 * (String's toUpperCase would read "quıt" and "ſtart" as QUIT and START).
 */
function asciiUpperCase(name: string): string {
  for (let i = 0; i < name.length; i++) if (name.charCodeAt(i) > 0x7f) return name;
  return name.toUpperCase();
}

/** 1 for each byte that is not plain (see isPlainJsonByte): control, quote, backslash, DEL and every non-ASCII byte. */
const NOT_PLAIN_JSON = new Uint8Array(256).map((_, c) => (c >= 0x20 && c < 0x7f && c !== 0x22 && c !== 0x5c ? 0 : 1));

/**
 * A plain GET or PUT located in a request line's bytes (the fast path). Its
 * key and value are printable ASCII without quote or backslash, so they are
 * their own JSON text, and each byte is one code unit of the string.
 */
export interface PlainRequest {
  type: "GET" | "PUT";
  keyStart: number;
  keyEnd: number;
  /** PUT only: the value is the rest of the line, as in the text form. */
  valueStart: number;
  valueEnd: number;
  /** The line's length in bytes (what a PUT costs a transaction's byte budget). */
  lineBytes: number;
}

export function newPlainRequest(): PlainRequest {
  return { type: "GET", keyStart: 0, keyEnd: 0, valueStart: 0, valueEnd: 0, lineBytes: 0 };
}

/**
 * Reads bytes[start, end) as a plain GET or PUT into `into`, meaning exactly
 * what parseCommand would make of the same line. Returns false for anything
 * else (other commands, JSON forms, errors, bytes needing escaping): the
 * caller then takes the general path with the decoded line.
 */
export function parsePlainRequest(bytes: Uint8Array, start: number, end: number, into: PlainRequest): boolean {
  let i = skipBlankBytes(bytes, start, end);
  if (end - i < 5) return false;
  const c0 = bytes[i]! | CASE_BIT;
  const c1 = bytes[i + 1]! | CASE_BIT;
  const c2 = bytes[i + 2]! | CASE_BIT;
  const separator = bytes[i + 3];
  if (separator !== SPACE && separator !== TAB) return false;
  let type: "GET" | "PUT";
  if (c0 === 0x67 && c1 === 0x65 && c2 === 0x74) type = "GET";
  else if (c0 === 0x70 && c1 === 0x75 && c2 === 0x74) type = "PUT";
  else return false;
  const keyStart = skipBlankBytes(bytes, i + 4, end);
  if (keyStart >= end || bytes[keyStart] === OPEN_BRACE) return false;
  for (i = keyStart; i < end; i++) {
    const c = bytes[i]!;
    if (c === SPACE || c === TAB) break;
    if (!isPlainJsonByte(c)) return false;
  }
  const keyEnd = i;
  const valueStart = skipBlankBytes(bytes, keyEnd, end);
  if (type === "GET" ? valueStart < end : valueStart >= end) return false;
  if (!allPlainJsonBytes(bytes, valueStart, end)) return false;
  into.type = type;
  into.keyStart = keyStart;
  into.keyEnd = keyEnd;
  into.valueStart = valueStart;
  into.valueEnd = end;
  into.lineBytes = end - start;
  return true;
}

/**
 * The shared command of a line that is exactly one argument-less command
 * name (START, COMMIT, PING, ...; any case, blanks around it allowed), read
 * from its bytes so that such lines need no decoding; null for any other line.
 */
export function noArgCommandOf(bytes: Uint8Array, start: number, end: number): Command | null {
  start = skipBlankBytes(bytes, start, end);
  while (end > start && (bytes[end - 1] === SPACE || bytes[end - 1] === TAB)) end--;
  const length = end - start;
  const candidates = NO_ARG_BY_LENGTH[length];
  if (candidates === undefined) return null;
  for (const { codes, command } of candidates) {
    let i = 0;
    while (i < length && (bytes[start + i]! | CASE_BIT) === codes[i]) i++;
    if (i === length) return command;
  }
  return null;
}

/** Printable ASCII other than quote and backslash: JSON.stringify leaves it as it is. */
function isPlainJsonByte(c: number): boolean {
  return NOT_PLAIN_JSON[c] === 0;
}

/**
 * isPlainJsonByte for every byte of bytes[start, end), without a branch per
 * byte: a 32-byte PUT value in 21-23 ns against 47-51 for the comparisons
 * one by one, which made most of a plain PUT's parsing.
 */
function allPlainJsonBytes(bytes: Uint8Array, start: number, end: number): boolean {
  let notPlain = 0;
  for (let i = start; i < end; i++) notPlain |= NOT_PLAIN_JSON[bytes[i]!]!;
  return notPlain === 0;
}

function parseGetOrDel(type: "GET" | "DEL", line: string, argStart: number): Command {
  if (argStart >= line.length) return invalid("BAD_REQUEST", `${type} needs a key: ${type} <key>`);
  if (line.charCodeAt(argStart) === OPEN_BRACE) {
    const parsed = parseJsonArgument(type, line.slice(argStart), KeyRequest);
    if ("type" in parsed) return parsed;
    return type === "GET" ? { type, key: parsed.key } : { type, key: parsed.key, line };
  }
  const keyEnd = wordEnd(line, argStart);
  if (skipBlanks(line, keyEnd) < line.length) {
    return invalid("BAD_REQUEST", `${type} takes exactly one key (use the JSON form for keys with spaces)`);
  }
  const key = line.slice(argStart, keyEnd);
  return type === "GET" ? { type, key } : { type, key, line };
}

function parsePut(line: string, argStart: number): Command {
  if (argStart >= line.length) return invalid("BAD_REQUEST", "PUT needs a key and a value: PUT <key> <value>");
  if (line.charCodeAt(argStart) === OPEN_BRACE) {
    const parsed = parseJsonArgument("PUT", line.slice(argStart), PutRequest);
    if ("type" in parsed) return parsed;
    const unstorable = unstorableValue(parsed.value);
    if (unstorable !== null) return invalid("BAD_REQUEST", `PUT: ${unstorable}`);
    return { type: "PUT", key: parsed.key, value: JSON.stringify(parsed.value), line };
  }
  const keyEnd = wordEnd(line, argStart);
  const valueStart = skipBlanks(line, keyEnd);
  if (valueStart >= line.length) return invalid("BAD_REQUEST", "PUT needs a value: PUT <key> <value>");
  return { type: "PUT", key: line.slice(argStart, keyEnd), value: JSON.stringify(line.slice(valueStart)), line };
}

function parseKeys(line: string, argStart: number): Command {
  if (argStart >= line.length) return { type: "KEYS", prefix: "" };
  if (line.charCodeAt(argStart) === OPEN_BRACE) {
    const parsed = parseJsonArgument("KEYS", line.slice(argStart), KeysRequest);
    if ("type" in parsed) return parsed;
    return { type: "KEYS", prefix: parsed.prefix ?? "" };
  }
  const prefixEnd = wordEnd(line, argStart);
  if (skipBlanks(line, prefixEnd) < line.length) return invalid("BAD_REQUEST", "KEYS takes at most one prefix");
  return { type: "KEYS", prefix: line.slice(argStart, prefixEnd) };
}

function parseAuth(line: string, argStart: number): Command {
  if (argStart >= line.length) return invalid("BAD_REQUEST", "AUTH needs a password: AUTH <password>");
  if (line.charCodeAt(argStart) === OPEN_BRACE) {
    const parsed = parseJsonArgument("AUTH", line.slice(argStart), AuthRequest);
    if ("type" in parsed) return parsed;
    return { type: "AUTH", password: parsed.password };
  }
  return { type: "AUTH", password: line.slice(argStart) };
}

// JSON forms. strictObject rejects unknown fields; a present `value` may be any JSON.
const NonEmptyKey = v.pipe(v.string("key must be a string"), v.minLength(1, "key must not be empty"));
const KeyRequest = v.strictObject({ key: NonEmptyKey });
const PutRequest = v.strictObject({ key: NonEmptyKey, value: v.unknown() });
const KeysRequest = v.strictObject({ prefix: v.optional(v.string("prefix must be a string")) });
const AuthRequest = v.strictObject({ password: v.string("password must be a string") });

function parseJsonArgument<S extends v.GenericSchema>(
  type: string,
  text: string,
  schema: S,
): v.InferOutput<S> | Invalid {
  let json: unknown;
  try {
    json = parseJsonExact(text);
  } catch (err) {
    // JSON.parse recurses: input nested tens of thousands deep overflows the stack.
    if (err instanceof RangeError) return invalid("BAD_REQUEST", `${type}: the argument is nested too deeply`);
    return invalid("BAD_REQUEST", `${type}: the argument is not valid JSON`);
  }
  const result = v.safeParse(schema, json);
  if (result.success) return result.output;
  return invalid("BAD_REQUEST", `${type}: ${describeJsonIssue(result.issues[0])}`);
}

/**
 * Deepest nesting of arrays and objects a stored value may have. Deeper
 * values could not be read back by many clients (Python's json module fails
 * near 1000 levels; RedisJSON allows 128), and JSON.stringify would overflow
 * the stack on them.
 */
export const MAX_VALUE_DEPTH = 512;

/**
 * Why a parsed JSON value cannot be stored as it was written, or null: too
 * deep, or holding a number beyond the double range (JSON.parse reads 1e400
 * as Infinity, which would be stored as null). Walks with its own stack.
 */
function unstorableValue(value: unknown): string | null {
  const pending: [unknown, number][] = [[value, 1]];
  while (pending.length > 0) {
    const [item, depth] = pending.pop()!;
    if (typeof item === "number" && !Number.isFinite(item)) return "a number in the value is out of range (beyond ±1.8e308)";
    if (item === null || typeof item !== "object" || isRawJsonText(item)) continue;
    if (depth > MAX_VALUE_DEPTH) return `the value is nested deeper than ${MAX_VALUE_DEPTH} levels`;
    for (const child of Array.isArray(item) ? item : Object.values(item)) pending.push([child, depth + 1]);
  }
  return null;
}

function describeJsonIssue(issue: v.BaseIssue<unknown>): string {
  const path = v.getDotPath(issue);
  if (path && issue.type === "strict_object") {
    return issue.expected === "never" ? `unknown field "${path}"` : `missing field "${path}"`;
  }
  if (!path && issue.type === "strict_object") return "expected a JSON object";
  return `${path ? path + ": " : ""}${issue.message}`;
}

function skipBlanks(line: string, i: number): number {
  let c = line.charCodeAt(i);
  while (c === SPACE || c === TAB) c = line.charCodeAt(++i);
  return i;
}

function wordEnd(line: string, i: number): number {
  const n = line.length;
  while (i < n) {
    const c = line.charCodeAt(i);
    if (c === SPACE || c === TAB) break;
    i++;
  }
  return i;
}

/** An HTTP request line: never executed or answered (the server closes the connection). */
const HTTP_REQUEST_COMMAND: Invalid = Object.freeze({
  type: "INVALID",
  code: "BAD_REQUEST",
  message: "An HTTP request was sent to the txkv port",
  crossProtocol: true,
});

/** A framed request → its Command: framing failures become Invalid commands. */
export function commandFromFrame(frame: Frame, maxRequestBytes: number): Command {
  if (frame === TOO_LARGE) return invalid("TOO_LARGE", `Request too large: the limit is ${maxRequestBytes} bytes`);
  if (frame === INVALID_UTF8) return invalid("BAD_REQUEST", "Request is not valid UTF-8");
  if (frame === HTTP_REQUEST) return HTTP_REQUEST_COMMAND;
  return parseCommand(frame);
}
