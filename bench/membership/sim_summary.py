#!/usr/bin/env python3
"""Summarizes bench/membership/sim.sh output: medians per group, and an SVG of dissemination
rounds and detection time against cluster size (log scale). Standard library only."""
import glob, json, math, os, statistics, sys


def load(out, pattern):
    """All results whose file name matches pattern."""
    return [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, pattern + ".json")))]


def med(rs, key):
    """Median of a field over runs (None values skipped)."""
    xs = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def mx(rs, key):
    """Maximum of a field over runs."""
    xs = [r[key] for r in rs if r.get(key) is not None]
    return max(xs) if xs else None


def fmt(v, unit=""):
    """A number for the table."""
    if v is None:
        return "-"
    return f"{v:,.0f}{unit}" if abs(v) >= 10 else f"{v:.2f}{unit}"


def scaling_svg(points, path, baseline=()):
    """Lines against log10(n): rounds to 100% informed (blue) and detection seconds (red),
    solid for colony, dashed for the foca baseline."""
    w, h, x0, y0, pw, ph = 640, 340, 60, 30, 520, 240
    every = list(points) + list(baseline)
    ns = sorted({p[0] for p in every})
    lx = lambda n: x0 + pw * (math.log10(n) - 1) / max(1e-9, math.log10(max(ns)) - 1)
    ymax = max(max(p[1] or 0 for p in every), max(p[2] or 0 for p in every), 1) * 1.2
    ly = lambda v: y0 + ph - ph * v / ymax
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
             f'<text x="{x0}" y="20">max dissemination rounds (blue) and detection seconds (red) vs nodes</text>',
             f'<text x="{x0}" y="{y0 + ph + 40}">solid: colony core' + (', dashed: foca 2.0 baseline' if baseline else '') + '</text>']
    for n in ns:
        parts.append(f'<text x="{lx(n):.0f}" y="{y0 + ph + 16}" text-anchor="middle">{n}</text>')
    for k in range(5):
        v = ymax * k / 4
        parts.append(f'<text x="{x0 - 6}" y="{ly(v) + 4:.0f}" text-anchor="end">{v:.1f}</text>')
    for series, dash in ((points, ""), (baseline, ' stroke-dasharray="6,4"')):
        for idx, color in ((1, "#1f77b4"), (2, "#d62728")):
            pts = " ".join(f"{lx(p[0]):.1f},{ly(p[idx]):.1f}" for p in series if p[idx] is not None)
            if pts:
                parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
    parts.append("</svg>")
    open(path, "w").write("".join(parts))


