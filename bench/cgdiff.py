#!/usr/bin/env python3
"""bench/cgdiff.py SMALL.out LARGE.out N [TOP] [--unit WORD] [--own OBJ]
[--tsv FILE --label TEXT] - instructions per unit by symbol: the exclusive
Ir of each function in the callgrind profile of the larger run minus that
of the smaller run (same start-up, N more messages or handshakes), divided
by N. Start-up costs cancel out, so what is left is the cost per unit.

--unit names the unit in the headings (default: message).
--own OBJ (the proxy's executable, e.g. wsguard.bin, nginx, haproxy) adds a
breakdown by shared object first: libssl + libcrypto, libc, libev, the
proxy's own code (OBJ), the rest; then the proxy's own functions alone,
exclusive and inclusive (inclusive: with everything they call, OpenSSL
included). --tsv appends one line "LABEL total tls libc libev own other"
to FILE."""
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(.*)$")
OBJ = re.compile(r"^(.*?)(?:\s+\[([^\]]*)\])?$")
GROUPS = ("tls", "libc", "libev", "own", "other")
GROUP_NAMES = {"tls": "libssl + libcrypto", "libc": "libc", "libev": "libev",
               "own": "own code", "other": "other (ld.so, libpcre, ...)"}


def profile(path, inclusive=False):
    """{(function, object): Ir}; object is "" where callgrind_annotate
    does not print it (lines of inlined code from another file)."""
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
            o = OBJ.match(m.group(2).strip())
            fn = o.group(1).strip()
            fn = fn.split(":", 1)[1] if ":" in fn else fn    # drop file
            obj = re.sub(r"^.*/", "", o.group(2) or "")
            key = (fn, obj)
            res[key] = res.get(key, 0) + int(m.group(1).replace(",", ""))
    return res


def fill_objects(*profiles):
    """Give lines without an object the object their function has
    elsewhere, then merge."""
    where = {}
    for p in profiles:
        for fn, obj in p:
            if obj:
                where.setdefault(fn, obj)
    out = []
    for p in profiles:
        q = {}
        for (fn, obj), v in p.items():
            k = (fn, obj or where.get(fn, "?"))
            q[k] = q.get(k, 0) + v
        out.append(q)
    return out


def group(obj, own):
    if obj.startswith(("libssl.so", "libcrypto.so")):
        return "tls"
    if obj.startswith("libc.so"):
        return "libc"
    if obj.startswith("libev.so"):
        return "libev"
    if own and obj == own:
        return "own"
    return "other"


def diff(small, large, n, incl):
    a, b = fill_objects(profile(small, incl), profile(large, incl))
    return {k: (b.get(k, 0) - a.get(k, 0)) / n for k in set(a) | set(b)}


def show(d, top, only=None):
    items = [(k, v) for k, v in d.items() if only is None or k[1] == only]
    for (fn, obj), v in sorted(items, key=lambda kv: -kv[1])[:top]:
        print("%10.1f  %s [%s]" % (v, fn, obj))
    print()


def main():
    args, opts, i = [], {}, 1
    while i < len(sys.argv):
        if sys.argv[i].startswith("--"):
            opts[sys.argv[i][2:]] = sys.argv[i + 1]
            i += 2
        else:
            args.append(sys.argv[i])
            i += 1
    small, large, n = args[0], args[1], float(args[2])
    top = int(args[3]) if len(args) > 3 else 25
    unit, own = opts.get("unit", "message"), opts.get("own")
    excl = diff(small, large, n, False)
    incl = diff(small, large, n, True)
    if own:
        g = dict.fromkeys(GROUPS, 0.0)
        for (fn, obj), v in excl.items():
            g[group(obj, own)] += v
        total = sum(g.values())
        print("== instructions per %s by object (exclusive, total %.0f)"
              % (unit, total))
        for k in GROUPS:
            print("%10.0f  %5.1f%%  %s" % (g[k], 100 * g[k] / total if total
                                           else 0, GROUP_NAMES[k]))
        print()
        if "tsv" in opts:
            with open(opts["tsv"], "a") as f:
                f.write("%s\t%.0f\t%s\n" % (opts.get("label", own), total,
                        "\t".join("%.0f" % g[k] for k in GROUPS)))
        print("== %s's own functions, exclusive, per %s" % (own, unit))
        show(excl, top, own)
        print("== %s's own functions, inclusive (with their callees), per %s"
              % (own, unit))
        show(incl, top, own)
    tot = sum(v for v in excl.values() if v > 0)
    print("== exclusive instructions per %s (total %.0f)" % (unit, tot))
    show(excl, top)
    print("== inclusive instructions per %s (callers include callees)" % unit)
    show(incl, top)


if __name__ == "__main__":
    main()
