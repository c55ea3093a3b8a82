/**
 * `txkv cli`: talk to a txkv server from a terminal or a script.
 *
 * Owns: the cli's options, its three modes and how replies are shown.
 *   - one-shot  `txkv cli GET key1`: prints the reply; exit 1 on an Error reply
 *     (the error goes to stderr).
 *   - REPL      stdin is a terminal: prompt `host:port> `, history (AUTH
 *     lines left out), QUIT, EXIT, Ctrl-D or Ctrl-C leaves (Ctrl-C while a
 *     command waits drops the connection, exit 130); reconnects when the
 *     server went away, sending again the AUTH typed before.
 *   - scripted  stdin is a file or pipe: every non-blank line is one request,
 *     pipelined; one reply line per request, in order; exit 1 if any reply was
 *     an Error. Reads on only while the reader of its output keeps up, and
 *     stops reading once the connection is lost.
 * Must not: know command semantics beyond choosing how to display a reply
 * (a line's command name is read as the server reads it, commands.ts);
 * all protocol work goes through lib/client.ts.
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import * as readline from "node:readline";
import { parseArgs } from "node:util";
import { formatAddress } from "./address.ts";
import { connect, isBlankLine, TxkvClient, TxkvError, type ClientOptions, type Reply } from "./client.ts";
import { commandNameOf } from "./commands.ts";
import { stringifyJson } from "./exact-json.ts";
import { strictUtf8 } from "./text.ts";
import { clientOptionsFrom, CONNECTION_HELP, CONNECTION_OPTIONS } from "./connection-options.ts";
import { optionErrorMessage } from "./option-schemas.ts";
import { untilDrained, writeStdout, type OutputStream } from "./stdout.ts";
import { errorMessage } from "./errors.ts";
import { LF } from "./ascii.ts";
import { RaceableEvent } from "./raceable-event.ts";

const CLI_OPTIONS = {
  ...CONNECTION_OPTIONS,
  json: { type: "boolean" },
  help: { type: "boolean" },
} as const;

const CLI_HELP = `Usage: txkv cli [options] [command ...]

  With a command: send it, print the reply, exit 1 on an Error reply.
  With stdin a terminal: interactive prompt (QUIT, EXIT, Ctrl-D or Ctrl-C leaves).
  With stdin a file or pipe: one request per line, one reply line per request.

Options:
${CONNECTION_HELP}      --json               print replies as the server's raw JSON lines
      --help               this text
`;

type CliSettings = { client: ClientOptions; json: boolean };

/** Runs `txkv cli` with the arguments after `cli`; resolves with the exit status. */
export async function runCli(argv: string[]): Promise<number> {
  let settings: CliSettings;
  let words: string[];
  try {
    const split = splitOptions(argv);
    words = split.words;
    const parsed = parseArgs({ args: split.optionArgs, options: CLI_OPTIONS, strict: true, allowPositionals: false });
    if (parsed.values.help) {
      writeStdout(CLI_HELP);
      return 0;
    }
    settings = toSettings(parsed.values);
  } catch (error) {
    process.stderr.write(`txkv cli: ${optionErrorMessage(error)}\n`);
    return 2;
  }
  if (words.length > 0) return oneShot(settings, oneShotRequest(words));
  if (process.stdin.isTTY) return repl(settings);
  return scripted(settings);
}

// ---- the three modes ----------------------------------------------------

/**
 * The request for `txkv cli WORD...`: the words joined by spaces, unless an
 * argument of GET, DEL, PUT or KEYS would not come through the plain form
 * whole (an empty one, a key with a space, tab or line break, a PUT value
 * that begins with a space or tab or holds a line break): then the JSON form, which keeps each argument as the shell
 * passed it, as redis-cli does. A PUT value may span several words; an
 * argument that begins with `{` is the user's own JSON form.
 */
