/**
 * Server configuration: command line + environment → a validated `Config`.
 *
 * Owns: the option table (name, env variable, default, help text), parsing
 * with `util.parseArgs`, validation with valibot, the `--help` text.
 * Must not: start anything, read data files, or exit the process itself
 * (it throws `ConfigError`; index.ts decides how to exit).
 *
 * Precedence: command-line option, then its `TXKV_*` environment variable
 * (an empty one counts as unset, but for the password and TLS files), then
 * the default.
 */
import { isIP } from "node:net";
import { parseArgs } from "node:util";
import * as v from "valibot";
import { withoutBrackets } from "./address.ts";
import { MAX_DATA_BYTES } from "./compact-map.ts";
import { LOG_LEVELS } from "./log.ts";
import { optionErrorMessage, wholeNumber } from "./option-schemas.ts";

export class ConfigError extends Error {}

type OptionKind = "string" | "boolean";

interface OptionSpec {
  readonly kind: OptionKind;
  readonly env: string;
  readonly arg: string; // placeholder in --help
  readonly help: string;
  readonly default?: string;
}

/** Every server option. Keys are the long option names. */
export const OPTIONS = {
  host: { kind: "string", env: "TXKV_HOST", arg: "<addr>", default: "127.0.0.1", help: "address to bind" },
  port: { kind: "string", env: "TXKV_PORT", arg: "<n>", default: "8080", help: "TCP port (0: any free port)" },
  data: { kind: "string", env: "TXKV_DATA", arg: "<path>", default: "data.json", help: "data file (snapshot); the journal sits beside it" },
  "in-memory": { kind: "boolean", env: "TXKV_IN_MEMORY", arg: "", help: "keep nothing on disk" },
  fsync: { kind: "string", env: "TXKV_FSYNC", arg: "always|everysec|no", default: "everysec", help: "when writes reach the disk" },
  "fsync-interval-ms": { kind: "string", env: "TXKV_FSYNC_INTERVAL_MS", arg: "<ms>", default: "1000", help: "fsync period for --fsync everysec" },
  "compact-min-bytes": { kind: "string", env: "TXKV_COMPACT_MIN_BYTES", arg: "<n>", default: "16777216", help: "journal size below which it is never compacted into the snapshot" },
  "compact-percent": { kind: "string", env: "TXKV_COMPACT_PERCENT", arg: "<n>", default: "100", help: "compact when the journal exceeds this % of the snapshot size" },
  "max-request-bytes": { kind: "string", env: "TXKV_MAX_REQUEST_BYTES", arg: "<n>", default: "1024", help: "longest request line (TOO_LARGE past it)" },
  "max-transaction-bytes": { kind: "string", env: "TXKV_MAX_TRANSACTION_BYTES", arg: "<n>", default: "1024", help: "PUT/DEL bytes one transaction may hold" },
  "max-transaction-reads": { kind: "string", env: "TXKV_MAX_TRANSACTION_READS", arg: "<n>", default: "10000", help: "distinct keys and KEYS prefixes one transaction watches; past it, any other connection's commit that changes a key conflicts with it" },
  "max-connections": { kind: "string", env: "TXKV_MAX_CONNECTIONS", arg: "<n>", default: "10000", help: "connections served at once (BUSY past it)" },
  "max-data-bytes": { kind: "string", env: "TXKV_MAX_DATA_BYTES", arg: "<n>", default: String(MAX_DATA_BYTES), help: "bytes the stored keys and values may take, 2 GiB at most (writes past it: TOO_LARGE)" },
  "max-output-bytes": { kind: "string", env: "TXKV_MAX_OUTPUT_BYTES", arg: "<n>", default: "1048576", help: "unsent reply bytes per connection before reading pauses" },
  "partial-request-ms": { kind: "string", env: "TXKV_PARTIAL_REQUEST_MS", arg: "<ms>", default: "10", help: "run a request without LF after this pause (0: never)" },
  password: { kind: "string", env: "TXKV_PASSWORD", arg: "<pw>", help: "require AUTH <pw> on every connection" },
  "tls-cert": { kind: "string", env: "TXKV_TLS_CERT", arg: "<file>", help: "serve TLS with this PEM certificate (chain); needs --tls-key" },
  "tls-key": { kind: "string", env: "TXKV_TLS_KEY", arg: "<file>", help: "PEM private key for --tls-cert" },
  timeout: { kind: "string", env: "TXKV_TIMEOUT", arg: "<seconds>", default: "0", help: "close connections silent this long (0: never)" },
  "log-level": { kind: "string", env: "TXKV_LOG_LEVEL", arg: "debug|info|warn|error", default: "info", help: "least severe log level printed" },
  "metrics-port": { kind: "string", env: "TXKV_METRICS_PORT", arg: "<n>", help: "serve GET /metrics and /health over HTTP on this port (0: any free port) [default: off]" },
  "shutdown-timeout-ms": { kind: "string", env: "TXKV_SHUTDOWN_TIMEOUT_MS", arg: "<ms>", default: "10000", help: "on SIGINT/SIGTERM, wait this long for replies to go out before closing connections" },
  help: { kind: "boolean", env: "", arg: "", help: "print this help and exit" },
  version: { kind: "boolean", env: "", arg: "", help: "print the version and exit" },
} as const satisfies Record<string, OptionSpec>;

