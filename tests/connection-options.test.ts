/**
 * Unit tests of lib/connection-options.ts: how `txkv cli` and `txkv bench`
 * turn their connection flags into the client's options (defaults, the
 * port's range, TXKV_PASSWORD, an IPv6 address in brackets, the CA file).
 */
import { afterEach, describe, expect, test } from "bun:test";
import fs from "node:fs";
import path from "node:path";
import { clientOptionsFrom } from "../lib/connection-options.ts";
import { tempDir } from "./helpers.ts";

const savedPassword = process.env.TXKV_PASSWORD;
afterEach(() => {
  if (savedPassword === undefined) delete process.env.TXKV_PASSWORD;
  else process.env.TXKV_PASSWORD = savedPassword;
});

describe("clientOptionsFrom", () => {
  test("defaults: 127.0.0.1:8080, no TLS, no password", () => {
    delete process.env.TXKV_PASSWORD;
    expect(clientOptionsFrom({})).toEqual({ host: "127.0.0.1", port: 8080, tls: false });
  });

  test("the port is decimal digits from 1 to 65535, named when bad", () => {
    expect(clientOptionsFrom({ port: "6380" }).port).toBe(6380);
    for (const bad of ["0", "65536", "0x1F90", "1e3", "-1", ""]) {
      expect(() => clientOptionsFrom({ port: bad })).toThrow("--port");
    }
  });

  test("an IPv6 address in brackets (as the server prints it) connects bare", () => {
    expect(clientOptionsFrom({ host: "[::1]" }).host).toBe("::1");
    expect(clientOptionsFrom({ host: "::1" }).host).toBe("::1");
    expect(clientOptionsFrom({ host: "example.com" }).host).toBe("example.com");
  });

  test("the password comes from TXKV_PASSWORD when not given; -a wins; an empty one is none", () => {
    process.env.TXKV_PASSWORD = "from-env";
    expect(clientOptionsFrom({}).password).toBe("from-env");
    expect(clientOptionsFrom({ password: "typed" }).password).toBe("typed");
    process.env.TXKV_PASSWORD = "";
    expect("password" in clientOptionsFrom({})).toBe(false);
  });

  test("--tls-ca reads the CA file and implies TLS; a missing file is named", () => {
    const dir = tempDir();
    try {
      const ca = path.join(dir.path, "ca.pem");
      fs.writeFileSync(ca, "-----BEGIN CERTIFICATE-----\n");
      expect(clientOptionsFrom({ "tls-ca": ca }).tls).toEqual({ ca: "-----BEGIN CERTIFICATE-----\n" });
      expect(clientOptionsFrom({ tls: true }).tls).toBe(true);
      expect(() => clientOptionsFrom({ "tls-ca": path.join(dir.path, "missing.pem") })).toThrow(`--tls-ca ${path.join(dir.path, "missing.pem")}: ENOENT`);
    } finally {
      dir.cleanup();
    }
  });
});
