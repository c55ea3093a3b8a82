#!/usr/bin/env python3
"""
Crash-consistency torture test of txkv (black box).

  python3 tests/torture/crash-torture.py --seed 1 --iters 40 [--out DIR]
  python3 tests/torture/checker-cases.py     # the checker against hand-made histories

Manual, not part of `npm test` (a run of 40 iterations takes minutes).

Each iteration: start a server (fresh data dir, or the dir left by the previous
iteration's crash: a crash chain), read the state S0, run 8-32 clients doing
plain PUT/DEL/GET and (nested) transactions over a small key space with unique
values, SIGKILL the server at a random moment (sometimes while a SAVE or an
automatic compaction runs), copy the files as the kill left them, restart on
them, read every key (state R) and check R against the client log (see
check()). A failing iteration's files and log are saved to <out>/fail-<n>/
(--out, default <tmpdir>/txkv-torture).

Everything random is drawn from random.Random(f"{seed}/{iteration}/...");
timing (and so the exact interleaving) is not reproducible, the choices are.
"""
import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUN = os.path.join(ROOT, "node_modules", ".bin", "bun")
INDEX = os.path.join(ROOT, "index.ts")
CRASH_DIR = os.path.join(tempfile.gettempdir(), "txkv-torture")
INF = math.inf
DEL = None  # effect of a delete

now = time.monotonic

TRICKY_KEYS = ["k sp 1", 'kq"2', "k\u00fc3", "k\u2028 4", "{k5"]
TRICKY_SUFFIXES = ['"q\\b\nl', "\u2028\u00e9\U0001F600", "\ud800lone", "\u0000nul\t", " trailing "]


def simple(k):
    return re.fullmatch(r"[A-Za-z0-9_.\-]+", k) is not None


def vid(v):
    """Identity of a stored value (values are unique by construction)."""
    return v if isinstance(v, str) else "J:" + json.dumps(v, sort_keys=True)


def jdump(obj):
    return json.dumps(obj, ensure_ascii=True)


def put_line(k, v, rng):
    if simple(k) and isinstance(v, str) and simple(v.replace("-", "")) and rng.random() < 0.85:
        return f"PUT {k} {v}"
    return "PUT " + jdump({"key": k, "value": v})


def key_line(cmd, k, rng):
    if simple(k) and rng.random() < 0.9:
        return f"{cmd} {k}"
    return f"{cmd} " + jdump({"key": k})


def parse_line(line):
    """(command, key, value) of a request line this harness sent."""
    cmd, _, rest = line.partition(" ")
    if not rest:
        return cmd, None, None
    if rest.startswith("{"):
        obj = json.loads(rest)
        return cmd, obj["key"], obj.get("value")
    if cmd == "PUT":
        k, _, v = rest.partition(" ")
        return cmd, k, v
    return cmd, rest, None


# ----------------------------------------------------------------------------------------------
# server process