function oneShotRequest(words: string[]): string {
  const [name = "", ...args] = words;
  const command = name.toUpperCase();
  if (args.length === 0 || args[0]!.startsWith("{")) return words.join(" ");
  if ((command === "GET" || command === "DEL") && args.length === 1 && !survivesPlainForm(args[0]!)) {
    return `${command} ${JSON.stringify({ key: args[0] })}`;
  }
  if (command === "KEYS" && args.length === 1 && !survivesPlainForm(args[0]!)) return `KEYS ${JSON.stringify({ prefix: args[0] })}`;
  if (command === "PUT" && args.length >= 2) {
    const [key, ...valueWords] = args as [string, ...string[]];
    const value = valueWords.join(" ");
    if (!survivesPlainForm(key) || value === "" || startsWithBlank(value) || /[\r\n]/.test(value)) {
      return `PUT ${JSON.stringify({ key, value })}`;
    }
  }
  return words.join(" ");
}

/** A word the plain form reads back whole: not empty, no space, tab or line break in it. */
function survivesPlainForm(word: string): boolean {
  return word !== "" && !/[ \t\r\n]/.test(word);
}

function startsWithBlank(text: string): boolean {
  return text.startsWith(" ") || text.startsWith("\t");
}

async function oneShot(settings: CliSettings, line: string): Promise<number> {
  const client = await connectOrReport(settings.client);
  if (!client) return 1;
  try {
    const reply = await client.send(line);
    const style = { json: settings.json, color: colorFor(process.stderr), multiline: true, quoteStrings: false };
    if (reply.status === "Error" && !settings.json) {
      process.stderr.write(formatReply(line, reply, style) + "\n");
      return 1;
    }
    writeStdout(formatReply(line, reply, { ...style, color: colorFor(process.stdout) }) + "\n");
    return reply.status === "Error" ? 1 : 0;
  } catch (error) {
    process.stderr.write(`txkv cli: ${errorText(error)}\n`);
    return 1;
  } finally {
    await client.close();
  }
}

/** Every line of stdin is a request; replies are printed as they come, in order. */
async function scripted(settings: CliSettings): Promise<number> {
  const client = await connectOrReport(settings.client);
  if (!client) return 1;
  const style = { json: settings.json, color: false, multiline: false, quoteStrings: false };
  const outcome = await runScript(client, process.stdin, new LineWriter(process.stdout), style);
  // A producer that never ends (`while :; do echo PING; done | txkv cli`) must not keep the cli alive.
  process.stdin.destroy();
  await client.close();
  if (outcome.failure !== null) {
    process.stderr.write(`txkv cli: ${outcome.failure}\n`);
    return 1;
  }
  return outcome.sawError ? 1 : 0;
}

/** What runScript needs of a client (tests give a stand-in). */
export type ScriptClient = Pick<TxkvClient, "send" | "closed" | "closeReason">;

/** sawError: some reply was an Error; failure: why the script stopped early (for stderr), or null. */
type ScriptOutcome = { sawError: boolean; failure: string | null };

/** Requests sent and not yet printed, at most; then reading waits for replies. */
const MAX_IN_FLIGHT = 4096;

const CONNECTION_LOST = Symbol("connection lost");

/**
 * The scripted mode's loop: sends each request line of `input`, prints the
 * replies to `output` in order. Reads the next line only when fewer than
 * MAX_IN_FLIGHT replies are awaited and the output's reader keeps up, so a
 * stalled reader (`| less`) holds the cli's memory bounded; stops reading
 * as soon as the connection is lost.
 */