type OptionName = keyof typeof OPTIONS;

/** Options whose environment variable, set but empty, is an error rather than unset: they turn protection on. */
const EMPTY_ENV_IS_AN_ERROR: ReadonlySet<OptionName> = new Set(["password", "tls-cert", "tls-key"]);

/** A switch: the bare option, or its environment variable set to 1/true/yes (on) or 0/false/no/empty (off). */
const flag = v.pipe(
  v.optional(
    v.union(
      [v.boolean(), v.pipe(v.string(), v.toLowerCase(), v.picklist(["1", "true", "yes", "0", "false", "no", ""]))],
      "expected 1, true or yes (on), or 0, false or no (off)",
    ),
    false,
  ),
  v.transform((x) => x === true || x === "1" || x === "true" || x === "yes"),
);

const ConfigSchema = v.object({
  host: v.pipe(
    v.string(),
    v.minLength(1, "expected an address"),
    v.transform(withoutBrackets),
    v.check(isAddressOrHostName, (issue) =>
      /:\d+$/.test(String(issue.input)) && isAddressOrHostName(String(issue.input).replace(/:\d+$/, ""))
        ? "expected an IP address or a host name, without a port (the port goes in --port)"
        : "expected an IP address or a host name",
    ),
  ),
  port: wholeNumber(0, 65535),
  data: v.pipe(
    v.string(),
    v.minLength(1, "expected a path"),
    // Names txkv gives the files beside a data file: another server's data file must not take one.
    v.check(
      (path) => !/\.(tmp|lock|journal\.\d+)$/.test(path),
      "a name ending in .tmp, .lock or .journal.<n> is taken by the files kept beside a data file",
    ),
  ),
  "in-memory": flag,
  fsync: v.picklist(["always", "everysec", "no"], "expected always, everysec or no"),
  "fsync-interval-ms": wholeNumber(1, 60_000),
  "compact-min-bytes": wholeNumber(0, Number.MAX_SAFE_INTEGER),
  "compact-percent": wholeNumber(1, 1_000_000),
  "max-request-bytes": wholeNumber(16, 64 * 1024 * 1024),
  "max-transaction-bytes": wholeNumber(16, 1024 * 1024 * 1024),
  "max-transaction-reads": wholeNumber(1, 100_000_000),
  "max-connections": wholeNumber(1, 1_000_000),
  "max-data-bytes": wholeNumber(4096, MAX_DATA_BYTES),
  "max-output-bytes": wholeNumber(1024, 1024 * 1024 * 1024),
  "partial-request-ms": wholeNumber(0, 60_000),
  password: v.optional(v.pipe(v.string(), v.minLength(1, "expected a non-empty password"))),
  "tls-cert": v.optional(v.pipe(v.string(), v.minLength(1, "expected a file path"))),
  "tls-key": v.optional(v.pipe(v.string(), v.minLength(1, "expected a file path"))),
  timeout: wholeNumber(0, 7 * 24 * 3600),
  "log-level": v.picklist(LOG_LEVELS, `expected one of ${LOG_LEVELS.join(", ")}`),
  "metrics-port": v.optional(wholeNumber(0, 65535)),
  "shutdown-timeout-ms": wholeNumber(0, 3_600_000),
});

