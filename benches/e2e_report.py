#!/usr/bin/env python3
"""Helper for benches/e2e.sh: parses wrk / h2load / oha output and renders the
comparison table (terminal) and bench-results/e2e.md (markdown).

    e2e_report.py parse wrk|h2load|oha FILE   -> one line "key=value ..." (for progress output)
    e2e_report.py report WORKDIR OUT.md       -> prints the table, writes OUT.md

WORKDIR holds raw/<test>-<target>-<rep>.txt (tool output), samples.tsv
(test, target, rep, key, value: cpu ticks, RSS...) and meta.env (key=value).
With POLICY=1 or only, the targets remora_policy and envoy_policy (the same
bootstrap plus its "#policy:" lines) get their own table: policy off vs on.
"""

import json
import os
import re
import statistics
import sys

TARGETS = ["direct", "remora", "envoy"]
PROXIES = ["remora", "envoy"]
POLICY_TARGETS = ["remora_policy", "envoy_policy"]


# --------------------------------------------------------------------------- parsers

def parse_wrk(text):
    r = {"requests": None, "rps": None, "non2xx": 0, "sock_errors": 0, "duration_s": None}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if m:
        r["requests"] = int(m.group(1))
        unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(3)]
        r["duration_s"] = float(m.group(2)) * unit
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["sock_errors"] = sum(int(x) for x in m.groups())
        r["sock_detail"] = "connect %s, read %s, write %s, timeout %s" % m.groups()
    return r


def parse_h2load(text):
    r = {"requests": None, "rps": None, "non2xx": 0, "sock_errors": 0}
    m = re.search(r"finished in ([\d.]+)(ms|s), ([\d.]+) req/s", text)
    if m:
        r["rps"] = float(m.group(3))
        r["duration_s"] = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1.0)
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        total, started, done, ok, failed, errored, timeout = (int(x) for x in m.groups())
        r["requests"] = done
        r["succeeded"] = ok
        r["sock_errors"] = errored + timeout
        r["failed"] = failed
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        s2, s3, s4, s5 = (int(x) for x in m.groups())
        r["non2xx"] = s3 + s4 + s5
        r["status"] = "2xx %d, 3xx %d, 4xx %d, 5xx %d" % (s2, s3, s4, s5)
        # h2load counts a request "failed" when it got no complete response
        # (stream reset, connection closed) as well as for a non-2xx status.
        if r.get("failed") is not None:
            r["sock_errors"] += max(0, r["failed"] - r["non2xx"])
    return r


def parse_oha(text):
    r = {"requests": None, "rps": None, "non2xx": 0, "sock_errors": 0, "p50_ms": None, "p99_ms": None}
    try:
        start = text.index("{")
        j = json.loads(text[start:])
    except (ValueError, json.JSONDecodeError):
        return r
    s = j.get("summary", {})
    r["rps"] = s.get("requestsPerSec")
    pct = j.get("latencyPercentiles", {})
    if pct.get("p50") is not None:
        r["p50_ms"] = pct["p50"] * 1e3
    if pct.get("p99") is not None:
        r["p99_ms"] = pct["p99"] * 1e3
    if pct.get("p99.9") is not None:
        r["p999_ms"] = pct["p99.9"] * 1e3
    codes = {str(k): int(v) for k, v in (j.get("statusCodeDistribution") or {}).items()}
    r["requests"] = sum(codes.values())
    r["non2xx"] = sum(v for k, v in codes.items() if not k.startswith("2"))
    errs = dict(j.get("errorDistribution") or {})
    # Requests still in flight when -z runs out are cancelled and listed as
    # "aborted due to deadline": an artefact of stopping, not an error.
    r["aborted_at_end"] = int(errs.pop("aborted due to deadline", 0))
    r["sock_errors"] = sum(int(v) for v in errs.values())
    if errs:
        r["err_detail"] = "; ".join("%s: %s" % (k, v) for k, v in errs.items())
    return r


PARSERS = {"wrk": parse_wrk, "h2load": parse_h2load, "oha": parse_oha}
TOOL_OF_TEST = {"h1": "wrk", "h2": "h2load", "lat": "oha"}


