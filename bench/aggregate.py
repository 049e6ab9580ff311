#!/usr/bin/env python3
"""bench/aggregate.py RESULTS_DIR - medians, spreads and ratios from raw.log.

raw.log: one line per run, "scenario=S target=T rep=N key=value ...", as
written by bench/run.sh from wsbench's summary line. Writes latest.tsv (every
metric), latest.md (the summary table with the issue's targets) and
plot_wall.dat / plot_cpu.dat for bench/plot.gp.
"""
import os
import statistics
import sys

RES = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "results")
TARGETS = ["direct", "wsguard", "nginx", "haproxy"]
PEERS = ["nginx", "haproxy"]
HIGHER = {"msg_s", "mb_s", "msg_per_cpu_s", "mb_per_cpu_s", "hs_s",
          "hs_per_cpu_s", "sessions"}
METRICS = {
    "msg64": ["msg_s", "mb_s", "p50_us", "p99_us", "p999_us", "msg_per_cpu_s",
              "mb_per_cpu_s", "proxy_cpu_util", "lg_cpu_util", "errors"],
    "hs": ["hs_s", "hs_per_cpu_s", "resumed", "proxy_cpu_util", "lg_cpu_util",
           "errors"],
    "idle": ["sessions", "rss_per_session_kb", "rss0_kb",
             "setup_cpu_per_session_us", "hold_cpu_util", "failed", "errors"],
}
METRICS["msg4k"] = METRICS["msg256k"] = METRICS["msg64"]
METRICS["scale"] = METRICS["idle"] + ["kmem_per_session_kb", "setup_s"]


def parse(path):
    runs = {}
    with open(path) as f:
        for line in f:
            kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
            key = (kv.get("scenario"), kv.get("target"))
            runs.setdefault(key, []).append(kv)
    return runs


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def stats(runs, sc, tg, m):
    vals = [num(r.get(m)) for r in runs.get((sc, tg), [])]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    med = statistics.median(vals)
    return {"n": len(vals), "med": med, "min": min(vals), "max": max(vals),
            "spread": (max(vals) - min(vals)) / med * 100 if med else 0.0}


def best_peer(runs, sc, m):
    cands = [(stats(runs, sc, p, m), p) for p in PEERS]
    cands = [(s, p) for s, p in cands if s and s["med"] > 0]
    if not cands:
        return None, None
    pick = max if m in HIGHER else min
    s, p = pick(cands, key=lambda c: c[0]["med"])
    return s["med"], p


def paired(runs, sc, m):
    """wsguard / the best peer within each repetition (the targets of one
    repetition run back to back, so they share more of the machine's
    drift than the medians of separate repetitions do): the median and
    range of those ratios, or None."""
    by_rep = {}
    for tg in ["wsguard"] + PEERS:
        for r in runs.get((sc, tg), []):
            v = num(r.get(m))
            if v is not None and v > 0:
                by_rep.setdefault(r.get("rep"), {})[tg] = v
    pick = max if m in HIGHER else min
    ratios = [d["wsguard"] / pick(d[p] for p in PEERS if p in d)
              for d in by_rep.values()
              if "wsguard" in d and any(p in d for p in PEERS)]
    if not ratios:
        return None
    return statistics.median(ratios), min(ratios), max(ratios)