export type Config = {
  host: string;
  port: number;
  dataPath: string;
  inMemory: boolean;
  fsync: "always" | "everysec" | "no";
  fsyncIntervalMs: number;
  compactMinBytes: number;
  compactPercent: number;
  maxRequestBytes: number;
  maxTransactionBytes: number;
  /** Distinct keys and prefixes one transaction watches before it watches the whole store (Store.maxWatchesPerTransaction). */
  maxTransactionReads: number;
  maxConnections: number;
  /** Bytes the store's records may take (CompactMap.limitBytes). */
  maxDataBytes: number;
  maxOutputBytes: number;
  partialRequestMs: number;
  password: string | undefined;
  /** TLS certificate and key files: both set (serve TLS) or neither (plain TCP). */
  tls: { certPath: string; keyPath: string } | undefined;
  /** Close connections silent for this many seconds; 0: never. */
  idleTimeoutSeconds: number;
  logLevel: (typeof LOG_LEVELS)[number];
  /** Port of the HTTP metrics endpoint, or null when it is off. */
  metricsPort: number | null;
  shutdownTimeoutMs: number;
};

type ParsedArgs =
  | { kind: "help"; text: string }
  | { kind: "version" }
  | { kind: "serve"; config: Config };

/** Parses argv (without the runtime and script) and env into a Config. Throws ConfigError. */
export function parseConfig(argv: readonly string[], env: Record<string, string | undefined>): ParsedArgs {
  const raw = readArgs(argv);
  if (raw.help) return { kind: "help", text: helpText() };
  if (raw.version) return { kind: "version" };

  const merged: Record<string, unknown> = {};
  /** Where each option not left at its default came from. */
  const given = new Map<OptionName, "command line" | "environment">();
  for (const [name, spec] of Object.entries(OPTIONS) as [OptionName, OptionSpec][]) {
    if (name === "help" || name === "version") continue;
    // An empty variable is an unset one (as in shells and compose files that pass ${VAR} through),
    // but for the security options: an empty password or certificate must not turn protection off.
    const envValue = spec.env ? env[spec.env] : undefined;
    const fromEnv = envValue === "" && !EMPTY_ENV_IS_AN_ERROR.has(name) ? undefined : envValue;
    if (raw[name] !== undefined) given.set(name, "command line");
    else if (fromEnv !== undefined) given.set(name, "environment");
    merged[name] = raw[name] ?? fromEnv ?? spec.default;
  }
  const result = v.safeParse(ConfigSchema, merged);
  if (!result.success) throw new ConfigError(describeIssue(result.issues[0], merged));
  const c = result.output;
  if ((c["tls-cert"] === undefined) !== (c["tls-key"] === undefined)) {
    throw new ConfigError("--tls-cert (TXKV_TLS_CERT) and --tls-key (TXKV_TLS_KEY) go together: give both or neither");
  }
  refuseDiskOptionsInMemory(c["in-memory"], given);
  return {
    kind: "serve",
    config: {
      host: c.host,
      port: c.port,
      dataPath: c.data,
      inMemory: c["in-memory"],
      fsync: c.fsync,
      fsyncIntervalMs: c["fsync-interval-ms"],
      compactMinBytes: c["compact-min-bytes"],
      compactPercent: c["compact-percent"],
      maxRequestBytes: c["max-request-bytes"],
      maxTransactionBytes: c["max-transaction-bytes"],
      maxTransactionReads: c["max-transaction-reads"],
      maxConnections: c["max-connections"],
      maxDataBytes: c["max-data-bytes"],
      maxOutputBytes: c["max-output-bytes"],
      partialRequestMs: c["partial-request-ms"],
      password: c.password,
      tls: c["tls-cert"] !== undefined && c["tls-key"] !== undefined ? { certPath: c["tls-cert"], keyPath: c["tls-key"] } : undefined,
      idleTimeoutSeconds: c.timeout,
      logLevel: c["log-level"],
      metricsPort: c["metrics-port"] ?? null,
      shutdownTimeoutMs: c["shutdown-timeout-ms"],
    },
  };
}

