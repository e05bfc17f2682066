#!/usr/bin/env python3
"""Runs criterion benchmarks in several short rounds and prints each one's median.

The development VM's speed drifts by up to ±30 % within minutes, more than the margin of
most speed targets, so one criterion run is one draw. This runs the given benches in
`--rounds` rounds (each round runs every bench once, in the order given, so slow stretches
hit all of them alike), reads each run's mean from criterion's `estimates.json`, and prints
the median, minimum and maximum of the rounds' means per benchmark.

    scripts/bench-rounds.py --rounds 7 auth:api_key/added_paired quota:quota_added_paired/memory_one_quota

Each argument is `<bench target>:<criterion filter>`; every benchmark the filter selects is
reported. Build first (`cargo bench --features full --no-run`).
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(bench, flt, warm, meas):
    start = time.time()
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--features", "full", "--bench", bench, "--", flt,
         "--warm-up-time", str(warm), "--measurement-time", str(meas)],
        cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr[-2000:])
    # every benchmark this run measured rewrote its estimates (criterion's directory names
    # are sanitized ids: each is named by the id it records); the run's stdout is not
    # parsed, as criterion's report lines differ with the id's length and its change notes
    res = {}
    for est in (ROOT / "target" / "criterion").glob("**/new/estimates.json"):
        if est.stat().st_mtime < start:
            continue
        meta = est.parent / "benchmark.json"
        res[json.loads(meta.read_text())["full_id"]] = \
            json.loads(est.read_text())["mean"]["point_estimate"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warm-up", type=float, default=1.0)
    ap.add_argument("--measurement", type=float, default=2.0)
    ap.add_argument("benches", nargs="+", help="<bench target>:<criterion filter>")
    a = ap.parse_args()
    means = {}
    for r in range(a.rounds):
        for spec in a.benches:
            bench, flt = spec.split(":", 1)
            for name, ns in run(bench, flt, a.warm_up, a.measurement).items():
                means.setdefault(name, [None] * a.rounds)[r] = ns
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    width = max(len(n) for n in means)
    print(f"{'benchmark':{width}}  median      min      max  (ns, {a.rounds} rounds: each; - = not measured)")
    for name, v in means.items():
        got = [x for x in v if x is not None]
        each = " ".join("-" if x is None else f"{x:.0f}" for x in v)
        print(f"{name:{width}}  {statistics.median(got):7.1f}  {min(got):7.1f}  {max(got):7.1f}  {each}")


if __name__ == "__main__":
    main()
