#!/usr/bin/env python3
"""Medians per (system, label, metric) from compare-etcd.sh's results.jsonl, and colony/etcd ratios."""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
values = defaultdict(list)
for row in rows:
    for key, value in row.items():
        if isinstance(value, (int, float)) and key not in ("run", "clients", "conns", "threads", "n"):
            values[(row["system"], row["label"], key)].append(value)

def med(system, label, key):
    v = values.get((system, label, key))
    return statistics.median(v) if v else None

def per_run(system, label, key):
    return values.get((system, label, key), [])

print("| workload | metric | colony median | etcd median | colony / etcd | colony runs |")
print("|---|---|---|---|---|---|")
pairs = [
    ("put_c1", "ops_per_s"), ("put_c1", "p50_ms"), ("put_c1", "p99_ms"),
    ("put_c64", "ops_per_s"), ("put_c64", "p50_ms"), ("put_c64", "p99_ms"),
    ("put_c64", "server_cpu_us_per_op"), ("put_c64", "entries_per_fsync"),
    ("get_c64", "ops_per_s"), ("get_c64", "p50_ms"), ("get_c64", "p99_ms"),
    ("wake", "wake_p50_ms"), ("wake", "wake_p99_ms"),
    ("fsync", "fsync_per_s"), ("fsync", "fsync_p50_ms"),
]
for label, key in pairs:
    c = med("colony", label, key)
    e = med("etcd", label, key)
    if key == "server_cpu_us_per_op" and e is None:
        cores = med("etcd", label, "server_cpu_cores")
        ops = med("etcd", label, "ops_per_s")
        e = cores * 1e6 / ops if cores and ops else None
    ratio = f"{c / e:.2f}" if c is not None and e else "—"
    fmt = lambda x: "—" if x is None else (f"{x:.0f}" if abs(x) >= 100 else f"{x:.3f}")
    runs = ", ".join(fmt(x) for x in per_run("colony", label, key))
    print(f"| {label} | {key} | {fmt(c)} | {fmt(e)} | {ratio} | {runs} |")
