"""Synthetic histories: the checker must flag the bad ones and pass the good ones."""
import importlib.util, sys
import os
spec = importlib.util.spec_from_file_location("t", os.path.join(os.path.dirname(os.path.abspath(__file__)), "crash-torture.py")); t = importlib.util.module_from_spec(spec); spec.loader.exec_module(t)
OK = lambda k, v: {"status": "Ok", "result": {"key": k, "value": v}}
C = {"status": "Ok", "result": "Transaction committed"}
S = {"status": "Ok", "result": "Transaction started"}
def run(name, entries, R, mode="always", kill=100, expect=True):
    log = t.Log()
    for cid, es in entries.items(): log.entries[cid] = es
    commits, never, reads, problems = t.build_model(log, {})
    fails, st = t.check(commits, never, reads, problems, R, mode, kill, 1.5)
    flagged = bool(fails)
    print(("PASS" if flagged == expect else "WRONG"), name, "->", [f[0] for f in fails])
# 1 acked PUT lost under always
run("lost acked put (always)", {0: [["PUT k a", 1, OK("k", "a"), 2]]}, {}, expect=True)
run("lost acked put (everysec, 98s before kill)", {0: [["PUT k a", 1, OK("k", "a"), 2]]}, {}, mode="everysec", expect=True)
run("lost acked put (everysec, just before kill)", {0: [["PUT k a", 99.5, OK("k", "a"), 99.6]]}, {}, mode="everysec", expect=False)
# 2 prefix gap: a acked before b sent, b present, a absent (everysec near kill)
run("gap", {0: [["PUT k a", 99.1, OK("k", "a"), 99.2]], 1: [["PUT j b", 99.3, OK("j", "b"), 99.4]]}, {"j": "b"}, mode="everysec", expect=True)
run("no gap (concurrent)", {0: [["PUT k a", 99.1, OK("k", "a"), 99.4]], 1: [["PUT j b", 99.3, OK("j", "b"), 99.4]]}, {"j": "b"}, mode="everysec", expect=False)
# 3 half a transaction
tx = [["START", 1, S, 1.1], ["PUT k a", 1.2, OK("k", "a"), 1.3], ["PUT j b", 1.4, OK("j", "b"), 1.5], ["COMMIT", 1.6, C, 1.7]]
run("half txn", {0: tx}, {"k": "a"}, mode="everysec", kill=2, expect=True)
run("whole txn", {0: tx}, {"k": "a", "j": "b"}, mode="everysec", kill=2, expect=False)
run("no txn", {0: tx}, {}, mode="everysec", kill=2, expect=False)
# 4 older value back
run("older value", {0: [["PUT k a", 1, OK("k", "a"), 2], ["PUT k b", 3, OK("k", "b"), 4]]}, {"k": "a"}, mode="everysec", kill=4.1, expect=False)
run("older value with later present", {0: [["PUT k a", 1, OK("k", "a"), 2], ["PUT k b", 3, OK("k", "b"), 4], ["PUT j c", 5, OK("j", "c"), 6]]}, {"k": "a", "j": "c"}, mode="everysec", kill=6.1, expect=True)
# 5 rolled back / conflicted value present
run("rolled back value", {0: [["START", 1, S, 1.1], ["PUT k a", 1.2, OK("k", "a"), 1.3], ["ROLLBACK", 1.4, {"status": "Ok", "result": "Transaction rolled back"}, 1.5]]}, {"k": "a"}, expect=True)
run("conflicted value", {0: [["START", 1, S, 1.1], ["PUT k a", 1.2, OK("k", "a"), 1.3], ["COMMIT", 1.4, {"status": "Error", "code": "CONFLICT"}, 1.5]]}, {"k": "a"}, expect=True)
run("nested rolled back value", {0: [["START", 1, S, 1.1], ["PUT k a", 1.2, OK("k", "a"), 1.3], ["START", 1.31, S, 1.32], ["PUT j z", 1.33, OK("j", "z"), 1.34], ["ROLLBACK", 1.35, {"status": "Ok"}, 1.36], ["COMMIT", 1.4, C, 1.5]]}, {"k": "a", "j": "z"}, expect=True)
# 6 read-from/anti-dependency: T read k=a then b overwrote k after; b present, T absent
rf = {0: [["PUT k a", 1, OK("k", "a"), 2]],
      1: [["START", 3, S, 3.1], ["GET k", 3.2, OK("k", "a"), 3.3], ["PUT j t", 3.4, OK("j", "t"), 3.5], ["COMMIT", 3.6, C, 9]],
      2: [["PUT k b", 3.7, OK("k", "b"), 9]]}
run("anti-dependency violated", rf, {"k": "b"}, mode="everysec", kill=9.1, expect=True)
run("anti-dependency respected", rf, {"k": "b", "j": "t"}, mode="everysec", kill=9.1, expect=False)
# 7 stale read
run("stale read in txn", {0: [["PUT k a", 1, OK("k", "a"), 2]], 1: [["PUT k b", 3, OK("k", "b"), 4]],
     2: [["START", 5, S, 5.1], ["GET k", 5.2, OK("k", "a"), 5.3], ["PUT j x", 5.4, OK("j", "x"), 5.5], ["COMMIT", 5.6, C, 5.7]]}, {"k": "b", "j": "x"}, expect=True)
run("stale plain GET", {0: [["PUT k a", 1, OK("k", "a"), 2]], 1: [["PUT k b", 3, OK("k", "b"), 4]], 2: [["GET k", 5, OK("k", "a"), 6]]}, {"k": "b"}, expect=True)
# 8 phantom
run("phantom", {}, {"k": "zzz"}, expect=True)
