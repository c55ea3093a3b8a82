import { describe, expect, test } from "bun:test";
import { commandFromFrame, MAX_VALUE_DEPTH, parseCommand } from "../lib/commands.ts";
import { HTTP_REQUEST, INVALID_UTF8, TOO_LARGE } from "../lib/framing.ts";

describe("parseCommand, plain form", () => {
  test("PUT keeps the rest of the line verbatim as a string value", () => {
    expect(parseCommand("PUT key1 hello   big \t world ")).toEqual({
      type: "PUT",
      key: "key1",
      value: JSON.stringify("hello   big \t world "),
      line: "PUT key1 hello   big \t world ",
    });
  });

  test("a plain value that looks like JSON is still a string", () => {
    expect(parseCommand('PUT k {"a":1}')).toMatchObject({ type: "PUT", key: "k", value: JSON.stringify('{"a":1}') });
    expect(parseCommand("PUT k 42")).toMatchObject({ value: '"42"' });
  });

  test("command names are case-insensitive; arguments split on spaces and tabs", () => {
    expect(parseCommand("get\t\tkey1")).toEqual({ type: "GET", key: "key1" });
    expect(parseCommand("  dEl  key1  ")).toMatchObject({ type: "DEL", key: "key1" });
    expect(parseCommand("start")).toEqual({ type: "START" });
  });

  test("case folds in ASCII only: letters whose Unicode upper case is ASCII name no command", () => {
    for (const line of ["qu\u0131t", "\u017ftart", "key\u017f a", "auth\u017f"]) {
      expect(parseCommand(line)).toMatchObject({ type: "INVALID", code: "UNKNOWN_COMMAND" });
    }
  });

  test("missing arguments and extra words are BAD_REQUEST", () => {
    for (const line of ["PUT", "PUT key", "PUT key  ", "GET", "DEL", "GET a b", "DEL a b", "KEYS a b", "START now", "COMMIT x", "ROLLBACK x", "PING x", "STATS x", "SAVE x", "HELP x", "QUIT x", "AUTH"]) {
      expect(parseCommand(line)).toMatchObject({ type: "INVALID", code: "BAD_REQUEST" });
    }
  });

  test("an unknown command is UNKNOWN_COMMAND naming it", () => {
    expect(parseCommand("FLUSHALL now")).toEqual({ type: "INVALID", code: "UNKNOWN_COMMAND", message: "Unknown command: FLUSHALL (HELP lists the commands)" });
  });

  test("a long unknown name is quoted back only in part (128 characters, as Redis quotes), never half a character", () => {
    expect(parseCommand("x".repeat(128))).toMatchObject({ message: `Unknown command: ${"x".repeat(128)} (HELP lists the commands)` });
    expect(parseCommand("x".repeat(100_000))).toMatchObject({
      code: "UNKNOWN_COMMAND",
      message: `Unknown command: ${"x".repeat(128)}... (100000 characters) (HELP lists the commands)`,
    });
    // Characters are counted as a reader counts them: an emoji (two UTF-16 code units) is one.
    const astral = "x".repeat(127) + "😀".repeat(10);
    expect(parseCommand(astral)).toMatchObject({ message: `Unknown command: ${"x".repeat(127)}😀... (137 characters) (HELP lists the commands)` });
    expect(parseCommand("😀".repeat(128))).toMatchObject({ message: `Unknown command: ${"😀".repeat(128)} (HELP lists the commands)` });
    expect(parseCommand("😀".repeat(129))).toMatchObject({ message: `Unknown command: ${"😀".repeat(128)}... (129 characters) (HELP lists the commands)` });
    expect(parseCommand("a".repeat(127) + "😀")).toMatchObject({ message: `Unknown command: ${"a".repeat(127)}😀 (HELP lists the commands)` });
  });

  test("KEYS with and without a prefix", () => {
    expect(parseCommand("KEYS")).toEqual({ type: "KEYS", prefix: "" });
    expect(parseCommand("KEYS user:")).toEqual({ type: "KEYS", prefix: "user:" });
  });

  test("AUTH takes the rest of the line, trailing blanks included (kept verbatim)", () => {
    expect(parseCommand("AUTH my secret")).toEqual({ type: "AUTH", password: "my secret" });
    expect(parseCommand("AUTH pw ")).toEqual({ type: "AUTH", password: "pw " });
    expect(parseCommand("AUTH pw\t")).toEqual({ type: "AUTH", password: "pw\t" });
  });
});

