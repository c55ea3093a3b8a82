/**
 * The connection options that `txkv cli` and `txkv bench` share.
 *
 * Owns: their parseArgs specs (--host, --port, --password, --tls,
 * --tls-ca), their help lines, and turning the parsed values into the
 * client's ClientOptions: the port checked with valibot, the password from
 * TXKV_PASSWORD when not given, the CA file read.
 * Must not: connect, or know the tools' other options.
 */
import * as fs from "node:fs";
import { parseOption, wholeNumber } from "./option-schemas.ts";
import type { ClientOptions, TlsClientOptions } from "./client.ts";
import { withoutBrackets } from "./address.ts";
import { errorMessage } from "./errors.ts";

export const CONNECTION_OPTIONS = {
  host: { type: "string", short: "h" },
  port: { type: "string", short: "p" },
  password: { type: "string", short: "a" },
  tls: { type: "boolean" },
  "tls-ca": { type: "string" },
} as const;

/** The help lines of CONNECTION_OPTIONS (the tools add their own after them). */
export const CONNECTION_HELP = `  -h, --host <addr>        server address (default 127.0.0.1)
  -p, --port <n>           server port (default 8080)
  -a, --password <pw>      send AUTH first (or set TXKV_PASSWORD)
      --tls                connect with TLS
      --tls-ca <file>      trust this CA certificate (PEM); implies --tls
`;

const PortSchema = wholeNumber(1, 65535);

/** Where and how to connect. Throws an Error naming the option (`--port 0: expected a whole number from 1 to 65535`) on a bad value. */
export function clientOptionsFrom(values: {
  [K in keyof typeof CONNECTION_OPTIONS]?: string | boolean;
}): ClientOptions & { host: string; port: number; tls: boolean | TlsClientOptions } {
  let port = 8080;
  if (values.port !== undefined) {
    port = parseOption("port", values.port as string, PortSchema);
  }
  const password = (values.password as string | undefined) ?? process.env.TXKV_PASSWORD;
  const caFile = values["tls-ca"] as string | undefined;
  return {
    host: withoutBrackets((values.host as string | undefined) ?? "127.0.0.1"),
    port,
    ...(password !== undefined && password !== "" ? { password } : {}),
    tls: caFile !== undefined ? { ca: readCa(caFile) } : values.tls === true,
  };
}

function readCa(file: string): string {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (error) {
    throw new Error(`--tls-ca ${file}: ${errorMessage(error)}`);
  }
}
