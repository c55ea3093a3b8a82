/**
 * How a host and port are written: an IPv6 address in brackets when a port
 * follows (`[::1]:8080`, as in URLs), and taken bare where a host alone is
 * asked for (`--host [::1]` or `--host ::1`, server and client tools alike).
 * Must not: resolve or validate addresses.
 */

/** `host:port` as messages and the start-up line show it. */
export function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The host without the brackets a URL puts around an IPv6 address (`[::1]` → `::1`); any other text as it is. */
export function withoutBrackets(host: string): string {
  return host.length >= 2 && host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
}