describe("parseCommand, JSON form", () => {
  test("PUT stores any JSON value, normalised", () => {
    expect(parseCommand('PUT {"key": "k 1", "value": {"n": 1.50, "l": [true, null]}}')).toMatchObject({
      type: "PUT",
      key: "k 1",
      value: '{"n":1.5,"l":[true,null]}',
    });
  });

  test("GET/DEL/KEYS/AUTH JSON forms", () => {
    expect(parseCommand('GET {"key":"{odd}"}')).toEqual({ type: "GET", key: "{odd}" });
    expect(parseCommand('DEL {"key":"a b"}')).toMatchObject({ type: "DEL", key: "a b" });
    expect(parseCommand('KEYS {"prefix":"a b"}')).toEqual({ type: "KEYS", prefix: "a b" });
    expect(parseCommand('AUTH {"password":"p w"}')).toEqual({ type: "AUTH", password: "p w" });
  });

  test("bad JSON, wrong types, missing value, unknown fields, empty key: BAD_REQUEST", () => {
    const cases: [string, string][] = [
      ['PUT {"key":"a"', "not valid JSON"],
      ['PUT {"key":"a"}', 'missing field "value"'],
      ['PUT {"key":"a","value":1,"ttl":5}', 'unknown field "ttl"'],
      ['PUT {"key":"","value":1}', "empty"],
      ['PUT {"key":7,"value":1}', "string"],
      ['GET {"key":"a","x":1}', 'unknown field "x"'],
      ['GET {"nokey":1}', "field"],
      ['GET {"key":"a"} trailing', "not valid JSON"],
      ["PUT {", "not valid JSON"],
    ];
    for (const [line, fragment] of cases) {
      const cmd = parseCommand(line);
      expect(cmd).toMatchObject({ type: "INVALID", code: "BAD_REQUEST" });
      if (cmd.type === "INVALID") expect(cmd.message).toContain(fragment);
    }
  });

  test("a value is stored as written or refused: numbers beyond the double range and nesting past the limit are BAD_REQUEST", () => {
    for (const value of ["1e400", "-1e400", "[1, 1e999]", '{"a":{"b":-2e308}}']) {
      expect(parseCommand(`PUT {"key":"n","value":${value}}`)).toMatchObject({ code: "BAD_REQUEST", message: expect.stringContaining("out of range") });
    }
    // A fraction or an exponent makes a double: small ones round to zero, others print as JavaScript does.
    expect(parseCommand('PUT {"key":"n","value":1e-400}')).toMatchObject({ type: "PUT", value: "0" });
    expect(parseCommand('PUT {"key":"n","value":1.7e308}')).toMatchObject({ type: "PUT", value: "1.7e+308" });
    // An integer is kept exactly, also beyond 2^53 (64-bit ids) and beyond the double range.
    expect(parseCommand('PUT {"key":"n","value":12345678901234567890}')).toMatchObject({ type: "PUT", value: "12345678901234567890" });
    expect(parseCommand('PUT {"key":"n","value":{"ids":[-9007199254740993]}}')).toMatchObject({ value: '{"ids":[-9007199254740993]}' });
    expect(parseCommand(`PUT {"key":"n","value":1${"0".repeat(400)}}`)).toMatchObject({ type: "PUT", value: `1${"0".repeat(400)}` });
    const nested = (depth: number) => "[".repeat(depth) + "]".repeat(depth);
    expect(parseCommand(`PUT {"key":"d","value":${nested(MAX_VALUE_DEPTH)}}`)).toMatchObject({ type: "PUT" });
    expect(parseCommand(`PUT {"key":"d","value":${nested(MAX_VALUE_DEPTH + 1)}}`)).toMatchObject({
      code: "BAD_REQUEST",
      message: expect.stringContaining(`deeper than ${MAX_VALUE_DEPTH} levels`),
    });
    expect(parseCommand(`PUT {"key":"d","value":${'{"a":'.repeat(MAX_VALUE_DEPTH + 1)}1${"}".repeat(MAX_VALUE_DEPTH + 1)}}`)).toMatchObject({ code: "BAD_REQUEST" });
    // So deep that JSON.parse itself overflows the stack: an answer, not an exception.
    expect(parseCommand(`PUT {"key":"d","value":${nested(200_000)}}`)).toMatchObject({ code: "BAD_REQUEST" });
  });

  test("JSON null is a value; a value may be missing only as an error", () => {
    expect(parseCommand('PUT {"key":"a","value":null}')).toMatchObject({ type: "PUT", value: "null" });
  });
});

describe("framing errors and the HTTP guard", () => {
  test("framing failures become TOO_LARGE and BAD_REQUEST commands", () => {
    expect(commandFromFrame(TOO_LARGE, 1024)).toMatchObject({ code: "TOO_LARGE", message: expect.stringContaining("1024") });
    expect(commandFromFrame(INVALID_UTF8, 1024)).toMatchObject({ code: "BAD_REQUEST", message: expect.stringContaining("UTF-8") });
  });

  test("an HTTP request frame becomes the command the server's guard closes on", () => {
    expect(commandFromFrame(HTTP_REQUEST, 1024)).toMatchObject({ type: "INVALID", crossProtocol: true });
  });

  test("the text parser knows nothing of HTTP: POST is an unknown command (the framer catches it first)", () => {
    expect(parseCommand("POST / HTTP/1.1")).toEqual({ type: "INVALID", code: "UNKNOWN_COMMAND", message: "Unknown command: POST (HELP lists the commands)" });
  });
});

describe("text helpers", () => {
  const samples = ["", "key:1", 'a"b', "a\\b", "tab\there", "nl\n", "\u0000\u001f", "é✓", "😀", "\ud800x", "x\udc00"];
  test("jsonString equals JSON.stringify for plain, escaped, control, unicode and lone-surrogate strings", async () => {
    const { jsonString } = await import("../lib/text.ts");
    for (const s of samples) expect(jsonString(s)).toBe(JSON.stringify(s));
  });
  test("detach returns an equal string", async () => {
    const { detach } = await import("../lib/text.ts");
    for (const s of samples) expect(detach(s)).toBe(s);
  });
});