/**
 * --in-memory keeps nothing on disk: a --data or --fsync typed on the
 * command line would be silently ignored, and whoever typed it expects the
 * data kept. From the environment such an option is left alone: an image's
 * TXKV_DATA default under TXKV_IN_MEMORY=1 given at run time (or
 * `--in-memory` typed over a TXKV_DATA) are a deployment's layers, and in
 * memory it runs, as the start-up log line says.
 */
function refuseDiskOptionsInMemory(inMemory: boolean, given: ReadonlyMap<OptionName, "command line" | "environment">): void {
  if (!inMemory) return;
  const inMemoryBy = given.get("in-memory") === "environment" ? "TXKV_IN_MEMORY (in the environment)" : "--in-memory";
  for (const name of ["data", "fsync"] as const) {
    if (given.get(name) !== "command line") continue;
    throw new ConfigError(`${inMemoryBy} keeps nothing on disk, so the --${name} typed on the command line would be ignored: drop one of the two`);
  }
}

/** A host name label (RFC 1123, and underscores, as Docker service names have): 1 to 63 characters, no dash at either end. */
const HOST_LABEL = /^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$/;

/**
 * An IPv4 or IPv6 address (a zone such as `%eth0` included), or a host name
 * of dot-separated labels, 253 characters at most. A name whose last label is
 * a number is read as IPv4, as URLs and getaddrinfo read it: the short forms
 * `127.1` and `0x7f000001` are addresses, `1.2.3.4.5` and `999.1.1.1` are
 * malformed ones.
 */
function isAddressOrHostName(host: string): boolean {
  if (isIP(host) !== 0) return true;
  if (host.length > 253 || !/^[A-Za-z0-9_.-]+$/.test(host)) return false;
  const labels = (host.endsWith(".") ? host.slice(0, -1) : host).split(".");
  if (/^(\d+|0[xX][0-9A-Fa-f]*)$/.test(labels.at(-1)!)) {
    try {
      return isIP(new URL(`http://${host}`).hostname) === 4;
    } catch {
      return false;
    }
  }
  return labels.every((label) => HOST_LABEL.test(label));
}

function readArgs(argv: readonly string[]): Record<string, string | boolean | undefined> {
  const options: Record<string, { type: OptionKind }> = {};
  for (const [name, spec] of Object.entries(OPTIONS)) options[name] = { type: spec.kind };
  try {
    const { values } = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false });
    return values;
  } catch (err) {
    // parseArgs messages already name the option ("Unknown option '--x'"); say where the right ones are.
    throw new ConfigError(`${optionErrorMessage(err)} (txkv --help lists the options and commands)`);
  }
}

function describeIssue(issue: v.BaseIssue<unknown> | undefined, merged: Record<string, unknown>): string {
  const name = issue ? v.getDotPath(issue) : null;
  if (!issue || !name) return "invalid configuration";
  const spec = OPTIONS[name as OptionName] as OptionSpec | undefined;
  const envNote = spec?.env ? ` (or ${spec.env})` : "";
  return `invalid value for --${name}${envNote}: ${JSON.stringify(merged[name])}: ${issue.message}`;
}

function helpText(): string {
  const lines = [
    "Usage: txkv [options]            serve",
    "       txkv cli [options] [COMMAND ...]",
    "       txkv bench [options]",
    "",
    "Server options (each also read from its environment variable):",
  ];
  for (const [name, spec] of Object.entries(OPTIONS) as [string, OptionSpec][]) {
    const left = `  --${name}${spec.arg ? " " + spec.arg : ""}`;
    const def = spec.default !== undefined ? ` [default: ${spec.default}]` : "";
    const env = spec.env ? ` (${spec.env})` : "";
    lines.push(`${left.padEnd(44)}${spec.help}${def}${env}`);
  }
  return lines.join("\n") + "\n";
}
