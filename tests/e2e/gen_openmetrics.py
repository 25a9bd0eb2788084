#!/usr/bin/env python3
"""Write deterministic OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`.

One generator for the demo (scripts/demo.sh) and the e2e tests (tests/e2e/): it writes

  demo_requests_total{method,code}          counter,   6 series
  demo_temperature_celsius{room,sensor}     gauge,    10 series
  demo_pod_memory_bytes{namespace,pod}      gauge,  --pods series (default 20,000)

with one sample every --step seconds over --hours hours ending at --end (Unix seconds,
rounded down to a multiple of --step), followed by `# EOF`. The values depend only on the
arguments, so a test can recompute what it expects. The big metric may cover a shorter
window (--pod-hours) to keep the backfill fast; its series all exist at --end either way.

Usage: gen_openmetrics.py [--end T] [--hours 3] [--step 15] [--pods 20000] [--pod-hours H] OUT
Prints the aligned end time. The default set is 14.4 M samples, about 1.1 GB of text written
in ~5 s; `promtool tsdb create-blocks-from openmetrics --max-block-duration=24h` turns it into
one or two blocks in ~20-35 s (the default 2h blocks mean one pass over the file per block).
"""
import argparse
import sys
import time

NAMESPACES = 20  # pods are spread over this many namespaces (ns-00 .. ns-19)


def timestamps(end, hours, step):
    """Sample times (seconds) from end - hours down-rounded to step, up to end inclusive."""
    n = int(hours * 3600) // step
    return [end - (n - i) * step for i in range(n + 1)]


def write_requests(out, ts):
    out.write("# HELP demo_requests HTTP requests served by the demo app.\n")
    out.write("# TYPE demo_requests counter\n")
    series = [("GET", "200", 7), ("GET", "404", 1), ("GET", "500", 2),
              ("POST", "200", 3), ("POST", "400", 1), ("PUT", "200", 2)]
    for method, code, rate in series:
        prefix = 'demo_requests_total{method="%s",code="%s"} ' % (method, code)
        # counter: grows by rate*step plus a small deterministic wobble
        lines = []
        v = 0
        for k, t in enumerate(ts):
            v += rate * 15 + (k * 7 + rate) % 5
            lines.append("%s%d %d\n" % (prefix, v, t))
        out.write("".join(lines))


def write_temperature(out, ts):
    out.write("# HELP demo_temperature_celsius Temperature of the demo sensors.\n")
    out.write("# TYPE demo_temperature_celsius gauge\n")
    for s in range(10):
        prefix = 'demo_temperature_celsius{room="room-%d",sensor="s%d"} ' % (s // 2, s)
        base = 18 + s
        out.write("".join("%s%.2f %d\n" % (prefix, base + ((k * (s + 3)) % 40) / 10.0, t)
                          for k, t in enumerate(ts)))


def write_pod_memory(out, ts, pods):
    out.write("# HELP demo_pod_memory_bytes Resident memory of the demo pods.\n")
    out.write("# TYPE demo_pod_memory_bytes gauge\n")
    tstr = [" %d\n" % t for t in ts]
    wobble = [(k % 16) * 4096 for k in range(len(ts))]
    for p in range(pods):
        prefix = 'demo_pod_memory_bytes{namespace="ns-%02d",pod="pod-%05d"} ' % (p % NAMESPACES, p)
        base = 100 * 1024 * 1024 + (p % 97) * 1024 * 1024
        out.write("".join([prefix + str(base + w) + t for w, t in zip(wobble, tstr)]))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--end", type=int, default=None,
                    help="last sample time, Unix seconds (default: now - 5m)")
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--step", type=int, default=15)
    ap.add_argument("--pods", type=int, default=20000)
    ap.add_argument("--pod-hours", type=float, default=None,
                    help="window of demo_pod_memory_bytes (default: --hours)")
    ap.add_argument("out", help="output file, - for stdout")
    a = ap.parse_args(argv)
    end = a.end if a.end is not None else int(time.time()) - 300
    end -= end % a.step
    ts = timestamps(end, a.hours, a.step)
    pod_ts = timestamps(end, a.pod_hours if a.pod_hours is not None else a.hours, a.step)
    out = sys.stdout if a.out == "-" else open(a.out, "w", buffering=1 << 20)
    try:
        write_requests(out, ts)
        write_temperature(out, ts)
        write_pod_memory(out, pod_ts, a.pods)
        out.write("# EOF\n")
    finally:
        if out is not sys.stdout:
            out.close()
    # callers read the aligned end time from the last line (stderr when the data goes to stdout)
    print(end, file=sys.stderr if a.out == "-" else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