export async function runScript(client: ScriptClient, input: AsyncIterable<unknown>, output: LineWriter, style: Style): Promise<ScriptOutcome> {
  const replies = new RepliesInOrder(output, style);
  const lines = requestLines(input)[Symbol.asyncIterator]();
  const connectionLost = new RaceableEvent(client.closed.then((): typeof CONNECTION_LOST => CONNECTION_LOST));
  let unreadable: string | null = null;
  for (;;) {
    const pulling = lines.next();
    let next: IteratorResult<string | typeof NOT_UTF8> | typeof CONNECTION_LOST;
    try {
      next = await connectionLost.race(pulling);
    } catch (error) {
      unreadable = `cannot read the script from stdin: ${errorText(error)}`; // a directory, say
      break;
    }
    if (next === CONNECTION_LOST) {
      replies.lost ??= client.closeReason;
      break;
    }
    if (next.done || output.closed) break; // output closed: the reader went away (`| head`), stop quietly
    const line = next.value;
    if (line !== NOT_UTF8 && isBlankLine(line)) continue;
    // A line the protocol cannot carry is refused here, and gets its error line in its place.
    replies.add(line === NOT_UTF8 ? null : line, line === NOT_UTF8 ? Promise.reject(new TypeError("the line is not valid UTF-8")) : client.send(line));
    if (line !== NOT_UTF8 && commandNameOf(line) === "QUIT") break;
    if (replies.inFlight >= MAX_IN_FLIGHT) await replies.printed();
    await output.ready();
  }
  await replies.printed();
  await output.flushed();
  return { sawError: replies.sawError, failure: unreadable ?? (replies.lost ? errorText(replies.lost) : null) };
}

/** Prints each reply after the one before it, also when a request fails at once; notes Errors and a lost connection. */
class RepliesInOrder {
  sawError = false;
  /** The connection error that ended the script, if one did. */
  lost: unknown = null;
  /** Requests added and not yet printed. */
  inFlight = 0;
  private last: Promise<void> = Promise.resolve();

  constructor(
    private readonly output: LineWriter,
    private readonly style: Style,
  ) {}

  add(request: string | null, answer: Promise<Reply>): void {
    this.inFlight++;
    const outcome = answer.then(
      (reply) => ({ reply }),
      (error: unknown) => ({ error }),
    );
    this.last = this.last.then(async () => {
      const result = await outcome;
      this.inFlight--;
      if ("reply" in result) {
        if (result.reply.status === "Error") this.sawError = true;
        this.output.write(formatReply(request ?? "", result.reply, this.style));
      } else if (result.error instanceof TypeError) {
        // A line the protocol cannot carry (not UTF-8, or ending in CR): its own error line, and the script goes on.
        this.sawError = true;
        this.output.write(`(error) ${result.error.message}`);
      } else {
        this.lost ??= result.error;
      }
    });
  }

  /** Resolves once every reply added so far is printed. */
  printed(): Promise<void> {
    return this.last;
  }
}

async function repl(settings: CliSettings): Promise<number> {
  return new Repl(settings).run();
}

/** Exit status of a prompt left with Ctrl-C while a command waited: 128 + SIGINT, as shells report it. */
const INTERRUPTED = 130;

/** What a wait abandoned by Ctrl-C gives instead of its result. */
const CTRL_C = Symbol("Ctrl-C");

/** The interactive prompt: one connection, made again when lost. */
class Repl {
  private readonly address: string;
  private readonly historyFile = historyPath();
  /** readline's history, newest first, as its "history" event last gave it (null: nothing typed, nothing to save). */
  private historyEntries: string[] | null = null;
  private readonly rl: readline.Interface;
  private readonly style: Style;
  private client: TxkvClient | null = null;
  /** A connection was made before: a new one must say that its transaction state is gone. */
  private hadConnection = false;
  /** The last AUTH line typed that the server accepted: sent again on a new connection (kept in memory only). */
  private typedAuth: string | null = null;
  /** A command or a connect is waiting: Ctrl-C then abandons it, drops the connection and leaves. */
  private busy = false;
  private interrupted = false;
  /** Resolves at that Ctrl-C. */
  private readonly interruption: RaceableEvent<typeof CTRL_C>;
  private interrupt!: () => void;