def parse_file(tool, path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return PARSERS[tool](f.read())


# --------------------------------------------------------------------------- report

def load(workdir):
    meta = {}
    with open(os.path.join(workdir, "meta.env"), encoding="utf-8") as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    samples = {}  # (test, target, rep) -> {key: value}
    path = os.path.join(workdir, "samples.tsv")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 5:
                    continue
                test, target, rep, key, value = parts
                samples.setdefault((test, target, rep), {})[key] = value
    runs = {}  # (test, target) -> [parsed per rep, merged with samples]
    rawdir = os.path.join(workdir, "raw")
    for name in sorted(os.listdir(rawdir)) if os.path.isdir(rawdir) else []:
        m = re.fullmatch(r"(h1|h2|lat)-(direct|remora|envoy|remora_policy|envoy_policy)-(\d+)\.txt", name)
        if not m:
            continue
        test, target, rep = m.groups()
        r = parse_file(TOOL_OF_TEST[test], os.path.join(rawdir, name))
        r.update(samples.get((test, target, rep), {}))
        r["rep"] = int(rep)
        runs.setdefault((test, target), []).append(r)
    for v in runs.values():
        v.sort(key=lambda r: r["rep"])
    return meta, samples, runs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_us_per_req(r, clk_tck):
    t0, t1 = r.get("cpu_ticks_before"), r.get("cpu_ticks_after")
    ok = r.get("requests")
    if t0 is None or t1 is None or not ok:
        return None
    return (int(t1) - int(t0)) / clk_tck / ok * 1e6


def cpu_busy_pct(r, clk_tck):
    t0, t1 = r.get("cpu_ticks_before"), r.get("cpu_ticks_after")
    wall = r.get("wall_s")
    if t0 is None or t1 is None or not wall:
        return None
    return (int(t1) - int(t0)) / clk_tck / float(wall) * 100


def fmt(v, kind):
    if v is None:
        return "-"
    if kind == "rps":
        return "{:,.0f}".format(v)
    if kind == "ms":
        return "{:.3f} ms".format(v)
    if kind == "us":
        return "{:.1f} µs".format(v)
    if kind == "mib":
        return "{:.1f} MiB".format(v)
    if kind == "pct":
        return "{:.0f}%".format(v)
    if kind == "ratio":
        return "{:.2f}x".format(v)
    return str(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def build(meta, samples, runs):
    clk = int(meta.get("CLK_TCK", "100"))
    rows = []  # (label, {target: str}, remora/envoy str, remora/direct str)

    def runs_of(test, target):
        return runs.get((test, target), [])

    def add(label, vals, kind, ratios=("re", "rd"), added=False):
        cells = {t: fmt(vals.get(t), kind) for t in TARGETS}
        re_ = rd = "-"
        if "re" in ratios:
            re_ = fmt(ratio(vals.get("remora"), vals.get("envoy")), "ratio")
        if "rd" in ratios:
            rd = fmt(ratio(vals.get("remora"), vals.get("direct")), "ratio")
        rows.append((label, cells, re_, rd))

    results = {}
    for test, name in (("h1", "wrk"), ("h2", "h2load")):
        rps = {t: med([r.get("rps") for r in runs_of(test, t)]) for t in TARGETS}
        results[test + "_rps"] = rps
        add("%s throughput, req/s (%s, median of %d)" % (test, name, max([len(runs_of(test, t)) for t in TARGETS] + [0])),
            rps, "rps")
        cpu = {t: med([cpu_us_per_req(r, clk) for r in runs_of(test, t)]) for t in PROXIES}
        results[test + "_cpu"] = cpu
        add("%s proxy CPU per request" % test, cpu, "us", ratios=("re",))
        busy = {t: med([cpu_busy_pct(r, clk) for r in runs_of(test, t)]) for t in PROXIES}
        add("%s proxy CPU busy (100%% = 1 core)" % test, busy, "pct", ratios=())
        hwm = {}
        for t in PROXIES:
            vals = [int(r["hwm_kib"]) for r in runs_of(test, t) if r.get("hwm_kib")]
            hwm[t] = max(vals) / 1024 if vals else None
        results[test + "_hwm"] = hwm
        add("%s proxy peak RSS under load (VmHWM)" % test, hwm, "mib", ratios=("re",))

    idle = {}
    for t in PROXIES:
        v = samples.get(("idle", t, "0"), {}).get("rss_kib")
        idle[t] = int(v) / 1024 if v else None
    results["idle_rss"] = idle
    add("proxy idle RSS (VmRSS after /ready)", idle, "mib", ratios=("re",))

    lat = {}
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        vals = {t: med([r.get(key) for r in runs_of("lat", t)]) for t in TARGETS}
        lat[key] = vals
        add("latency %s @ %s req/s (oha)" % (label, meta.get("RATE", "?")), vals, "ms", ratios=("rd",))
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        vals = lat[key]
        addv = {t: (vals[t] - vals["direct"]) if vals.get(t) is not None and vals.get("direct") is not None else None
                for t in PROXIES}
        results["added_" + key] = addv
        add("added latency %s @ %s req/s (proxy - direct)" % (label, meta.get("RATE", "?")), addv, "ms", ratios=("re",))

    # errors, precisely, per test and target
    errors = []
    for test in ("h1", "h2", "lat"):
        for t in TARGETS + POLICY_TARGETS:
            rs = runs_of(test, t)
            if not rs:
                continue
            reqs = sum(r.get("requests") or 0 for r in rs)
            non2xx = sum(r.get("non2xx") or 0 for r in rs)
            sock = sum(r.get("sock_errors") or 0 for r in rs)
            detail = "; ".join(d for d in (r.get("sock_detail") or r.get("status") or r.get("err_detail") or ""
                                           for r in rs if (r.get("non2xx") or r.get("sock_errors"))) if d)
            errors.append((test, t, len(rs), reqs, non2xx, sock, detail))

    goals = []
    def goal(label, num, den, limit, limit_txt):
        r = ratio(num, den)
        verdict = "-" if r is None else ("PASS" if r <= limit else "FAIL")
        goals.append((label, fmt(num, ""), fmt(den, ""), "-" if r is None else "%.3f" % r, limit_txt, verdict))
    cpu1 = results["h1_cpu"]
    goal("CPU per request (HTTP/1.1 saturation), remora / envoy",
         cpu1.get("remora"), cpu1.get("envoy"), 1 / 3, "≤ 0.333")
    cpu2 = results["h2_cpu"]
    goal("CPU per request (h2c saturation), remora / envoy",
         cpu2.get("remora"), cpu2.get("envoy"), 1 / 3, "≤ 0.333")
    a99 = results["added_p99_ms"]
    goal("Added p99 at %s req/s, remora / envoy" % meta.get("RATE", "?"),
         a99.get("remora"), a99.get("envoy"), 1 / 3, "≤ 0.333")
    goal("Idle RSS, remora / envoy", idle.get("remora"), idle.get("envoy"), 1 / 8, "≤ 0.125")
    # nicer numbers in the goal table
    pretty = []
    kinds = ["us", "us", "ms", "mib"]
    for (label, _n, _d, r, lim, v), kind, (num, den) in zip(
            goals, kinds,
            [(cpu1.get("remora"), cpu1.get("envoy")), (cpu2.get("remora"), cpu2.get("envoy")),
             (a99.get("remora"), a99.get("envoy")), (idle.get("remora"), idle.get("envoy"))]):
        pretty.append((label, fmt(num, kind), fmt(den, kind), r, lim, v))
    return rows, errors, pretty


def delta(off, on, kind):
    """on - off, as an absolute change (CPU) and a percentage."""
    if off is None or on is None or off == 0:
        return "-"
    pct = (on - off) / off * 100
    if kind == "us":
        return "{:+.2f} µs ({:+.1f}%)".format(on - off, pct)
    if kind == "mib":
        return "{:+.1f} MiB".format(on - off)
    return "{:+.1f}%".format(pct)


def build_policy(meta, samples, runs):
    """Policy off vs on, per proxy: medians, the change, and the runs they come from."""
    if not any(runs.get((test, t)) for test in ("h1", "h2") for t in POLICY_TARGETS):
        return None
    clk = int(meta.get("CLK_TCK", "100"))
    rows, per_run = [], []

    def of(test, target):
        return runs.get((test, target), [])

    def row(label, kind, value):
        v = {t: value(t) for t in PROXIES + POLICY_TARGETS}
        rows.append((label,
                     fmt(v["remora"], kind), fmt(v["remora_policy"], kind),
                     delta(v["remora"], v["remora_policy"], kind),
                     fmt(v["envoy"], kind), fmt(v["envoy_policy"], kind),
                     delta(v["envoy"], v["envoy_policy"], kind),
                     fmt(ratio(v["remora_policy"], v["envoy_policy"]), "ratio") if kind != "pct" else "-"))

    for test, tool in (("h1", "wrk"), ("h2", "h2load")):
        n = max([len(of(test, t)) for t in PROXIES + POLICY_TARGETS] + [0])
        row("%s throughput, req/s (%s, median of %d)" % (test, tool, n), "rps",
            lambda t: med([r.get("rps") for r in of(test, t)]))
        row("%s proxy CPU per request" % test, "us",
            lambda t: med([cpu_us_per_req(r, clk) for r in of(test, t)]))
        row("%s proxy CPU busy (100%% = 1 core)" % test, "pct",
            lambda t: med([cpu_busy_pct(r, clk) for r in of(test, t)]))
        for t in PROXIES + POLICY_TARGETS:
            rs = of(test, t)
            per_run.append(("%s %s" % (test, t),
                            " / ".join(fmt(r.get("rps"), "rps") for r in rs),
                            " / ".join(fmt(cpu_us_per_req(r, clk), "us") for r in rs),
                            " / ".join(fmt(cpu_busy_pct(r, clk), "pct") for r in rs)))

    def peak(t):
        vals = [int(r["hwm_kib"]) for test in ("h1", "h2") for r in of(test, t) if r.get("hwm_kib")]
        return max(vals) / 1024 if vals else None

    row("peak RSS under load (VmHWM, h1 and h2)", "mib", peak)

    def idle(t):
        v = samples.get(("idle", t, "0"), {}).get("rss_kib")
        return int(v) / 1024 if v else None

    row("idle RSS (VmRSS after /ready)", "mib", idle)
    counters = []
    for t in PROXIES + POLICY_TARGETS:
        st = samples.get(("stats", t, "0"), {})
        counters.append((t, st.get("upstream_rq_total", "-"), st.get("upstream_rq_retry", "-"),
                         st.get("outlier_detection_ejections_enforced_total", "-")))
    return rows, per_run, counters


def text_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = []
    line = "  ".join(str(h).ljust(w) if i == 0 else str(h).rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    out.append(line)
    out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(out)


def md_table(header, rows, align=None):
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


POLICY_HEADER = ["metric", "remora", "remora + policy", "change", "Envoy", "Envoy + policy", "change",
                 "remora/Envoy, policy on"]
RUN_HEADER = ["test target", "req/s per run", "CPU per request per run", "CPU busy per run"]
COUNTER_HEADER = ["target", "upstream_rq_total", "upstream_rq_retry", "outlier ejections enforced"]


def report(workdir, out_md):
    meta, samples, runs = load(workdir)
    rows, errors, goals = build(meta, samples, runs)
    policy = build_policy(meta, samples, runs)
    header = ["metric", "direct", "remora", "envoy", "remora/envoy", "remora/direct"]
    flat = [(label, c["direct"], c["remora"], c["envoy"], re_, rd) for label, c, re_, rd in rows]
    gheader = ["goal", "remora", "envoy", "ratio", "target", "verdict"]
    eheader = ["test", "target", "runs", "requests", "non-2xx", "socket/stream errors", "detail"]
    erows = [(t, tgt, n, "{:,}".format(req), nx, se, d or "-") for t, tgt, n, req, nx, se, d in errors]
    total_bad = sum(e[4] + e[5] for e in errors)

    print()
    print(text_table(header, flat))
    print()
    print(text_table(gheader, goals))
    print()
    print(text_table(eheader, erows))
    print()
    if policy:
        prow, per_run, counters = policy
        print("Policy stack off vs on (retries, breakers + retry budget, outlier detection):")
        print(text_table(POLICY_HEADER, prow))
        print()
        print(text_table(RUN_HEADER, per_run))
        print()
        print(text_table(COUNTER_HEADER, counters))
        fired = [c for c in counters if c[2] not in ("0", "-") or c[3] not in ("0", "-")]
        if fired:
            print("WARNING: retries fired or hosts were ejected; the policy rows do not measure bookkeeping alone.")
        print()
    if total_bad:
        print("WARNING: %d non-2xx responses or socket/stream errors in total (see above)." % total_bad)
    else:
        print("No non-2xx responses and no socket/stream errors in any run.")

    md = []
    md.append("# remora end-to-end benchmark\n")
    md.append("Taken %s with `%s` (remora %s).\n" % (meta.get("DATE", "?"), meta.get("COMMAND", "bash benches/e2e.sh"),
                                                      meta.get("GIT_REV", "?")))
    md.append("**Machine:** %s × %s, %s, kernel %s. Load average before / after the run: %s / %s.%s\n" % (
        meta.get("NPROC", "?"), meta.get("CPU_MODEL", "?"), meta.get("MEM", "?"), meta.get("KERNEL", "?"),
        meta.get("LOADAVG_BEFORE", "?"), meta.get("LOADAVG_AFTER", "?"),
        (" " + meta["NOTE"]) if meta.get("NOTE") else ""))
    md.append("**Setup:** one proxy worker each (`remora run --concurrency 1`, `envoy --concurrency 1`), "
              "proxy pinned to CPU %s; load generator and upstream (`benches/upstream.rs`, one thread, "
              "HTTP/1.1 + h2c) pinned to CPU %s. Same bootstrap for both proxies "
              "(`benches/e2e-bootstrap.yaml.in`: one listener, route `/` → one STATIC cluster, router filter); "
              "proxies talk HTTP/1.1 to the upstream.\n" % (meta.get("PROXY_CPU", "?"), meta.get("LOAD_CPU", "?")))
    latency = ("not run" if meta.get("OHA_SKIPPED") else
               "`oha -q %s -z %ss -c %s --latency-correction` (fixed rate, coordinated omission corrected)" % (
                   meta.get("RATE"), meta.get("LAT_DURATION"), meta.get("LAT_CONNS")))
    md.append("**Load:** HTTP/1.1: `wrk -t1 -c%s -d%ss`, h2c: `h2load -t1 -c%s -m%s -D%s`, %s repetitions each "
              "(median reported, one warm-up run first); latency: %s.\n" % (
                  meta.get("CONNS"), meta.get("DURATION"), meta.get("H2_CONNS"), meta.get("H2_STREAMS"),
                  meta.get("DURATION"), meta.get("REPS"), latency))
    md.append("**Versions:** %s; %s; %s; %s; %s.\n" % (meta.get("REMORA_VERSION", "remora ?"),
                                                     meta.get("ENVOY_VERSION", "envoy ?"),
                                                     meta.get("WRK_VERSION", "wrk ?"),
                                                     meta.get("H2LOAD_VERSION", "h2load ?"),
                                                     meta.get("OHA_VERSION", "oha: not run")))
    if meta.get("OHA_SKIPPED"):
        md.append("**Latency rows skipped:** %s\n" % meta["OHA_SKIPPED"])
    md.append("## Results\n")
    md.append(md_table(header, flat) + "\n")
    md.append("## Goals\n")
    md.append(md_table(gheader, goals, ["---", "---:", "---:", "---:", "---:", "---"]) + "\n")
    if policy:
        prow, per_run, counters = policy
        md.append("## Policy stack\n")
        md.append("The same bootstrap with its `#policy:` lines (route `retry_policy`: retry_on "
                  "5xx,reset,connect-failure, 2 retries, per-try timeout, previous-hosts predicate; cluster "
                  "`circuit_breakers` thresholds with a retry budget; `outlier_detection` consecutive 5xx / "
                  "gateway failure) against the plain one, each proxy a separate process on the same core, runs "
                  "interleaved. The upstream answers 200, so no retry fires: the change is the cost of the "
                  "bookkeeping per request.\n")
        md.append(md_table(POLICY_HEADER, prow) + "\n")
        md.append("Per run (in run order):\n")
        md.append(md_table(RUN_HEADER, per_run, ["---", "---:", "---:", "---:"]) + "\n")
        md.append("Counters of cluster `upstream` after the saturation runs (from `/stats/prometheus`):\n")
        md.append(md_table(COUNTER_HEADER, counters, ["---", "---:", "---:", "---:"]) + "\n")
    md.append("## Errors\n")
    md.append(md_table(eheader, erows, ["---", "---", "---:", "---:", "---:", "---:", "---"]) + "\n")
    md.append("CPU per request = (utime + stime of the proxy process, from /proc/PID/stat) / requests completed "
              "during the run. Peak RSS = VmHWM after resetting it (`echo 5 > /proc/PID/clear_refs`) before the "
              "saturation runs. Idle RSS = VmRSS once `/ready` answers 200, before any traffic. "
              "\"CPU busy\" near 100% means the proxy was the bottleneck; well below, the load-generator core was.\n")
    os.makedirs(os.path.dirname(out_md) or ".", exist_ok=True)
    with open(out_md, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    print("markdown written to %s" % out_md)


def main(argv):
    if len(argv) == 4 and argv[1] == "parse":
        r = parse_file(argv[2], argv[3])
        print(" ".join("%s=%s" % (k, ("%.3f" % v) if isinstance(v, float) else v)
                       for k, v in r.items() if v is not None and k not in ("status", "sock_detail", "err_detail")))
        return 0
    if len(argv) == 4 and argv[1] == "report":
        report(argv[2], argv[3])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