def main(out):
    """Prints the summary tables."""
    print("| n | runs | dissemination rounds p50 / max | detection s p50 / max | join convergence s | msgs/s/node | B/s/node | node-s per wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    points = []
    for n in (10, 100, 1000, 10000):
        rs = load(out, f"scale_n{n}_s*")
        if not rs:
            continue
        joins = rs if n < 1000 else load(out, f"join_n{n}_s*")
        det = med(rs, "detection_ms_max")
        print(f"| {n} | {len(rs)} | {fmt(med(rs, 'dissemination_rounds_max'))} / {fmt(mx(rs, 'dissemination_rounds_max'))} "
              f"| {fmt(det and det / 1000)} / {fmt(mx(rs, 'detection_ms_max') and mx(rs, 'detection_ms_max') / 1000)} "
              f"| {fmt(med(joins, 'join_convergence_ms') and med(joins, 'join_convergence_ms') / 1000)} "
              f"| {fmt(med(rs, 'msgs_per_node_per_s'))} | {fmt(med(rs, 'bytes_per_node_per_s'))} "
              f"| {fmt(med(rs, 'node_seconds_per_wall_second'))} |")
        points.append((n, mx(rs, "dissemination_rounds_max"), det and det / 1000))
    baseline = []
    for n in (10, 100, 1000, 10000):
        rs = load(out, f"foca_n{n}_s*")
        if not rs:
            continue
        if not baseline:
            print("\nfoca 2.0 baseline, same phases:\n")
            print("| n | runs | dissemination rounds p50 / max | informed (worst run) | detection s p50 / max | msgs/s/node | B/s/node |")
            print("| --- | --- | --- | --- | --- | --- | --- |")
        det = med(rs, "detection_ms_max")
        worst = min(r["dissemination_informed"] for r in rs)
        print(f"| {n} | {len(rs)} | {fmt(med(rs, 'dissemination_rounds_max'))} / {fmt(mx(rs, 'dissemination_rounds_max'))} "
              f"| {worst:.1%} | {fmt(det and det / 1000)} / {fmt(mx(rs, 'detection_ms_max') and mx(rs, 'detection_ms_max') / 1000)} "
              f"| {fmt(med(rs, 'msgs_per_node_per_s'))} | {fmt(med(rs, 'bytes_per_node_per_s'))} |")
        baseline.append((n, mx(rs, "dissemination_rounds_max"), det and det / 1000))
    if points:
        scaling_svg(points, os.path.join(out, "scaling.svg"), baseline)
    j50 = load(out, "join_n50_s*")
    if j50:
        xs = sorted(r["join_convergence_ms"] for r in j50 if r["join_convergence_ms"] is not None)
        p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
        print(f"\njoin convergence n=50, {len(j50)} seeds: p50 {fmt(statistics.median(xs))} ms, p99 {fmt(p99)} ms, max {fmt(xs[-1])} ms; "
              f"detection p50 {fmt(med(j50, 'detection_ms_max'))} ms, max {fmt(mx(j50, 'detection_ms_max'))} ms")
    off = load(out, "lgoff_n100_s*")
    if off:
        print(f"\nLifeguard off, n=100: detection p50 {fmt(med(off, 'detection_ms_max'))} ms, dissemination max {fmt(mx(off, 'dissemination_rounds_max'))}")
    print("\n| scenario | runs | false suspicions (episodes) | per node-hour | false failures | detection p50 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, pat, nodes, hours in (("10% loss, n=100, 1 h", "loss0.1_s*", 100, 1.0), ("20% loss, n=100, 1 h", "loss0.2_s*", 100, 1.0),
                                    ("slow 10%, Lifeguard on, 10 min", "slow_lgon_s*", 20, 1 / 6), ("slow 10%, Lifeguard off, 10 min", "slow_lgoff_s*", 20, 1 / 6)):
        rs = load(out, pat)
        if rs:
            fs = med(rs, "false_positive_suspicions")
            print(f"| {name} | {len(rs)} | {fmt(fs)} | {fmt(fs / nodes / hours)} | {fmt(mx(rs, 'false_positive_failures'))} | {fmt(med(rs, 'detection_ms_max'))} |")
    both = [(loss, load(out, f"warmloss{loss}_s*"), load(out, f"foca_loss{loss}_s*")) for loss in ("0.1", "0.2")]
    if any(c or f for _, c, f in both):
        print("\n| loss, n=100, 1 h, warm | runs | false suspicions, colony / foca | per node-hour | members falsely declared failed (max) |")
        print("| --- | --- | --- | --- | --- |")
        for loss, c, f in both:
            cs, fs = med(c, "false_positive_suspicions"), med(f, "false_positive_suspicions")
            print(f"| {float(loss):.0%} | {len(c)} / {len(f)} | {fmt(cs)} / {fmt(fs)} | {fmt(cs and cs / 100)} / {fmt(fs and fs / 100)} "
                  f"| {fmt(mx(c, 'false_positive_failures'))} / {fmt(mx(f, 'false_positive_failures'))} |")
    rs = load(out, "partition_s*")
    if rs:
        print(f"\npartition 25/25 for 120 s: one view everywhere {fmt(med(rs, 'partition_heal_ms'))} ms (max {fmt(mx(rs, 'partition_heal_ms'))}) after the heal, {len(rs)} seeds")
    rs = load(out, "churn_s*")
    if rs:
        r = rs[0]
        print(f"churn: {r['churn_restarts']:,} restarts (same name, new address), accepted everywhere p50 {fmt(r['churn_accept_ms_p50'])} ms "
              f"p99 {fmt(r['churn_accept_ms_p99'])} ms, {r['churn_unaccepted']:,} restarted again before everyone had them, "
              f"table ≤ {r['max_table_ratio']:.2f}× live members, {r['version_regressions']} version regressions, wall {r['wall_ms'] / 1000:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results/sim")