  constructor(private readonly settings: CliSettings) {
    this.address = formatAddress(settings.client.host ?? "127.0.0.1", settings.client.port ?? 8080);
    this.rl = readline.createInterface({
      input: process.stdin,
      output: process.stdout,
      history: loadHistory(this.historyFile),
      historySize: 1000,
      removeHistoryDuplicates: true,
    });
    this.style = { json: settings.json, color: colorFor(process.stdout), multiline: true, quoteStrings: true };
    // A password typed as AUTH stays out of the history, as in redis-cli (readline lets this listener edit it).
    this.rl.on("history", (entries: string[]) => {
      if (entries[0] !== undefined && isAuthLine(entries[0])) entries.shift();
      this.historyEntries = entries;
    });
    this.rl.on("SIGINT", () => this.onInterrupt());
    this.interruption = new RaceableEvent(new Promise((resolve) => (this.interrupt = () => resolve(CTRL_C))));
  }

  async run(): Promise<number> {
    await this.unlessInterrupted(this.reconnect());
    if (!this.interrupted) {
      this.rl.prompt();
      for await (const line of this.rl) {
        const name = commandNameOf(line);
        if (name === "QUIT" || name === "EXIT") break;
        if (!isBlankLine(line)) await this.runCommand(line);
        if (this.interrupted) break;
        this.rl.prompt();
      }
    }
    this.rl.close();
    if (this.interrupted) this.client?.destroy("interrupted (Ctrl-C)"); // also one made while Ctrl-C was typed
    else await this.client?.close();
    if (this.historyEntries !== null) saveHistory(this.historyFile, this.historyEntries);
    return this.interrupted ? INTERRUPTED : 0;
  }

  /** Ctrl-C: at the prompt it leaves; while a command waits for a reply that may never come, it drops the connection too. */
  private onInterrupt(): void {
    if (this.busy) {
      this.interrupted = true;
      this.interrupt();
      this.client?.destroy("interrupted (Ctrl-C)");
    }
    this.rl.close();
  }

  /**
   * Waits for work unless Ctrl-C comes first. A connect cannot be cancelled
   * (Bun.connect): one abandoned this way is left behind, and the process
   * exits without waiting for it (index.ts).
   */
  private async unlessInterrupted<T>(work: Promise<T>): Promise<T | typeof CTRL_C> {
    this.busy = true;
    try {
      return await this.interruption.race(work);
    } finally {
      this.busy = false;
    }
  }

  private async runCommand(line: string): Promise<void> {
    try {
      const connected = await this.unlessInterrupted(this.reconnect());
      if (connected === CTRL_C || connected === null) return;
      const reply = await this.unlessInterrupted(connected.send(line));
      if (reply === CTRL_C) return;
      if (isAuthLine(line) && reply.status === "Ok") this.typedAuth = line;
      writeStdout(formatReply(line, reply, this.style) + "\n");
    } catch (error) {
      if (this.interrupted) return;
      writeStdout(paint(`(error) ${errorText(error)}`, RED, this.style.color) + "\n");
      this.rl.setPrompt("not connected> ");
    }
  }

  private async reconnect(): Promise<TxkvClient | null> {
    if (this.client?.isOpen) return this.client;
    const lostOne = this.hadConnection;
    this.client = await connectOrReport(this.settings.client);
    if (this.client) this.hadConnection = true;
    if (this.client && lostOne) {
      // A new connection starts outside any transaction: say so, or the next PUT would commit at once unnoticed.
      const auth = this.typedAuth === null ? "" : await this.sendTypedAuthAgain(this.client);
      writeStdout(`(reconnected to ${this.address}: the previous connection was lost; a transaction open on it was rolled back${auth})\n`);
    }
    this.rl.setPrompt(this.client?.isOpen ? `${this.address}> ` : "not connected> ");
    return this.client;
  }

