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

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run(bench, flt, warm, meas):
    out = subprocess.run(
        ["cargo", "bench", "--quiet", "--features", "full", "--bench", bench, "--", flt,
         "--warm-up-time", str(warm), "--measurement-time", str(meas)],
        cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr[-2000:])
    names = []
    for line in out.stdout.splitlines():
        word = line.split(" ", 1)[0]
        if "/" in word and not line.startswith(" "):
            names.append(word)
    # criterion's directory names are sanitized ids: find each by the id it records
    index = {}
    for meta in (ROOT / "target" / "criterion").glob("**/new/benchmark.json"):
        index[json.loads(meta.read_text())["full_id"]] = meta.parent / "estimates.json"
    res = {}
    for name in names:
        est = index.get(name)
        if est is not None and est.exists():
            res[name] = json.loads(est.read_text())["mean"]["point_estimate"]
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
                means.setdefault(name, []).append(ns)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    width = max(len(n) for n in means)
    print(f"{'benchmark':{width}}  median      min      max  (ns, {a.rounds} rounds: each)")
    for name, v in means.items():
        each = " ".join(f"{x:.0f}" for x in v)
        print(f"{name:{width}}  {statistics.median(v):7.1f}  {min(v):7.1f}  {max(v):7.1f}  {each}")


if __name__ == "__main__":
    main()
