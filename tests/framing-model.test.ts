/**
 * LineFramer against a reference model of PROTOCOL §1 and §6 framing (split
 * on LF, CR before it dropped, blank lines of any length skipped, the HTTP
 * first-word rule first, the size limit counting every byte), for random
 * byte streams cut into random chunks, with pauses (takePartial) and the
 * caller reusing its chunk after retain(). The answers must not depend on
 * where the chunks were cut, and the framer must hold at most about one
 * limit of bytes. TXKV_FRAMER_RUNS sets the number of streams.
 */
import { expect, test } from "bun:test";
import { HTTP_REQUEST, INVALID_UTF8, LINE, LineFramer, TOO_LARGE, type Frame } from "../lib/framing.ts";

function rng(seed: number) {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
}

const LF = 10, CR = 13;
const isBlankByte = (c: number) => c === 32 || c === 9;

/** The model's HTTP rule: first word (after blanks) is POST, or begins with Host:, any case. */
function modelHttp(b: number[]): boolean {
  let i = 0;
  while (i < b.length && isBlankByte(b[i]!)) i++;
  let j = i;
  while (j < b.length && !isBlankByte(b[j]!)) j++;
  const word = String.fromCharCode(...b.slice(i, j));
  return word.toUpperCase() === "POST" || word.toLowerCase().startsWith("host:");
}

function modelClassify(seg: number[], limit: number): string | null {
  if (modelHttp(seg)) return "HTTP";
  if (seg.every(isBlankByte)) return null;
  if (seg.length > limit) return "TOO_LARGE";
  try {
    return "L:" + new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(new Uint8Array(seg));
  } catch {
    return "BAD_UTF8";
  }
}

type Event = { kind: "data"; bytes: number[] } | { kind: "pause" };

function model(events: Event[], limit: number): string[] {
  const out: string[] = [];
  let seg: number[] = [];
  const endSeg = () => {
    const s = seg.length > 0 && seg[seg.length - 1] === CR ? seg.slice(0, -1) : seg;
    const f = modelClassify(s, limit);
    if (f !== null) out.push(f);
    seg = [];
  };
  const sansCr = () => (seg.length > 0 && seg[seg.length - 1] === CR ? seg.length - 1 : seg.length);
  for (const ev of events) {
    if (ev.kind === "data") {
      for (const b of ev.bytes) {
        if (b === LF) endSeg();
        else seg.push(b);
      }
    } else {
      // A pause ends a pending request unless it is over the limit and already answered: not
      // blank, and its first word can no longer become POST or Host: (then it is being discarded).
      if (seg.length === 0) continue;
      const s = seg.slice(0, sansCr());
      let i = 0;
      while (i < seg.length && isBlankByte(seg[i]!)) i++;
      const rest = String.fromCharCode(...seg.slice(i)).toLowerCase();
      const undecided = "post".startsWith(rest) || rest === "post\r" || ("host:".startsWith(rest) && rest.length < 5);
      if (s.every(isBlankByte) || s.length <= limit || undecided) endSeg();
    }
  }
  if (seg.length > 0) endSeg(); // half-close
  const http = out.indexOf("HTTP");
  return http >= 0 ? out.slice(0, http + 1) : out;
}

function frameName(f: Frame): string {
  if (f === TOO_LARGE) return "TOO_LARGE";
  if (f === INVALID_UTF8) return "BAD_UTF8";
  if (f === HTTP_REQUEST) return "HTTP";
  return "L:" + f;
}

function real(events: Event[], limit: number, r: () => number): { frames: string[]; maxHeld: number } {
  const f = new LineFramer(limit);
  const out: string[] = [];
  let maxHeld = 0;
  const drain = () => {
    for (;;) {
      let fr: Frame | null;
      if (r() < 0.5) {
        const found = f.nextLine();
        fr = found === LINE ? f.lineText() : found;
      } else fr = f.next();
      if (fr === null) break;
      out.push(frameName(fr));
    }
  };
  for (const ev of events) {
    if (ev.kind === "data") {
      const chunk = new Uint8Array(ev.bytes);
      f.push(chunk);
      drain();
      f.retain();
      chunk.fill(0x41); // the caller reuses its chunk
      maxHeld = Math.max(maxHeld, f.bufferedBytes);
    } else if (f.hasPartial()) {
      const p = f.takePartial();
      f.retain();
      if (p !== null) out.push(frameName(p));
    }
  }
  const p = f.takePartial();
  if (p !== null) out.push(frameName(p));
  const http = out.indexOf("HTTP");
  return { frames: http >= 0 ? out.slice(0, http + 1) : out, maxHeld };
}

const ALPHABET = [
  ..." \t\r\n".split("").map((c) => c.charCodeAt(0)),
  ..." \t\r\n".split("").map((c) => c.charCodeAt(0)),
  ..."POSTpostHh:GETx ".split("").map((c) => c.charCodeAt(0)),
  0xc3, 0xa9, 0xff,
];
const WORDS = ["POST", "post ", "Host:", "HOST: x", "GET a", "PUT k v", "POSTX", "Hostx", "  ", "\t", "\r\n", "\n", "\r"];

function genEvents(r: () => number): Event[] {
  const bytes: number[] = [];
  const n = Math.floor(r() * 60);
  for (let i = 0; i < n; i++) {
    if (r() < 0.1) { const run = Math.floor(r() * 20); for (let k = 0; k < run; k++) bytes.push(r() < 0.5 ? 32 : 9); }
    else if (r() < 0.3) for (const c of WORDS[Math.floor(r() * WORDS.length)]!) bytes.push(c.charCodeAt(0));
    else bytes.push(ALPHABET[Math.floor(r() * ALPHABET.length)]!);
  }
  const events: Event[] = [];
  let i = 0;
  while (i < bytes.length) {
    const len = 1 + Math.floor(r() * (r() < 0.2 ? 30 : 8));
    events.push({ kind: "data", bytes: bytes.slice(i, i + len) });
    i += len;
    if (r() < 0.25) events.push({ kind: "pause" });
  }
  return events;
}

test("LineFramer gives the reference model's frames for random streams, however they are cut, and holds at most a limit", { timeout: 600000 }, () => {
  const N = Number(process.env.TXKV_FRAMER_RUNS ?? 20000);
  const failures = new Map<string, string>();
  let heldViolations = 0;
  for (let seed = 1; seed <= N; seed++) {
    const r = rng(seed * 2654435761);
    const limit = 4 + Math.floor(r() * 10);
    const events = genEvents(r);
    const want = model(events, limit);
    const got = real(events, limit, r);
    if (got.maxHeld > limit + 1) heldViolations++;
    if (JSON.stringify(want) !== JSON.stringify(got.frames)) {
      // bucket by first differing pair
      let k = 0;
      while (k < want.length && want[k] === got.frames[k]) k++;
      const bucket = `want ${want[k]} got ${got.frames[k]}`;
      const desc = JSON.stringify(events.map((e) => (e.kind === "pause" ? "|PAUSE|" : String.fromCharCode(...e.bytes)))) + ` limit=${limit}\n  want=${JSON.stringify(want)}\n  got =${JSON.stringify(got.frames)}`;
      const prev = failures.get(bucket);
      if (prev === undefined || prev.length > desc.length) failures.set(bucket, desc);
    }
  }
  for (const [bucket, desc] of failures) console.log(`--- ${bucket}\n${desc}`);
  expect(failures.size).toBe(0);
  expect(heldViolations).toBe(0);
});