  /** The AUTH typed on the lost connection, on the new one (redis-cli does the same); the notice's words about it. */
  private async sendTypedAuthAgain(client: TxkvClient): Promise<string> {
    try {
      const reply = await client.send(this.typedAuth!);
      if (reply.status === "Ok") return "; the AUTH you typed was sent again";
      this.typedAuth = null;
      return `; the AUTH you typed was sent again and refused: ${reply.code}: ${escapeUnsafe(reply.message)}`;
    } catch (error) {
      return `; sending the AUTH you typed again failed: ${errorText(error)}`;
    }
  }
}

// ---- reply display ------------------------------------------------------

type Style = {
  /** Print the server's JSON reply line unchanged. */
  json: boolean;
  color: boolean;
  /** Lists and objects may span lines (false in scripted mode: one line per reply). */
  multiline: boolean;
  /** Interactive: show string values quoted so their type shows (as redis-cli does). */
  quoteStrings: boolean;
};

const RED = "\x1b[31m";
const DIM = "\x1b[2m";

/** How one reply is shown. */
function formatReply(request: string, reply: Reply, style: Style): string {
  if (style.json) return stringifyJson(reply);
  // A message may quote a key (NOT_FOUND): its line breaks and escapes are shown escaped, so the error stays one line.
  if (reply.status === "Error") return paint(`(error) ${reply.code}: ${escapeUnsafe(reply.message)}`, RED, style.color);
  const result = reply.result;
  const name = commandNameOf(request);
  if ((name === "GET" || name === "DEL") && isKeyValue(result)) return formatValue(result.value, style);
  if (name === "PUT" && isKeyValue(result)) return "OK";
  if (typeof result === "string") return style.multiline ? result : oneLine(result);
  if (Array.isArray(result) && style.multiline) {
    if (result.length === 0) return paint("(empty list)", DIM, style.color);
    // A key is one line of its own whatever it holds: one with a line break or a terminal escape is quoted.
    const item = (value: unknown) => (typeof value !== "string" ? displayJson(value) : style.quoteStrings ? quoted(value) : oneLine(value));
    return result.map((value, i) => `${i + 1}) ${item(value)}`).join("\n");
  }
  return style.multiline && isObject(result) ? displayJson(result, 2) : displayJson(result);
}

function formatValue(value: unknown, style: Style): string {
  if (typeof value !== "string") return displayJson(value);
  if (style.quoteStrings) return quoted(value);
  return style.multiline ? value : oneLine(value);
}

/**
 * Control characters (C0, DEL, C1) and the Unicode line and paragraph
 * separators: they break a line for some readers (Python's splitlines()
 * splits at U+0085, U+2028 and U+2029) or drive the terminal (ESC, CSI).
 */
const UNSAFE_FOR_ONE_LINE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
const EACH_UNSAFE_FOR_ONE_LINE = new RegExp(UNSAFE_FOR_ONE_LINE.source, "g");
/** The ones JSON.stringify leaves raw (it escapes C0). */
const EACH_LEFT_RAW_BY_JSON = /[\u007f-\u009f\u2028\u2029]/g;

/** A string that would break the one-line-per-reply rule, or drive the terminal, is shown quoted. */
function oneLine(text: string): string {
  return UNSAFE_FOR_ONE_LINE.test(text) ? quoted(text) : text;
}

/** A string JSON-quoted for display (see displayJson). */
function quoted(text: string): string {
  return displayJson(text);
}

/**
 * JSON text of a value for display: as stringifyJson, with DEL, C1 and
 * U+2028/U+2029 escaped too (JSON.stringify leaves them raw; they can only
 * occur inside strings, where the escape means the same character).
 */
function displayJson(value: unknown, indent?: number): string {
  return stringifyJson(value, indent).replace(EACH_LEFT_RAW_BY_JSON, unicodeEscape);
}

