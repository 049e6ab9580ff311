#!/usr/bin/env python3
"""bench/cgdiff.py SMALL.out LARGE.out MESSAGES [TOP] - instructions per
message by symbol: the exclusive Ir of each function in the callgrind
profile of the larger run minus that of the smaller run (same start-up,
same handshakes, MESSAGES more messages), divided by MESSAGES. Start-up and
handshake costs cancel out, so what is left is the relay's hot path."""
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.*)$")


def profile(path, inclusive=False):
    out = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no",
         "--inclusive=" + ("yes" if inclusive else "no"), path],
        capture_output=True, text=True, check=True).stdout
    res, started = {}, False
    for line in out.splitlines():
        if "file:function" in line:
            started = True
            continue
        m = LINE.match(line) if started else None
        if m and "PROGRAM TOTALS" not in line:
            sym = re.sub(r"^\S*/", "", m.group(2).strip())   # drop dirs
            res[sym] = res.get(sym, 0) + int(m.group(1).replace(",", ""))
    return res


def main():
    small, large, n = sys.argv[1], sys.argv[2], float(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    for incl in (False, True):
        a, b = profile(small, incl), profile(large, incl)
        d = {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}
        tot = sum(v for v in d.values() if v > 0) if not incl else None
        print("== %s instructions per message (%s)" % (
            "inclusive" if incl else "exclusive",
            "total %.0f" % tot if tot else "callers include callees"))
        for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]:
            print("%8.1f  %s" % (v, k))
        print()


if __name__ == "__main__":
    main()