def main():
    runs = parse(os.path.join(RES, "raw.log"))
    rows = ["scenario\ttarget\tmetric\tn\tmedian\tmin\tmax\tspread_pct\t"
            "ratio_best_peer\tbest_peer\tratio_direct"]
    scenarios = [s for s in ["msg64", "msg4k", "msg256k", "idle", "hs", "scale"]
                 if any(k[0] == s for k in runs)]
    for sc in scenarios:
        for m in METRICS[sc]:
            bp, bpn = best_peer(runs, sc, m)
            d = stats(runs, sc, "direct", m)
            for tg in TARGETS:
                s = stats(runs, sc, tg, m)
                if not s:
                    continue
                rb = s["med"] / bp if bp else None
                rd = s["med"] / d["med"] if d and d["med"] else None
                rows.append("\t".join([
                    sc, tg, m, str(s["n"]), "%.4g" % s["med"], "%.4g" % s["min"],
                    "%.4g" % s["max"], "%.1f" % s["spread"],
                    "%.3f" % rb if rb is not None else "",
                    bpn or "", "%.3f" % rd if rd is not None else ""]))
    with open(os.path.join(RES, "latest.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")

    # ---- markdown summary ----
    def cell(sc, tg, m, fmt="{:,.0f}"):
        s = stats(runs, sc, tg, m)
        if not s:
            return "-"
        return (fmt.format(s["med"]) +
                (" ±%.0f%%" % (s["spread"] / 2) if s["n"] > 1 else ""))

    def ratio(sc, m):
        bp, _ = best_peer(runs, sc, m)
        s = stats(runs, sc, "wsguard", m)
        return s["med"] / bp if s and bp else None

    lines = [
        "| scenario | metric | direct | wsguard | nginx | haproxy | "
        "wsguard / best peer | per repetition | target | met |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]

    def row(sc, label, m, target=None, op=None, fmt="{:,.0f}"):
        if not any(k[0] == sc for k in runs):
            return
        r = ratio(sc, m)
        met = ""
        if target is not None and r is not None:
            ok = r >= target if op == ">=" else r <= target
            met = "yes" if ok else "**no**"
        tcol = "%s %s×" % ("≥" if op == ">=" else "≤", "{:g}".format(target)) if target else ""
        pr = paired(runs, sc, m)
        lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            sc, label, cell(sc, "direct", m, fmt), cell(sc, "wsguard", m, fmt),
            cell(sc, "nginx", m, fmt), cell(sc, "haproxy", m, fmt),
            "%.2f×" % r if r is not None else "-",
            "%.2f× (%.2f-%.2f)" % pr if pr and pr[1] != pr[2] else
            ("%.2f×" % pr[0] if pr else "-"), tcol, met))

    # The targets of issue 14 (ratios to the best peer).
    row("msg64", "messages/s", "msg_s", 1.05, ">=")
    row("msg64", "messages/CPU-s", "msg_per_cpu_s", 1.05, ">=")
    row("msg64", "p50 µs", "p50_us")
    row("msg64", "p99 µs", "p99_us", 0.9, "<=")
    row("msg64", "p999 µs", "p999_us")
    row("msg64", "proxy CPU util", "proxy_cpu_util", fmt="{:.2f}")
    for sc, lbl in (("msg4k", "4 KiB"), ("msg256k", "256 KiB")):
        row(sc, "MB/s", "mb_s", 1.1, ">=", fmt="{:,.1f}")
        row(sc, "MB/CPU-s", "mb_per_cpu_s", fmt="{:,.1f}")
        row(sc, "p99 µs", "p99_us")
        row(sc, "proxy CPU util", "proxy_cpu_util", fmt="{:.2f}")
    row("idle", "sessions held", "sessions")
    row("idle", "RSS KiB/session", "rss_per_session_kb", 0.8, "<=", fmt="{:,.1f}")
    row("idle", "setup CPU µs/session", "setup_cpu_per_session_us")
    row("hs", "handshakes/s", "hs_s", 1.05, ">=")
    row("hs", "handshakes/CPU-s", "hs_per_cpu_s")
    row("hs", "proxy CPU util", "proxy_cpu_util", fmt="{:.2f}")
    row("scale", "sessions held", "sessions")
    row("scale", "RSS KiB/session", "rss_per_session_kb", fmt="{:,.2f}")
    row("scale", "setup CPU µs/session", "setup_cpu_per_session_us")
    row("scale", "hold CPU util", "hold_cpu_util", fmt="{:.4f}")
    row("scale", "kernel KiB/session (4 sockets)", "kmem_per_session_kb", fmt="{:,.2f}")

    cg = os.path.join(RES, "callgrind.tsv")
    if os.path.exists(cg):
        vals = {}
        with open(cg) as f:
            next(f)
            for line in f:
                p = line.rstrip("\n").split("\t")
                if len(p) >= 5:
                    vals[p[0]] = (num(p[3]), num(p[4]))
        peers = [vals[p][0] for p in PEERS if p in vals and vals[p][0]]
        w = vals.get("wsguard", (None, None))
        r = w[0] / min(peers) if w[0] and peers else None
        fmtv = lambda t, i: ("{:,.0f}".format(vals[t][i]) if t in vals and
                             vals[t][i] is not None else "-")
        lines.append("| callgrind 64 B | instructions/message | - | %s | %s | %s "
                     "| %s | | ≤ 1× | %s |" % (
                         fmtv("wsguard", 0), fmtv("nginx", 0),
                         fmtv("haproxy", 0), "%.2f×" % r if r else "-",
                         ("yes" if r <= 1.0 else "**no**") if r else ""))
        fmt2 = lambda t: ("%.2f" % vals[t][1] if t in vals and
                          vals[t][1] is not None else "-")
        lines.append("| strace 64 B | syscalls/message | - | %s | %s | %s | | | | |"
                     % (fmt2("wsguard"), fmt2("nginx"), fmt2("haproxy")))
    errs = sum(int(num(r.get("errors")) or 0) for v in runs.values() for r in v)
    lines.append("")
    lines.append("Medians of %s repetition(s), ± half the min-max spread; "
                 "per repetition: wsguard / the best peer within each "
                 "repetition, median (min-max); "
                 "errors over all runs: %d." % (
                     max(len(v) for v in runs.values()), errs))
    with open(os.path.join(RES, "latest.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    # ---- plot data: ratio to the best peer, median and min/max ----
    def pl(sc, m, invert=False):
        out = []
        bp, _ = best_peer(runs, sc, m)
        for tg in ["wsguard", "nginx", "haproxy"]:
            s = stats(runs, sc, tg, m)
            if not s or not bp:
                out += [0, 0, 0]
                continue
            if invert:  # lower is better: plot best/value
                out += [bp / s["med"], bp / s["max"], bp / s["min"]]
            else:
                out += [s["med"] / bp, s["min"] / bp, s["max"] / bp]
        return out

    for name, cats in (
            ("plot_wall.dat", [("\"64 B msg/s\"", "msg64", "msg_s", False),
                               ("\"4 KiB MB/s\"", "msg4k", "mb_s", False),
                               ("\"256 KiB MB/s\"", "msg256k", "mb_s", False),
                               ("\"64 B 1/p99\"", "msg64", "p99_us", True),
                               ("\"handshakes/s\"", "hs", "hs_s", False),
                               ("\"sessions/GiB\"", "idle", "rss_per_session_kb", True)]),
            ("plot_cpu.dat", [("\"64 B msg/CPU-s\"", "msg64", "msg_per_cpu_s", False),
                              ("\"4 KiB MB/CPU-s\"", "msg4k", "mb_per_cpu_s", False),
                              ("\"256 KiB MB/CPU-s\"", "msg256k", "mb_per_cpu_s", False),
                              ("\"handshakes/CPU-s\"", "hs", "hs_per_cpu_s", False),
                              ("\"sessions/setup-CPU-s\"", "idle",
                               "setup_cpu_per_session_us", True)])):
        with open(os.path.join(RES, name), "w") as f:
            f.write("# label wsguard lo hi nginx lo hi haproxy lo hi "
                    "(ratio to the best of nginx/haproxy; higher is better)\n")
            for lbl, sc, m, inv in cats:
                if not any(k[0] == sc for k in runs):
                    continue
                f.write(lbl + " " + " ".join("%.4f" % v for v in pl(sc, m, inv))
                        + "\n")


if __name__ == "__main__":
    main()