/** text with each character of UNSAFE_FOR_ONE_LINE written as a JSON-style unicode escape (backslash, u, four hex digits). */
function escapeUnsafe(text: string): string {
  return text.replace(EACH_UNSAFE_FOR_ONE_LINE, unicodeEscape);
}

function unicodeEscape(c: string): string {
  return "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0");
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isKeyValue(value: unknown): value is { key: string; value: unknown } {
  return isObject(value) && "key" in value && "value" in value;
}

function paint(text: string, color: string, enabled: boolean): string {
  return enabled ? `${color}${text}\x1b[0m` : text;
}

function colorFor(stream: NodeJS.WriteStream): boolean {
  return !!stream.isTTY && process.env.NO_COLOR === undefined;
}

// ---- options --------------------------------------------------------------

/**
 * Options come before the command: `cli -p 9000 PUT k -5` must not read `-5`
 * as an option. Returns the leading options and the command words after them.
 */
function splitOptions(argv: string[]): { optionArgs: string[]; words: string[] } {
  let i = 0;
  while (i < argv.length) {
    const arg = argv[i]!;
    if (arg === "--") return { optionArgs: argv.slice(0, i), words: argv.slice(i + 1) };
    if (!arg.startsWith("-") || arg === "-") break;
    i += takesSeparateValue(arg) ? 2 : 1;
  }
  return { optionArgs: argv.slice(0, i), words: argv.slice(i) };
}

function takesSeparateValue(arg: string): boolean {
  if (arg.includes("=")) return false;
  const spec = arg.startsWith("--")
    ? CLI_OPTIONS[arg.slice(2) as keyof typeof CLI_OPTIONS]
    : Object.values(CLI_OPTIONS).find((option) => "short" in option && `-${option.short}` === arg);
  return spec?.type === "string";
}

function toSettings(values: { [K in keyof typeof CLI_OPTIONS]?: string | boolean }): CliSettings {
  return { client: clientOptionsFrom(values), json: values.json === true };
}

// ---- small helpers --------------------------------------------------------

async function connectOrReport(options: ClientOptions): Promise<TxkvClient | null> {
  try {
    return await connect(options);
  } catch (error) {
    process.stderr.write(`txkv cli: ${errorText(error)}\n`);
    return null;
  }
}

/** An Error reply's code goes before its message, as in `(error) CODE: message`; a connection error's message already says why (BUSY included). */
function errorText(error: unknown): string {
  if (error instanceof TxkvError) return `${error.code}: ${error.message}`;
  return errorMessage(error);
}

/** `AUTH …` in any case, after any blanks (Unicode ones too: such a line stays out of the history although the server would not take it for AUTH). */
function isAuthLine(line: string): boolean {
  return commandNameOf(line.trimStart()) === "AUTH";
}

function historyPath(): string | null {
  const configured = process.env.TXKV_HISTFILE;
  if (configured !== undefined) return configured === "" ? null : configured;
  return path.join(os.homedir(), ".txkv_history");
}

/** readline wants the newest entry first. */
function loadHistory(file: string | null): string[] {
  if (!file) return [];
  try {
    return fs.readFileSync(file, "utf8").split("\n").filter(Boolean).reverse().slice(0, 1000);
  } catch {
    return [];
  }
}

/**
 * Replaces the history file whole (a temporary file renamed over it): a cli
 * killed while saving leaves the old one. A history file that is a symbolic
 * link (into a dotfiles repository, say) stays one: its target is replaced.
 */
function saveHistory(link: string | null, entries: readonly string[]): void {
  if (!link) return;
  const file = realPathOrItself(link);
  const temporary = `${file}.${process.pid}.tmp`;
  try {
    const kept = [...entries].reverse().filter((line) => !isAuthLine(line));
    fs.writeFileSync(temporary, kept.map((line) => line + "\n").join(""), { mode: 0o600 });
    fs.renameSync(temporary, file);
  } catch {
    // History is a convenience: a read-only home must not break the cli.
    fs.rmSync(temporary, { force: true });
  }
}

