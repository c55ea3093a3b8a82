/**
 * Unit tests of lib/exact-json.ts: integers that a double cannot hold come
 * back exactly as written; everything else parses as JSON.parse does.
 */
import { describe, expect, test } from "bun:test";
import { isRawJsonText, parseJsonExact, parseJsonWithBigInts, stringifyJson } from "../lib/exact-json.ts";

const roundTrip = (text: string) => JSON.stringify(parseJsonExact(text));

describe("parseJsonExact", () => {
  test("integers beyond 2^53 are written back exactly, at any depth and sign", () => {
    expect(roundTrip("12345678901234567890")).toBe("12345678901234567890");
    expect(roundTrip("-9007199254740993")).toBe("-9007199254740993");
    expect(roundTrip('{"id":1234567890123456789,"list":[1,[99999999999999999999999]]}')).toBe(
      '{"id":1234567890123456789,"list":[1,[99999999999999999999999]]}',
    );
    // A double would print this one as 1e+21.
    expect(roundTrip("1000000000000000000000")).toBe("1000000000000000000000");
  });

  test("what a double holds exactly parses as JSON.parse does: safe integers, fractions, exponents, strings of digits", () => {
    for (const text of ["9007199254740991", "123456789012345", "1.5", "1e-400", "1.7e308", "-0", '"12345678901234567890"', "[0.12345678901234567890]"]) {
      expect(parseJsonExact(text)).toEqual(JSON.parse(text));
    }
    expect(parseJsonExact("12345678901234567.5")).toBe(12345678901234568);
    expect(parseJsonExact("1e400")).toBe(Infinity);
  });

  test("long digit runs inside strings (ids kept as strings, escapes) do not matter; one after a string does", () => {
    expect(parseJsonExact('["12345678901234567890", "\\"12345678901234567890"]')).toEqual(["12345678901234567890", '"12345678901234567890']);
    expect(JSON.stringify(parseJsonExact('{"id":"a\\"b","n":12345678901234567890}'))).toBe('{"id":"a\\"b","n":12345678901234567890}');
  });

  test("only kept integers are raw text; invalid JSON still throws", () => {
    const parsed = parseJsonExact("[12345678901234567890, 1]") as unknown[];
    expect(isRawJsonText(parsed[0])).toBe(true);
    expect(isRawJsonText(parsed[1])).toBe(false);
    expect(() => parseJsonExact("[12345678901234567890,")).toThrow(SyntaxError);
  });

  test("the client's reading: a bigint only where a number would round, and a bigint written back as its digits", () => {
    const parsed = parseJsonWithBigInts('{"id":12345678901234567890,"n":3,"exact":9007199254740992,"e20":100000000000000000000,"big":1' + "0".repeat(400) + "}");
    expect(parsed).toEqual({ id: 12345678901234567890n, n: 3, exact: 9007199254740992, e20: 1e20, big: 10n ** 400n });
    // 10^21 is a double, but one that prints as 1e+21: a bigint keeps the digits written back as they were.
    expect(parseJsonWithBigInts("[1000000000000000000000]")).toEqual([10n ** 21n]);
    expect(stringifyJson(parseJsonWithBigInts("[1000000000000000000000]"))).toBe("[1000000000000000000000]");
    expect(stringifyJson({ id: 12345678901234567890n, n: 3 })).toBe('{"id":12345678901234567890,"n":3}');
    expect(stringifyJson({ a: [1n] }, 2)).toBe('{\n  "a": [\n    1\n  ]\n}');
  });

  test("NaN and Infinity are refused when written, not turned into null", () => {
    for (const value of [NaN, Infinity, [1, -Infinity], { a: NaN }]) expect(() => stringifyJson(value)).toThrow(TypeError);
  });
});