class Server:
    def __init__(self, data_dir, args, tag, logdir):
        self.data_dir = data_dir
        self.args = args
        self.tag = tag
        self.logdir = logdir
        self.proc = None
        self.port = None
        self.stdout_lines = []
        self.stderr_path = os.path.join(logdir, f"server-{tag}.stderr")

    async def start(self, timeout=20.0):
        cmd = [BUN, "run", INDEX, "--port", "0", "--data", os.path.join(self.data_dir, "data.json"), *self.args]
        self.cmd = cmd
        self.stderr_file = open(self.stderr_path, "wb")
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=self.stderr_file, stdin=asyncio.subprocess.DEVNULL
        )
        deadline = now() + timeout
        while True:
            left = deadline - now()
            if left <= 0:
                raise StartFailure(f"no 'listening on' within {timeout}s")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), left)
            except asyncio.TimeoutError:
                raise StartFailure(f"no 'listening on' within {timeout}s")
            if not line:
                rc = await self.proc.wait()
                raise StartFailure(f"server exited with status {rc} before listening")
            text = line.decode("utf-8", "replace")
            self.stdout_lines.append(text)
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if m:
                self.port = int(m.group(1))
                break
        self.drain_task = asyncio.ensure_future(self._drain())
        return self

    async def _drain(self):
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    return
                self.stdout_lines.append(line.decode("utf-8", "replace"))
        except Exception:
            return

    def kill9(self):
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def wait(self):
        rc = await self.proc.wait()
        try:
            await asyncio.wait_for(self.drain_task, 5)
        except Exception:
            pass
        self.stderr_file.close()
        return rc

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class StartFailure(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# a line client


class Conn:
    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @staticmethod
    async def open(port):
        r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        return Conn(r, w)

    async def request(self, line):
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()
        raw = await self.reader.readline()
        if not raw:
            raise ConnectionError("closed")
        return json.loads(raw)

    async def pipeline(self, lines):
        self.writer.write(("\n".join(lines) + "\n").encode())
        await self.writer.drain()
        out = []
        for _ in lines:
            raw = await self.reader.readline()
            if not raw:
                raise ConnectionError("closed")
            out.append(json.loads(raw))
        return out

    def close(self):
        try:
            self.writer.close()
        except Exception:
            pass


async def read_all(port):
    """The whole state: KEYS, then GET of every key (pipelined)."""
    c = await Conn.open(port)
    try:
        rep = await c.request("KEYS")
        if rep.get("status") != "Ok":
            raise RuntimeError(f"KEYS answered {rep}")
        keys = rep["result"]
        state = {}
        for i in range(0, len(keys), 2000):
            chunk = keys[i : i + 2000]
            reps = await c.pipeline(["GET " + jdump({"key": k}) for k in chunk])
            for k, r in zip(chunk, reps):
                if r.get("status") != "Ok":
                    raise RuntimeError(f"GET {k} after KEYS listed it answered {r}")
                state[k] = r["result"]["value"]
        return state
    finally:
        c.close()


# ----------------------------------------------------------------------------------------------
# workload


class Log:
    """Per client: list of [line, t_send, reply or None, t_reply or None]."""

    def __init__(self):
        self.entries = defaultdict(list)


async def client_task(cid, port, it, rng, keys, log, stop, counters):
    try:
        conn = await Conn.open(port)
    except Exception:
        return
    entries = log.entries[cid]
    n = 0

    def val():
        nonlocal n
        n += 1
        base = f"v{it}.{cid}.{n}-"
        x = rng.random()
        if x < 0.15:
            return base + rng.choice(TRICKY_SUFFIXES)
        if x < 0.22:
            return {"id": base, "n": [1, 2.5, {"x": None, "t": True}], "s": rng.choice(TRICKY_SUFFIXES)}
        return base + "x" * rng.choice((0, 0, 5, 40, 100))

    async def req(line):
        e = [line, now(), None, None]
        entries.append(e)
        conn.writer.write(line.encode() + b"\n")
        await conn.writer.drain()
        raw = await conn.reader.readline()
        if not raw:
            raise ConnectionError("closed")
        e[3] = now()
        rep = json.loads(raw)
        e[2] = rep
        return rep

    try:
        while not stop.is_set():
            r = rng.random()
            if r < 0.30:
                await req(put_line(rng.choice(keys), val(), rng))
            elif r < 0.40:
                await req(key_line("DEL", rng.choice(keys), rng))
            elif r < 0.45:
                await req(key_line("GET", rng.choice(keys), rng))
            else:
                # a transaction, retried from the top on CONFLICT
                for attempt in range(50):
                    if stop.is_set():
                        return
                    rep = await req("START")
                    assert rep["status"] == "Ok", rep
                    depth = 1
                    bad = False

                    async def body(nops):
                        nonlocal bad
                        for _ in range(nops):
                            x = rng.random()
                            k = rng.choice(keys)
                            if x < 0.35:
                                rep = await req(key_line("GET", k, rng))
                            elif x < 0.85:
                                rep = await req(put_line(k, val(), rng))
                            else:
                                rep = await req(key_line("DEL", k, rng))
                            if rep["status"] != "Ok" and rep.get("code") != "NOT_FOUND":
                                bad = True
                                counters["unexpected"] += 1
                                return

                    await body(rng.randint(1, 4))
                    if not bad and rng.random() < 0.3:
                        await req("START")
                        depth += 1
                        await body(rng.randint(1, 3))
                        if bad:
                            pass
                        elif rng.random() < 0.5:
                            rep = await req("ROLLBACK")
                            depth -= 1
                        else:
                            rep = await req("COMMIT")
                            depth -= 1
                        if not bad:
                            await body(rng.randint(0, 2))
                    if bad:
                        while depth > 0:
                            await req("ROLLBACK")
                            depth -= 1
                        break
                    if rng.random() < 0.04:
                        await req("ROLLBACK")
                        counters["rolled_back"] += 1
                        break
                    rep = await req("COMMIT")
                    if rep["status"] == "Ok":
                        break
                    if rep.get("code") == "CONFLICT":
                        counters["conflicts"] += 1
                        continue
                    counters["unexpected"] += 1
                    break
    except (ConnectionError, OSError, json.JSONDecodeError, asyncio.IncompleteReadError):
        return
    finally:
        conn.close()


async def pipeliner_task(cid, port, it, rng, log, stop):
    """Sends batches of large plain PUTs in one write each (big journal writes, so a kill may tear one)."""
    try:
        conn = await Conn.open(port)
    except Exception:
        return
    entries = log.entries[cid]
    n = 0
    try:
        while not stop.is_set():
            batch = []
            for _ in range(rng.randint(50, 400)):
                n += 1
                batch.append(f"PUT p{rng.randrange(200):03d} v{it}.{cid}.{n}-" + "z" * rng.randint(300, 900))
            t = now()
            es = [[line, t, None, None] for line in batch]
            entries.extend(es)
            conn.writer.write(("\n".join(batch) + "\n").encode())
            await conn.writer.drain()
            for e in es:
                raw = await conn.reader.readline()
                if not raw:
                    raise ConnectionError("closed")
                e[3] = now()
                e[2] = json.loads(raw)
    except (ConnectionError, OSError, json.JSONDecodeError, asyncio.IncompleteReadError):
        return
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------
# turning the log into commits


class Commit:
    __slots__ = ("id", "cid", "desc", "effects", "lo", "hi", "acked", "reads", "definite", "hi_reason")

    def __init__(self, id, cid, desc, effects, lo, hi, acked, reads):
        self.id = id
        self.cid = cid
        self.desc = desc
        self.effects = effects  # key -> value or DEL
        self.lo = lo
        self.hi = hi
        self.acked = acked
        self.reads = reads  # strong reads at the commit point: [(key, value or DEL)]
        self.definite = acked  # known to have committed
        self.hi_reason = "its Ok reply" if acked else None


plain_gets = []  # (key, value, t_send, t_reply, who) of plain GETs answered Ok


def build_model(log, s0):
    """Returns commits (index 0 = INIT, the state before the workload), read observations, problems."""
    commits = [Commit(0, -1, "INIT (state read before the workload)", dict(s0), -INF, -INF, True, [])]
    commits[0].definite = True
    never = {}  # value -> why it never committed
    reads = []  # (value, t_reply, who) : somebody saw value in the store at t_reply
    plain_gets.clear()
    problems = []

    def add(cid, desc, effects, lo, hi, acked, rds):
        c = Commit(len(commits), cid, desc, effects, lo, hi, acked, rds)
        commits.append(c)
        return c

    for cid, entries in log.entries.items():
        levels = None  # list of {"w": {k: v}, "r": [(k, v)], "vals": [...]}, innermost last
        txn_start = None
        for idx, (line, ts, rep, tr) in enumerate(entries):
            who = f"client {cid} #{idx} {line[:60]!r}"
            cmd, pk, pv = parse_line(line)
            ok = rep is not None and rep.get("status") == "Ok"
            code = rep.get("code") if rep else None
            if levels is None:
                if cmd == "PUT":
                    k, v = pk, pv
                    if rep is None:
                        add(cid, who, {k: v}, ts, INF, False, [])
                    elif ok:
                        add(cid, who, {k: v}, ts, tr, True, [])
                    else:
                        never[vid(v)] = f"{who} answered {rep}"
                elif cmd == "DEL":
                    k = pk
                    if rep is None:
                        add(cid, who, {k: DEL}, ts, INF, False, [])
                    elif ok:
                        v = rep["result"]["value"]
                        reads.append((v, tr, who))
                        add(cid, who, {k: DEL}, ts, tr, True, [(k, v)])
                elif cmd == "GET":
                    if ok:
                        reads.append((rep["result"]["value"], tr, who))
                        plain_gets.append((k_ := pk, rep["result"]["value"], ts, tr, who))
                elif cmd == "START":
                    levels = [{"w": {}, "r": [], "vals": []}]
                    txn_start = ts
                continue
            # inside a transaction
            def own(k):
                for lv in reversed(levels):
                    if k in lv["w"]:
                        return True, lv["w"][k]
                return False, None

            if cmd == "START":
                levels.append({"w": {}, "r": [], "vals": []})
            elif cmd in ("GET", "DEL"):
                k = pk
                has, ov = own(k)
                if rep is None:
                    continue
                got = rep["result"]["value"] if ok else DEL
                if not ok and code != "NOT_FOUND":
                    continue
                if has:
                    if (got is DEL) != (ov is DEL) or (got is not DEL and vid(got) != vid(ov)):
                        problems.append(("own-read", f"{who}: read {got!r}, its own write was {ov!r}"))
                else:
                    levels[-1]["r"].append((k, got))
                    if got is not DEL:
                        reads.append((got, tr, who))
                if cmd == "DEL" and ok:
                    levels[-1]["w"][k] = DEL
            elif cmd == "PUT":
                if ok:
                    levels[-1]["w"][pk] = pv
                    levels[-1]["vals"].append(vid(pv))
                elif rep is not None:
                    never[vid(pv)] = f"{who} answered {rep}"
            elif cmd == "ROLLBACK":
                lv = levels.pop()
                for v in lv["vals"]:
                    never[v] = f"{who}: written in a level that was rolled back"
                if not levels:
                    levels = None
            elif cmd == "COMMIT":
                if len(levels) > 1 and (rep is None or ok):
                    lv = levels.pop()
                    levels[-1]["w"].update(lv["w"])
                    levels[-1]["r"].extend(lv["r"])
                    levels[-1]["vals"].extend(lv["vals"])
                    continue
                lv = levels[0]
                eff = dict(lv["w"])
                final_vals = set(vid(v) for v in eff.values() if v is not DEL)
                for v in lv["vals"]:
                    if v not in final_vals:
                        never[v] = f"{who}: overwritten inside its own transaction"
                if rep is None:
                    add(cid, who + f" (txn started {txn_start:.3f})", eff, ts, INF, False, list(lv["r"]))
                elif ok:
                    add(cid, who + f" (txn started {txn_start:.3f})", eff, ts, tr, True, list(lv["r"]))
                else:
                    for v in final_vals:
                        never[v] = f"{who} answered {code}"
                levels = None
        if levels is not None:
            # still open at the kill: nothing of it may be applied
            for lv in levels:
                for v in lv["vals"]:
                    never.setdefault(v, f"client {cid}: transaction still open at the kill")
    return commits, never, reads, problems


# ----------------------------------------------------------------------------------------------
# the check


def check(commits, never, reads, problems, R, mode, kill_t, window):
    """
    Sound check that R is the state after some prefix of the commits in commit order.

    Facts used (all certain for a correct server):
      * each commit c happened at one point of time inside (lo, hi): lo = when its
        request (PUT/DEL, or the outermost COMMIT) was sent, hi = when its reply
        arrived, or when any client first read a value it wrote (INF if neither);
      * commit order is that point order, so hi(a) < lo(b) => a before b;
      * a committed transaction (or plain DEL) that read k=v (from the store,
        not its own write) had, at its commit point, w(v) as the last write to k:
        so any writer c of k known to come after w(v) comes after it too (edge T -> c);
      * values are unique, so a recovered value names its writer w, which must be
        in the prefix and be the last writer of k in it: any writer of k known to
        follow w is outside the prefix.
    Present = writers of recovered values + mandatory acknowledged commits, closed
    downwards; Absent = commits that follow a recovered value's writer on its key,
    closed upwards. Present and Absent must not meet; a key missing from R whose
    present writer put a value needs some possible later DEL.
    """
    out = []
    out.extend(problems)
    by_val = {}
    for c in commits[1:]:
        for k, v in c.effects.items():
            if v is not DEL:
                by_val[vid(v)] = c

    def writer(k, v):
        if vid(v) in by_val:
            return by_val[vid(v)]
        init = commits[0].effects
        if k in init and vid(init[k]) == vid(v):
            return commits[0]
        return None

    def writer_any(v):
        return by_val.get(vid(v))

    # reads tighten hi of writers (a value seen at t was committed before t)
    init_vals = set(vid(v) for v in commits[0].effects.values())
    for v, t, who in reads:
        w = writer_any(v)
        if w is None:
            if vid(v) in init_vals:
                continue
            if vid(v) in never:
                out.append(("dirty-read", f"{who} read {v!r}, which never committed: {never[vid(v)]}"))
            else:
                out.append(("phantom-read", f"{who} read {v!r}, which nobody wrote"))
            continue
        if t < w.hi:
            w.hi = t
            w.hi_reason = f"read by {who}"
            w.definite = True

    writers_of = defaultdict(list)
    for c in commits:
        for k in c.effects:
            writers_of[k].append(c)

    # explicit order edges a -> b (a before b): rw anti-dependencies of definite readers
    out_edges = defaultdict(list)
    in_edges = defaultdict(list)
    read_then_wrote = defaultdict(list)  # writer of read value -> [(T, key)] where T also wrote key
    for T in commits:
        if not T.definite or T.id == 0:
            continue
        for k, v in T.reads:
            if v is DEL:
                continue
            w = writer(k, v)
            if w is None:
                continue
            if k in T.effects:
                read_then_wrote[w.id].append((T, k))
            for c in writers_of[k]:
                if c is T or c is w:
                    continue
                # only writers concurrent with T need an edge: one sent after T's reply follows T by time anyway
                if w.hi < c.lo and c.lo <= T.hi:
                    out_edges[T.id].append((c, f"{T.desc} read {k}={str(v)[:24]!r} from a write that precedes this one"))
                    in_edges[c.id].append((T, ""))

    # stale reads (isolation, independent of the crash): a committed transaction (or plain DEL) read k=v
    # from w although a writer w2 of k committed entirely after w and before the COMMIT was sent;
    # a plain GET returned v although such a w2 was acknowledged before the GET was sent.
    for T in commits[1:]:
        if not T.definite:
            continue
        for k, v in T.reads:
            if v is DEL:
                continue
            w = writer(k, v)
            if w is None:
                continue
            for c in writers_of[k]:
                if c is not T and c is not w and w.hi < c.lo and c.hi < T.lo:
                    out.append(("stale-read", f"{T.desc} committed Ok having read {k}={str(v)[:30]!r} (from {w.desc}), but {c.desc} "
                                              f"wrote {k} after that write (sent {c.lo:.4f} > {w.hi:.4f}) and was acknowledged ({c.hi:.4f}) before the COMMIT was sent ({T.lo:.4f})"))
                    break
    for k, v, ts, tr, who in plain_gets:
        w = writer(k, v)
        if w is None:
            continue
        for c in writers_of[k]:
            if c is not w and w.hi < c.lo and c.hi < ts:
                out.append(("stale-read", f"{who} returned {str(v)[:30]!r} (from {w.desc}) at {tr:.4f}, but {c.desc} overwrote it, acknowledged at {c.hi:.4f} before the GET was sent ({ts:.4f})"))
                break

    # recovered values
    present = {}  # id -> reason
    absent = {}
    for k, v in R.items():
        w = writer(k, v)
        if w is None:
            if vid(v) in never:
                out.append(("never-committed-value", f"recovered {k}={v!r}, which never committed: {never[vid(v)]}"))
            else:
                out.append(("phantom-value", f"recovered {k}={v!r}, which nobody wrote"))
            continue
        if k not in w.effects or w.effects[k] is DEL or vid(w.effects[k]) != vid(v):
            out.append(("bad-value", f"recovered {k}={v!r} but its writer's final value for {k} is {w.effects.get(k)!r}"))
        if w.id != 0:
            present.setdefault(w.id, f"its value {k}={str(v)[:30]!r} was recovered")
        for c in writers_of[k]:
            if c is w:
                continue
            if w.hi < c.lo:
                absent.setdefault(c.id, f"it writes {k}, after the recovered value's writer {w.desc} (reply {w.hi:.4f} < sent {c.lo:.4f})")
        for T, kk in read_then_wrote[w.id]:
            if kk == k and T is not w:
                absent.setdefault(T.id, f"it read {k}={str(v)[:24]!r} and then wrote {k}, but {k}={str(v)[:24]!r} was recovered")
    mandatory = 0
    for c in commits[1:]:
        if not c.acked:
            continue
        if mode == "always" or c.hi < kill_t - window:
            mandatory += 1
            present.setdefault(c.id, f"acknowledged Ok at {c.hi:.4f} (kill at {kill_t:.4f}, mode {mode})")

    # closures
    by_hi = sorted(commits[1:], key=lambda c: c.hi)
    by_lo = sorted(commits[1:], key=lambda c: -c.lo)
    changed = True
    while changed:
        changed = False
        # present: downwards
        if present:
            mx_id = max(present, key=lambda i: commits[i].lo)
            mx = commits[mx_id].lo
            for c in by_hi:
                if c.hi >= mx:
                    break
                if c.id not in present:
                    present[c.id] = f"acknowledged ({c.hi_reason}, {c.hi:.4f}) before {commits[mx_id].desc} was sent ({mx:.4f}), which is present"
                    changed = True
            for i in list(present):
                for a, _ in in_edges[i]:
                    if a.id not in present:
                        present[a.id] = f"it must precede {commits[i].desc} (read-from/anti-dependency), which is present"
                        changed = True
        if absent:
            mn_id = min(absent, key=lambda i: commits[i].hi)
            mn = commits[mn_id].hi
            for c in by_lo:
                if c.lo <= mn:
                    break
                if c.id not in absent:
                    absent[c.id] = f"sent ({c.lo:.4f}) after {commits[mn_id].desc} was acknowledged ({mn:.4f}), which is absent"
                    changed = True
            for i in list(absent):
                for b, why in out_edges[i]:
                    if b.id not in absent:
                        absent[b.id] = f"it must follow {commits[i].desc}, which is absent ({why})"
                        changed = True

    def chain(d, i, depth=0):
        s = f"      {commits[i].desc}: {d[i]}"
        return s

    both = [i for i in present if i in absent]
    for i in both[:5]:
        c = commits[i]
        kind = "lost-acked-write" if (c.acked and ("acknowledged Ok" in present[i])) else "not-a-prefix"
        out.append((kind, f"{c.desc} effects={ {k: (str(v)[:20] if v else 'DEL') for k, v in c.effects.items()} }\n"
                          f"    must be PRESENT because: {present[i]}\n    must be ABSENT because: {absent[i]}"))
    if len(both) > 5:
        out.append(("not-a-prefix", f"... and {len(both) - 5} more commits both present and absent"))

    # keys missing from R: a present commit's put must be deleted by some possible later DEL
    for k, ws in writers_of.items():
        if k in R:
            continue
        for c in ws:
            if c.id not in present and c.id != 0:
                continue
            if c.effects[k] is DEL:
                continue
            later_del = [d for d in ws if d is not c and d.effects[k] is DEL and d.id not in absent and not (d.hi < c.lo)]
            if not later_del:
                out.append(("missing-key", f"{k} is missing from the recovered state, but {c.desc} put it and must be present "
                                           f"({present.get(c.id, 'INIT')}), and no possible later DEL of {k} exists"))
                break
    stats = {
        "commits": len(commits) - 1,
        "acked": sum(1 for c in commits[1:] if c.acked),
        "inflight": sum(1 for c in commits[1:] if not c.acked),
        "present": len(present),
        "absent": len(absent),
        "mandatory": mandatory,
        "rw_edges": sum(len(v) for v in out_edges.values()),
        # acknowledged commits proven lost (absent), and how long before the kill they were acknowledged
        "lost_acked": sum(1 for i in absent if commits[i].acked),
        "max_lost_age": max([kill_t - commits[i].hi for i in absent if commits[i].acked] or [0]),
    }
    return out, stats


# ----------------------------------------------------------------------------------------------
# one iteration


def selftest(log, s0, R, mode, kill_t, window, rng, totals):
    """Mutations of the recovered state that no correct server could produce must be flagged."""
    for trial in range(4):
        commits, never, reads, problems = build_model(log, s0)
        by_key = defaultdict(list)
        for c in commits:
            for k, v in c.effects.items():
                by_key[k].append(c)
        cand = [k for k in R if k in by_key]
        if not cand:
            return
        k = rng.choice(cand)
        w = next((c for c in commits if k in c.effects and c.effects[k] is not DEL and vid(c.effects[k]) == vid(R[k])), None)
        if w is None or w.id == 0:
            continue
        older = [c for c in by_key[k] if c.hi < w.lo and c.effects[k] is not DEL and c.id != 0 and c.acked]
        kind = rng.choice(["older", "drop"])
        M = dict(R)
        if kind == "older":
            if not older:
                continue
            M[k] = rng.choice(older).effects[k]
        else:
            # a key whose last present write was a put, dropped as if deleted
            if any(c.effects[k] is DEL for c in by_key[k] if c.lo > w.lo):
                continue
            del M[k]
        fails, _ = check(commits, never, reads, problems, M, mode, kill_t, window)
        totals[f"selftest_{kind}_{mode}"] += 1
        if fails:
            totals[f"selftest_{kind}_{mode}_detected"] += 1


def listing(d):
    out = []
    for name in sorted(os.listdir(d)):
        try:
            out.append((name, os.path.getsize(os.path.join(d, name))))
        except OSError:
            pass
    return out


async def iteration(seed, it, work, prev, totals, args):
    rng = random.Random(f"{seed}/{it}/config")
    mode = args.mode or rng.choice(["always", "everysec", "no"])
    cfg = {"seed": seed, "iteration": it, "mode": mode}
    srv_args = ["--fsync", mode]
    if mode == "everysec" and rng.random() < 0.3:
        cfg["interval_ms"] = rng.choice([50, 200])
        srv_args += ["--fsync-interval-ms", str(cfg["interval_ms"])]
    interval = cfg.get("interval_ms", 1000) / 1000.0
    if rng.random() < 0.6:
        cfg["compact_min_bytes"] = rng.choice([1, 256, 2048, 16384])
        cfg["compact_percent"] = rng.choice([5, 25, 100, 200])
        srv_args += ["--compact-min-bytes", str(cfg["compact_min_bytes"]), "--compact-percent", str(cfg["compact_percent"])]
    chain = prev is not None and rng.random() < args.chain_prob
    if chain:
        data_dir = prev["dir"]
        cfg["chain_from"] = prev["it"]
        cfg["chain_len"] = prev["chain_len"] + 1
    else:
        data_dir = os.path.join(work, f"data-{it}")
        os.makedirs(data_dir)
        cfg["chain_len"] = 1
    itdir = os.path.join(work, f"it-{it}")
    os.makedirs(itdir)
    nclients = rng.randint(8, 32)
    nkeys = rng.randint(20, 50)
    keys = [f"k{i:02d}" for i in range(nkeys)]
    if rng.random() < 0.5:
        keys += TRICKY_KEYS
    bulk = 0
    if not chain and rng.random() < args.bulk_prob:
        bulk = rng.choice([3000, 20000, 60000])
    r = rng.random()
    kill_kind = "save" if r < 0.15 else ("compaction" if r < 0.35 and "compact_min_bytes" in cfg else ("term" if r > 0.92 else "random"))
    if args.kill_kind:
        kill_kind = args.kill_kind
    kill_delay = rng.uniform(0.15, 3.0)
    save_delay_ms = rng.uniform(0, 12 if bulk == 0 else 60)
    npipeliners = rng.choice([0, 0, 1, 2])
    startup_kill = rng.random() < 0.2
    startup_kill_delay = rng.uniform(0.0, 0.35)
    cfg.update(nclients=nclients, nkeys=nkeys, bulk=bulk, kill_kind=kill_kind, kill_delay=round(kill_delay, 3), args=srv_args,
               pipeliners=npipeliners, startup_kill=round(startup_kill_delay, 3) if startup_kill else None)

    failures = []
    log = Log()
    servers = []
    result = {"it": it, "dir": data_dir, "chain_len": cfg["chain_len"], "cfg": cfg, "failures": failures}
    try:
        s = Server(data_dir, srv_args, "workload", itdir)
        servers.append(s)
        try:
            await s.start()
        except StartFailure as e:
            failures.append(("restart-refused", f"starting on the data left by iteration {prev and prev['it']}: {e}\n{s.stderr_text()[-2000:]}"))
            return result
        s0 = await read_all(s.port)
        if chain and prev.get("R") is not None and s0 != prev["R"]:
            diff = sorted(set(k for k in set(s0) | set(prev["R"]) if s0.get(k) != prev["R"].get(k)))[:10]
            failures.append(("chain-mismatch", f"state on restart differs from the state verified in iteration {prev['it']} (idle kill in between): keys {diff}"))
        if bulk:
            c = await Conn.open(s.port)
            pad = "y" * 40
            for i in range(0, bulk, 2000):
                lines = [f"PUT b{j:06d} b{it}.{j}-{pad}" for j in range(i, min(bulk, i + 2000))]
                reps = await c.pipeline(lines)
                assert all(x["status"] == "Ok" for x in reps)
            c.close()
            s0 = await read_all(s.port)
        # workload
        stop = asyncio.Event()
        counters = defaultdict(int)
        tasks = [
            asyncio.ensure_future(client_task(cid, s.port, it, random.Random(f"{seed}/{it}/client{cid}"), keys, log, stop, counters))
            for cid in range(nclients)
        ]
        tasks += [
            asyncio.ensure_future(pipeliner_task(1000 + j, s.port, it, random.Random(f"{seed}/{it}/pipeliner{j}"), log, stop))
            for j in range(npipeliners)
        ]
        mon = await Conn.open(s.port)
        compactions_seen = 0
        compacting_at_kill = False
        save_state = None
        t_start = now()
        kill_at = t_start + kill_delay
        save_sent = None
        save_task = None
        last_stats = None
        while True:
            t = now()
            if kill_kind == "save" and save_sent is None and t >= kill_at:
                sc = await Conn.open(s.port)
                save_sent = now()
                save_task = asyncio.ensure_future(sc.request("SAVE"))
                await asyncio.sleep(save_delay_ms / 1000.0)
                break
            if kill_kind != "save" and t >= kill_at:
                break
            try:
                st = await mon.request("STATS")
                p = st["result"]["persistence"]
                last_stats = p
                if p.get("compacting"):
                    compacting_at_kill = True
                    if kill_kind == "compaction":
                        await asyncio.sleep(rng.uniform(0, 0.004))
                        break
                else:
                    compacting_at_kill = False
            except Exception:
                break
            await asyncio.sleep(0.002 if kill_kind == "compaction" else 0.02)
        kill_t = now()
        if kill_kind == "term":
            s.proc.send_signal(signal.SIGTERM)
            try:
                rc = await asyncio.wait_for(s.wait(), 20)
            except asyncio.TimeoutError:
                failures.append(("sigterm-hang", "server did not exit within 20 s of SIGTERM"))
                s.kill9()
                rc = await s.wait()
            if rc != 0:
                failures.append(("sigterm-status", f"SIGTERM exit status {rc}"))
            totals["sigterm_stops"] += 1
        else:
            s.kill9()
            rc = await s.wait()
        stop.set()
        await asyncio.wait(tasks, timeout=10)
        mon.close()
        if save_task is not None:
            try:
                rep = await asyncio.wait_for(save_task, 1)
                save_state = f"SAVE answered {rep.get('status')} before the kill"
            except Exception:
                save_state = "SAVE had no reply at the kill"
        # files as the kill left them
        after_kill = os.path.join(itdir, "data-after-kill")
        shutil.copytree(data_dir, after_kill)
        files = listing(data_dir)
        tmp_left = any(n.endswith(".tmp") for n, _ in files)
        gens = [n for n, _ in files if ".journal." in n]
        mid_compaction = tmp_left or len(gens) > 1
        stderr = s.stderr_text()
        ncompactions = stderr.count("snapshot written")
        # a crash during recovery itself: kill the restarted server at a random moment of its start-up
        if startup_kill:
            s1 = Server(data_dir, srv_args, "startup-killed", itdir)
            servers.append(s1)
            cmd = [BUN, "run", INDEX, "--port", "0", "--data", os.path.join(data_dir, "data.json"), *srv_args]
            s1.stderr_file = open(s1.stderr_path, "wb")
            s1.proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL, stderr=s1.stderr_file)
            s1.drain_task = asyncio.ensure_future(asyncio.sleep(0))
            await asyncio.sleep(startup_kill_delay)
            s1.kill9()
            await s1.wait()
            totals["startup_kills"] += 1
            if "torn" in s1.stderr_text():
                totals["torn_tails"] += 1
            if "ready to accept connections" in s1.stderr_text():
                totals["startup_kills_after_listening"] += 1
        # restart and read back
        s2 = Server(data_dir, srv_args, "recovery", itdir)
        servers.append(s2)
        try:
            await s2.start()
        except StartFailure as e:
            failures.append(("restart-refused", f"{e}\n{s2.stderr_text()[-3000:]}"))
            result["R"] = None
            return result
        R = await read_all(s2.port)
        result["R"] = R
        if "torn" in s2.stderr_text():
            totals["torn_tails"] += 1
        # check
        commits, never, reads, problems = build_model(log, s0)
        # after SIGTERM nothing acknowledged may be lost, in any mode (PROTOCOL 5)
        fails, stats = check(commits, never, reads, problems, R, "always" if kill_kind == "term" else mode, kill_t, interval + 0.5)
        failures.extend(fails)
        if args.selftest and not fails:
            selftest(log, s0, R, mode, kill_t, interval + 0.5, random.Random(f"{seed}/{it}/selftest"), totals)
        # SIGKILL the idle recovery server too (the next iteration of a chain restarts on it)
        s2.kill9()
        await s2.wait()
        result.update(stats=stats)
        if kill_kind != "term":
            totals["crashes"] += 1
            totals[f"crashes_{mode}"] += 1
        totals["commits_checked"] += stats["commits"]
        totals["acked_commits"] += stats["acked"]
        totals["inflight_commits"] += stats["inflight"]
        totals["mandatory_checked"] += stats["mandatory"]
        totals["rw_edges"] += stats["rw_edges"]
        totals["compactions_completed"] += ncompactions
        totals["conflicts"] += counters["conflicts"]
        totals["unexpected_replies"] += counters["unexpected"]
        totals["requests"] += sum(len(v) for v in log.entries.values())
        if mid_compaction:
            totals["kill_mid_compaction_files"] += 1
        if compacting_at_kill:
            totals["kill_while_stats_said_compacting"] += 1
        if tmp_left:
            totals["kill_left_tmp"] += 1
        if kill_kind == "save":
            totals["save_kills"] += 1
            if save_state and "no reply" in save_state:
                totals["save_kills_during_save"] += 1
        if chain:
            totals["chained"] += 1
        if bulk:
            totals["bulk_iterations"] += 1
        if mode != "always":
            totals["lost_acked_" + mode] += stats["lost_acked"]
            totals["max_lost_age_" + mode] = max(totals["max_lost_age_" + mode], stats["max_lost_age"])
        print(
            f"it {it:3d} {mode:8s} chain={cfg['chain_len']} clients={nclients:2d} keys={nkeys} bulk={bulk:5d} kill={kill_kind:10s}"
            f" t={kill_t - t_start:5.2f}s req={sum(len(v) for v in log.entries.values()):6d} commits={stats['commits']:5d}"
            f" acked={stats['acked']:5d} present={stats['present']:5d} absent={stats['absent']:4d} rw={stats['rw_edges']:5d}"
            f" pipe={npipeliners} skill={cfg['startup_kill']} compactions={ncompactions:3d} files={[n for n, _ in files if n != 'data.json.lock']}"
            f"{' ' + save_state if save_state else ''} lost_acked={stats['lost_acked']} maxage={stats['max_lost_age']:.3f}"
            f" {'FAIL ' + str(len(failures)) if failures else 'ok'}",
            flush=True,
        )
        result["log"] = log
        result["itdir"] = itdir
        return result
    finally:
        for sv in servers:
            if sv.proc and sv.proc.returncode is None:
                sv.kill9()
                await sv.wait()
        if failures:
            save_failure(result, log, itdir, data_dir)
        else:
            shutil.rmtree(itdir, ignore_errors=True)