function realPathOrItself(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    return file; // not there yet (or a dangling link: then the link itself is replaced)
  }
}

/** Stands for a script line whose bytes are not UTF-8 (decoding would put U+FFFD in the value). */
export const NOT_UTF8 = Symbol("not UTF-8");
/** strictUtf8 keeps a BOM: only one at the very start of the script is dropped (requestLines), as before a file's text. */
const BOM = "\ufeff";

/**
 * Request lines of a script: split at LF only, a CR before it dropped, as
 * the server frames them. (readline also ends a line at a lone CR, which a
 * plain value may hold.) Bytes are split before decoding, so one line that
 * is not UTF-8 is reported alone.
 */
export async function* requestLines(input: AsyncIterable<unknown>): AsyncGenerator<string | typeof NOT_UTF8> {
  let first = true;
  for await (const line of splitAtLf(input)) {
    const decoded = decodeLine(line);
    yield first && typeof decoded === "string" && decoded.startsWith(BOM) ? decoded.slice(1) : decoded;
    first = false;
  }
}

async function* splitAtLf(input: AsyncIterable<unknown>): AsyncGenerator<Uint8Array> {
  let partial: Uint8Array[] = [];
  for await (const chunk of input) {
    const bytes = chunk as Uint8Array;
    let start = 0;
    for (let newline = bytes.indexOf(LF); newline !== -1; newline = bytes.indexOf(LF, start)) {
      partial.push(bytes.subarray(start, newline));
      yield Buffer.concat(partial);
      partial = [];
      start = newline + 1;
    }
    // Kept past this chunk: a copy, in case the stream reuses its buffer.
    if (start < bytes.length) partial.push(bytes.slice(start));
  }
  if (partial.length > 0) yield Buffer.concat(partial);
}


function decodeLine(bytes: Uint8Array): string | typeof NOT_UTF8 {
  try {
    return withoutFinalCr(strictUtf8.decode(bytes));
  } catch {
    return NOT_UTF8;
  }
}

function withoutFinalCr(line: string): string {
  return line.endsWith("\r") ? line.slice(0, -1) : line;
}

/** What LineWriter writes to: process.stdout, or a stand-in in tests. */
export interface LineOutput extends OutputStream {
  on(event: "error", listener: () => void): unknown;
}

/** Output held before the script reads on (characters buffered here; beyond them, the reader must catch up first). */
const OUTPUT_BACKLOG_CHARS = 64 * 1024;

/** Collects output lines and writes them in one go per tick, respecting backpressure. Exported for tests. */
export class LineWriter {
  /** The reader went away (EPIPE, as with `| head -1`): later output is dropped. */
  closed = false;
  private buffered = "";
  private scheduled = false;
  private writing: Promise<void> = Promise.resolve();
  /** True while a write the stream did not take at once waits for "drain". */
  private waiting = false;

  constructor(private readonly stream: LineOutput) {
    stream.on("error", () => (this.closed = true));
  }

  write(line: string): void {
    this.buffered += line + "\n";
    if (!this.scheduled) {
      this.scheduled = true;
      // After this turn's replies (each printed from its own promise step), in one write.
      setImmediate(() => this.flush());
    }
  }

  /** Resolves at once while the reader keeps up; when it falls behind, once everything is written. */
  async ready(): Promise<void> {
    if (this.buffered.length >= OUTPUT_BACKLOG_CHARS || this.waiting) await this.flushed();
  }

  private flush(): void {
    this.scheduled = false;
    const text = this.buffered;
    this.buffered = "";
    if (text === "") return;
    this.writing = this.writing.then(async () => {
      if (this.closed || this.stream.write(text)) return;
      this.waiting = true;
      await untilDrained(this.stream);
      this.waiting = false;
    });
  }

  async flushed(): Promise<void> {
    this.flush();
    await this.writing;
  }
}