def save_failure(result, log, itdir, data_dir):
    n = 1
    while os.path.exists(os.path.join(CRASH_DIR, f"fail-{n}")):
        n += 1
    dest = os.path.join(CRASH_DIR, f"fail-{n}")
    os.makedirs(dest)
    if os.path.isdir(itdir):
        for name in os.listdir(itdir):
            src = os.path.join(itdir, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(dest, name))
            else:
                shutil.copy(src, dest)
    shutil.copytree(data_dir, os.path.join(dest, "data-now"))
    with open(os.path.join(dest, "client-log.jsonl"), "w") as f:
        for cid, entries in sorted(log.entries.items()):
            for idx, (line, ts, rep, tr) in enumerate(entries):
                f.write(json.dumps({"client": cid, "i": idx, "req": line, "sent": ts, "reply": rep, "at": tr}) + "\n")
    with open(os.path.join(dest, "report.txt"), "w") as f:
        f.write(json.dumps(result["cfg"], indent=1) + "\n")
        for kind, msg in result["failures"]:
            f.write(f"[{kind}] {msg}\n")
    with open(os.path.join(dest, "recovered.json"), "w") as f:
        json.dump(result.get("R"), f)
    print(f"  saved failing iteration to {dest}", flush=True)
    for kind, msg in result["failures"][:8]:
        print(f"  [{kind}] {msg}", flush=True)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--mode", choices=["always", "everysec", "no"])
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--kill-kind", choices=["save", "compaction", "random", "term"])
    ap.add_argument("--bulk-prob", type=float, default=0.3)
    ap.add_argument("--chain-prob", type=float, default=0.45)
    ap.add_argument("--out", help="where work dirs and failing iterations go (default <tmpdir>/txkv-torture)")
    args = ap.parse_args()
    global CRASH_DIR
    if args.out:
        CRASH_DIR = os.path.abspath(args.out)
    work = os.path.join(CRASH_DIR, "work", f"seed-{args.seed}-{os.getpid()}")
    os.makedirs(work)
    totals = defaultdict(float)
    prev = None
    nfail = 0
    for it in range(args.start, args.start + args.iters):
        res = await iteration(args.seed, it, work, prev, totals, args)
        if res["failures"]:
            nfail += 1
        # the next iteration may continue the chain on this data
        if prev is not None and prev["dir"] != res["dir"]:
            shutil.rmtree(prev["dir"], ignore_errors=True)
        prev = {k: res.get(k) for k in ("it", "dir", "chain_len", "R")}
        if res.get("R") is None:
            prev = None  # cannot chain on a refused start
    print("TOTALS " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in sorted(totals.items())}), flush=True)
    print(f"failing iterations: {nfail}", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if nfail else 0)


if __name__ == "__main__":
    asyncio.run(main())
