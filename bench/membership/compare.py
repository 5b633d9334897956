#!/usr/bin/env python3
"""Serf vs colony gossip membership, side by side on loopback (127.0.0.x only).

README
======
Runs the same scenarios against HashiCorp Serf (Debian package `serf`) and colony client agents
(`target/release/colony agent`), alternating run by run (serf, colony, serf, colony, ...), and
writes per-run JSON lines plus medians and colony/serf ratios.

    bench/membership/run.sh                                         # default scenario, N=5,20,50 x 3
    bench/membership/run.sh --scenario starve  --sizes 20 --runs 2  # 1.6 s SIGSTOP of every 2 s, 30 s
    bench/membership/run.sh --scenario pause8s --sizes 20 --runs 2  # one 8 s SIGSTOP
    bench/membership/run.sh --system colony --sizes 5 --runs 1      # quick smoke test, one system
    python3 bench/membership/compare.py --summarize bench-results/membership/DIR/runs.jsonl

Pass the same `--out DIR` to several invocations to collect all scenarios in one runs.jsonl and
one summary (summary.md, summary.json are rewritten from every run in DIR/runs.jsonl).
Default output: bench-results/membership/<UTC time>/ with runs.jsonl, summary.{md,json}, and the
agents' logs (each line prefixed with the driver's monotonic receive time) under logs/.

Scenarios (per run, fresh agents):
  default  start N agents, every non-seed agent joins agent 0 at t0 (serf: RPC join; colony:
           PUT /v1/agent/join/<seed>, fired concurrently from threads behind a barrier);
           converge_s = t0 until every agent has seen every member alive; settle; steady-state
           window (RSS, CPU, UDP/TCP traffic per agent); SIGKILL one agent and time until each
           survivor logs it failed (detect_*), first suspicion of it (first_suspect_s).
  starve   after convergence, SIGSTOP one member (the same index for both systems) for
           --stop-ms of every --period-ms during --secs (default 1600 of 2000 ms for 30 s):
           false failures of healthy members, failures/suspicions of the starved one, refutations.
  pause8s  the same with one 8 s stop in a 10 s cycle: declared failed? and the time from
           SIGCONT until every healthy agent lists the member alive again.

How events are read. Serf: its log lines (EventMemberJoin/Failed/Leave, memberlist's
"Suspect X has failed, no acks received" which only the prober logs, once per failed probe,
"Refuting a suspect message"); traffic from memberlist's statsd counters (as
../shared/bench/serf/harness.py, which this script imports). Colony: JSON log lines on stderr
("member alive|suspected|failed|left", "refuted a suspicion of this node"); a "member suspected"
line is logged by EVERY agent that learns the suspicion, not only by the prober, so suspicion
counts are given per system under different names (see starve_fields); traffic from the Stats
counters of GET /v1/colony/members, which refresh about once a second: the window's two samples
are taken right after a refresh is seen, so the rate is over two known publish instants.

The machine may be shared: before each run the driver waits (up to --idle-wait s) until the CPUs
were --min-idle idle over 2 s, and records cpu_idle_before/cpu_idle_during, the 1-minute load and
(colony) the binary's mtime in every run line.

Ports: serf gossip 27946 and RPC 27373 on 127.0.0.<100+i>; colony gossip 28946 on
127.0.0.<100+i> and HTTP 127.0.0.1:<28500+i>. Only processes this script started are signalled,
by PID. Standard library only.
"""
import argparse
import http.client
import json
import os
import random
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "..", "shared", "bench", "serf"))
import harness as serf  # noqa: E402  (the shared serf harness: Agent, Cluster, Rpc, helpers)

COLONY_BIN = os.path.join(REPO, "target", "release", "colony")
RE_LEAVE = re.compile(r"EventMemberLeave: (\S+) ")
SCENARIOS = {  # name -> (stop_ms, period_ms, secs, settle_s) of the SIGSTOP/SIGCONT cycle
    "starve": (1600, 2000, 30.0, 8.0),
    "pause8s": (8000, 10000, 10.0, 12.0),
}


def log(msg):
    """Print one progress line with the wall-clock time."""
    print("%s %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def med(xs):
    """Median of the non-None values, or None."""
    return serf.med(xs)


def rnd(x, nd=3):
    """Round a float for the JSON output (None stays None)."""
    return None if x is None else round(x, nd)


# ---------------------------------------------------------------- serf side
class SerfAgent(serf.Agent):
    """The shared harness's serf agent, plus a uniform event list (t, kind, member)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.events = []

    def on_line(self, t, line):
        """Let the harness parse the line, then record it as a uniform event."""
        super().on_line(t, line)
        s = line.decode(errors="replace")
        for rx, kind in ((serf.RE_JOIN, "alive"), (serf.RE_FAIL, "failed"),
                         (serf.RE_SUSPECT, "suspect"), (RE_LEAVE, "left")):
            m = rx.search(s)
            if m:
                self.events.append((t, kind, m.group(1)))
                return
        if serf.RE_REFUTE.search(s):
            self.events.append((t, "refute", self.name))


class SerfCluster(serf.Cluster):
    """N serf agents (the shared harness's cluster) with the uniform measuring interface."""

    system = "serf"

    def __init__(self, n, args):
        """Create (not start) n agents on 127.0.0.<ip_start+i>:27946, RPC :27373."""
        self.n = n
        self.args = types.SimpleNamespace(keep_logs=True, timeout=args.timeout)
        self.workdir = tempfile.mkdtemp(prefix="serfbench-")
        self.sel = selectors.DefaultSelector()
        self.agents = []
        for i in range(n):
            a = SerfAgent(i, "127.0.0.%d" % (args.ip_start + i), args.serf_port,
                          args.serf_rpc_port, self.workdir, "", {})
            self.agents.append(a)
            self.sel.register(a.statsd, selectors.EVENT_READ, ("stats", a))

    def traffic_begin(self):
        """Start a traffic window: reset the statsd-fed counters."""
        for a in self.agents:
            a.ctr = {}
        return time.monotonic()

    def traffic_end(self, tw0):
        """End the window: per-agent rates (udp_tx_pps, udp_tx_Bps, udp_rx_pps, tcp_tx_Bps)."""
        tw = time.monotonic() - tw0
        def rate(a, proto, d, i):
            return a.ctr.get((proto, d), [0, 0.0])[i] / tw
        return [{"udp_tx_pps": rate(a, "udp", "sent", 0), "udp_tx_Bps": rate(a, "udp", "sent", 1),
                 "udp_rx_pps": rate(a, "udp", "received", 0), "tcp_tx_Bps": rate(a, "tcp", "sent", 1),
                 "window_s": tw} for a in self.agents]

    def counters(self, agents):
        """Serf has no per-agent protocol counters over RPC here: empty dicts."""
        return {a.name: {} for a in agents}

    def stop_into(self, dest):
        """Kill the agents we started and move their logs to dest."""
        self.stop()
        move_logs(self.workdir, dest)


# ---------------------------------------------------------------- colony side
def http_call(hostport, method, path, timeout=2.0):
    """One HTTP request; returns (status, body bytes) or (None, error text)."""
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read()
    except OSError as e:
        return None, str(e)
    finally:
        conn.close()


class ColonyAgent:
    """One `colony agent` process (client agent, membership only) and what its log said."""

    MESSAGES = {"member alive": "alive", "member suspected": "suspect", "member failed": "failed",
                "member left": "left", "member reaped": "reaped",
                "refuted a suspicion of this node": "refute"}

    def __init__(self, idx, ip, port, http_port, workdir, expected_addrs):
        self.idx, self.ip = idx, ip
        self.name = "n%02d" % idx
        self.addr = "%s:%d" % (ip, port)
        self.http = "127.0.0.1:%d" % http_port
        self.expected_addrs = expected_addrs  # name -> gossip address, shared by the cluster
        self.logf = open(os.path.join(workdir, self.name + ".log"), "wb")
        self.cmd = [COLONY_BIN, "agent", "--node", self.name, "--http-addr", self.http,
                    "--bind", self.addr, "--log-json", "--log-level", "info"]
        self.proc, self.partial, self.ready = None, b"", False
        self.alive = {self.name}  # members in the list and not failed/left (self included)
        self.join_at, self.failed_at = {}, {}
        self.events = []          # (t, kind, member)
        self.odd = []             # lines worth a look: non-JSON, WARN/ERROR other than "member failed", bad addr

    def start(self):
        """Start the process (stderr merged into a non-blocking stdout pipe)."""
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        serf.STARTED.append(self.proc)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def on_line(self, t, line):
        """Log the line with the driver's time and record the membership event it reports."""
        self.logf.write(("%.6f " % t).encode() + line + b"\n")
        try:
            d = json.loads(line)
            f = d.get("fields", {})
        except ValueError:
            self.odd.append((t, "non-JSON: " + line.decode(errors="replace")[:200]))
            return
        kind = self.MESSAGES.get(f.get("message"))
        member = self.name if kind == "refute" else f.get("member")
        if d.get("level") in ("WARN", "ERROR") and kind != "failed":
            self.odd.append((t, "%s %s" % (d.get("level"), json.dumps(f)[:200])))
        if kind is None:
            return
        self.events.append((t, kind, member))
        self.apply_event(t, kind, member, f.get("addr"))

    def apply_event(self, t, kind, member, addr):
        """Update the alive set and first-failure / latest-join times."""
        if kind == "alive":
            self.alive.add(member)
            self.join_at[member] = t
            want = self.expected_addrs.get(member)
            if addr not in (want, "Some(%s)" % want):
                self.odd.append((t, "member alive %s with addr %s, expected %s" % (member, addr, want)))
        elif kind in ("failed", "left"):
            self.alive.discard(member)
            if kind == "failed":
                self.failed_at.setdefault(member, t)

    def check_ready(self):
        """True once GET /v1/agent/members answers 200."""
        if not self.ready:
            self.ready = http_call(self.http, "GET", "/v1/agent/members", 0.5)[0] == 200
        return self.ready

    def view(self):
        """GET /v1/colony/members as a dict (None on failure)."""
        st, body = http_call(self.http, "GET", "/v1/colony/members")
        return json.loads(body) if st == 200 else None


class ColonyCluster(serf.Cluster):
    """N colony client agents; reuses the serf harness's log pump and wait_until."""

    system = "colony"

    def __init__(self, n, args):
        """Create (not start) n agents: gossip 127.0.0.<ip_start+i>:28946, HTTP 127.0.0.1:28500+i."""
        self.n, self.args = n, args
        self.workdir = tempfile.mkdtemp(prefix="colonybench-")
        self.sel = selectors.DefaultSelector()
        self.expected = {}
        self.agents = []
        for i in range(n):
            a = ColonyAgent(i, "127.0.0.%d" % (args.ip_start + i), args.colony_port,
                            args.colony_http_port + i, self.workdir, self.expected)
            self.expected[a.name] = a.addr
            self.agents.append(a)
        self.join_results = []

    def start(self):
        """Start every agent and wait until each HTTP API answers."""
        for a in self.agents:
            a.start()
            self.sel.register(a.proc.stdout, selectors.EVENT_READ, ("log", a))
        end = time.monotonic() + 60
        while not all(a.check_ready() for a in self.agents):
            if time.monotonic() > end:
                bad = [a.name for a in self.agents if not a.ready]
                raise RuntimeError("colony agents not ready: %s (logs in %s)" % (bad, self.workdir))
            self.pump(0.05)

    def join_all(self):
        """PUT /v1/agent/join/<seed> on every non-seed agent at once; returns t0."""
        seed = self.agents[0].addr
        barrier = threading.Barrier(self.n)
        def join(a):
            barrier.wait()
            self.join_results.append(http_call(a.http, "PUT", "/v1/agent/join/" + seed, 30.0)[0])
        self.threads = [threading.Thread(target=join, args=(a,), daemon=True) for a in self.agents[1:]]
        for th in self.threads:
            th.start()
        barrier.wait()
        return time.monotonic()

    def sample_fresh(self, agents, timeout=2.5):
        """Per agent (t, view) taken just after its counters were republished (t = when seen)."""
        base = {a.name: (a.view() or {}).get("Stats") for a in agents}
        out, end = {}, time.monotonic() + timeout
        while len(out) < len(agents) and time.monotonic() < end:
            for a in agents:
                if a.name not in out:
                    v, t = a.view(), time.monotonic()
                    if v is not None and v.get("Stats") != base[a.name]:
                        out[a.name] = (t, v)
            self.pump(0.02)
        for a in agents:  # never refreshed: take a late sample rather than nothing
            out.setdefault(a.name, (time.monotonic(), a.view() or {}))
        return out

    def traffic_begin(self):
        """Start a traffic window: one fresh counter sample per agent."""
        self.window_start = self.sample_fresh(self.agents)
        return time.monotonic()

    def traffic_end(self, tw0):
        """End the window: per-agent rates from the two samples (each over its own interval)."""
        end = self.sample_fresh(self.agents)
        rows = []
        for a in self.agents:
            (t0, v0), (t1, v1) = self.window_start[a.name], end[a.name]
            s0, s1, dt = v0.get("Stats", {}), v1.get("Stats", {}), t1 - t0
            d = lambda k: (s1.get(k, 0) - s0.get(k, 0)) / dt
            rows.append({"udp_tx_pps": d("PacketsOut"), "udp_tx_Bps": d("BytesOut"),
                         "udp_rx_pps": d("PacketsIn"), "tcp_tx_Bps": d("StreamBytesOut"),
                         "tcp_tx_streams_per_s": d("StreamsOut"), "window_s": dt,
                         "awareness": v1.get("Awareness"), "decode_errors": v1.get("DecodeErrors")})
        return rows

    def counters(self, agents):
        """Current Stats (plus Awareness, DecodeErrors) of the given agents, by name."""
        out = {}
        for a in agents:
            v = a.view() or {}
            out[a.name] = dict(v.get("Stats", {}), Awareness=v.get("Awareness"),
                               DecodeErrors=v.get("DecodeErrors"))
        return out

    def stop_into(self, dest):
        """Kill the agents we started, close logs and move them to dest."""
        serf.kill_started()
        for a in self.agents:
            a.logf.close()
        move_logs(self.workdir, dest)


CLUSTERS = {"serf": SerfCluster, "colony": ColonyCluster}


def move_logs(workdir, dest):
    """Move a run's temporary log directory to dest (replacing it)."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(workdir, dest)


# ---------------------------------------------------------------- scenario pieces
def events_of(agents, kind, member=None, since=0.0, exclude=None):
    """Events (t, observer, member) of one kind, optionally about one member / excluding one."""
    return [(t, a.name, m) for a in agents for (t, k, m) in a.events
            if k == kind and t >= since and (member is None or m == member)
            and (exclude is None or m != exclude)]


def converge(c, res):
    """Join everybody at t0 and measure convergence (fills res); returns True if converged."""
    names = {a.name for a in c.agents}
    t0 = c.join_all()
    tconv = c.wait_until(lambda: all(a.alive >= names for a in c.agents), c.args.timeout)
    res["converge_s"] = rnd(None if tconv is None else tconv - t0)
    res["converge_timeout"] = tconv is None
    per_agent = [max(a.join_at.get(x, t0) for x in names if x != a.name) - t0
                 for a in c.agents if a.alive >= names]
    res["converge_median_agent_s"] = rnd(med(per_agent))
    late = [[a.name, x, round(a.join_at[x] - t0, 2)] for a in c.agents for x in names
            if x != a.name and x in a.join_at and a.join_at[x] - t0 > 2.0]
    res["late_joins"] = sorted(late, key=lambda e: e[2])[:20]
    res["late_join_count"] = len(late)
    if tconv is None:
        res["missing_at_timeout"] = sorted([a.name, x] for a in c.agents for x in names - a.alive)[:20]
    return tconv is not None


def steady_window(c, res, args):
    """Settle, then measure traffic, CPU and RSS per agent over --steady seconds."""
    c.pump(args.settle)
    tw0 = c.traffic_begin()
    cpu0 = [serf.cpu_ticks(a.proc.pid) for a in c.agents]
    c.pump(args.steady)
    cpu1 = [serf.cpu_ticks(a.proc.pid) for a in c.agents]
    tw = time.monotonic() - tw0
    rows = c.traffic_end(tw0)
    rss = [serf.rss_kb(a.proc.pid) for a in c.agents]
    res["rss_kb_median"] = med(rss)
    res["rss_kb_max"] = max(r for r in rss if r)
    res["cpu_pct_median"] = rnd(med([100.0 * (b - a) / serf.CLK_TCK / tw for a, b in zip(cpu0, cpu1)]))
    for k in ("udp_tx_pps", "udp_tx_Bps", "udp_rx_pps", "tcp_tx_Bps", "window_s"):
        res[k + "_median"] = rnd(med([r[k] for r in rows]))
    res["udp_tx_Bps_max"] = rnd(max(r["udp_tx_Bps"] for r in rows))
    if c.system == "colony":
        res["awareness_max"] = max((r["awareness"] or 0) for r in rows)
        res["decode_errors_total"] = sum((r["decode_errors"] or 0) for r in rows)


def detect(c, res, victim_idx, args):
    """SIGKILL one agent; time until each survivor logs it failed; count false failures."""
    victim = c.agents[victim_idx]
    survivors = [a for a in c.agents if a is not victim]
    tk = time.monotonic()
    os.kill(victim.proc.pid, signal.SIGKILL)
    tall = c.wait_until(lambda: all(victim.name in a.failed_at for a in survivors), args.detect_timeout)
    det = [a.failed_at[victim.name] - tk for a in survivors if victim.name in a.failed_at]
    res["victim"] = victim.name
    res["detect_all_s"] = rnd(None if tall is None else tall - tk)
    res["detect_first_s"] = rnd(min(det) if det else None)
    res["detect_median_s"] = rnd(med(det))
    sus = [t for (t, _, _) in events_of(survivors, "suspect", victim.name, since=tk)]
    res["first_suspect_s"] = rnd((min(sus) - tk) if sus else None)
    c.pump(1.0)  # late lines
    res["false_failed_events"] = len(events_of(c.agents, "failed", exclude=victim.name))
    res["false_suspect_lines"] = len(events_of(c.agents, "suspect", exclude=victim.name))
    res["refute_lines"] = len(events_of(c.agents, "refute"))


def recovery_time(healthy, slow, since, t_cont, kinds):
    """Seconds from t_cont until the last healthy agent that had `slow` in one of `kinds`
    (after `since`) logged it alive again; 0 if none did; None if one still has it so."""
    latest = []
    for a in healthy:
        evs = [(t, k) for (t, k, m) in a.events if m == slow and t >= since and k in kinds | {"alive"}]
        if not any(k in kinds for _, k in evs):
            continue
        if evs[-1][1] != "alive":
            return None
        latest.append(evs[-1][0])
    return round(max(0.0, max(latest) - t_cont), 3) if latest else 0.0


def duty_cycle(c, slow, stop_s, period_s, secs):
    """SIGSTOP/SIGCONT `slow` for stop_s of every period_s during secs; returns last SIGCONT time."""
    end = time.monotonic() + secs
    t_cont = None
    while time.monotonic() < end:
        os.kill(slow.proc.pid, signal.SIGSTOP)
        c.pump(stop_s)
        os.kill(slow.proc.pid, signal.SIGCONT)
        t_cont = time.monotonic()
        c.pump(max(0.0, period_s - stop_s))
    return t_cont


def counter_delta(before, after, key, names):
    """Sum over `names` of after[name][key] - before[name][key] (None if no counters)."""
    vals = [after[n].get(key) - before[n].get(key) for n in names
            if after.get(n, {}).get(key) is not None and before.get(n, {}).get(key) is not None]
    return sum(vals) if vals else None


def starve_fields(c, res, slow, healthy, ts, t_cont, before, after):
    """Fill the starve/pause8s figures from the events since ts and the counter deltas."""
    hn = [a.name for a in healthy]
    res["false_failed_of_healthy"] = len(events_of(c.agents, "failed", since=ts, exclude=slow.name))
    res["failed_events_of_slow"] = len(events_of(healthy, "failed", slow.name, since=ts))
    res["healthy_agents_that_marked_slow_failed"] = len({o for (_, o, _) in events_of(healthy, "failed", slow.name, since=ts)})
    res["declared_failed"] = res["failed_events_of_slow"] > 0
    # serf: prober lines "Suspect X has failed, no acks received" (one per failed probe);
    # colony: "member suspected" notices, one per observer that learns the suspicion.
    res["suspect_lines_of_slow"] = len(events_of(healthy, "suspect", slow.name, since=ts))
    res["suspect_lines_of_healthy"] = len(events_of(c.agents, "suspect", since=ts, exclude=slow.name))
    res["healthy_agents_that_suspected_slow"] = len({o for (_, o, _) in events_of(healthy, "suspect", slow.name, since=ts)})
    res["suspect_lines_by_slow"] = len(events_of([slow], "suspect", since=ts))
    res["refutes_by_slow"] = len(events_of([slow], "refute", since=ts))
    res["refutes_by_healthy"] = len(events_of(healthy, "refute", since=ts))
    res["alive_everywhere_after_last_resume_s"] = recovery_time(healthy, slow.name, ts, t_cont, {"failed"})
    res["rejoined_everywhere"] = all(slow.name in a.alive for a in healthy)
    if c.system == "serf":
        res["failed_probes_by_healthy"] = sum(1 for (_, o, _) in events_of(healthy, "suspect", since=ts))
        res["max_health_score_slow"] = slow.max_health
        res["max_health_score_healthy"] = max(a.max_health for a in healthy)
    else:
        res["unsuspected_everywhere_after_last_resume_s"] = recovery_time(
            healthy, slow.name, ts, t_cont, {"failed", "suspect"})
        res["failed_probes_by_healthy"] = counter_delta(before, after, "ProbesFailed", hn)
        res["suspicions_raised_by_healthy"] = counter_delta(before, after, "SuspicionsRaised", hn)
        res["suspicions_raised_by_slow"] = counter_delta(before, after, "SuspicionsRaised", [slow.name])
        res["refutations_counter_slow"] = counter_delta(before, after, "Refutations", [slow.name])
        res["awareness_slow_end"] = after.get(slow.name, {}).get("Awareness")


# ---------------------------------------------------------------- runs
def run_default(system, n, r, args, pick, logdir):
    """One default-scenario run of one system; returns its result dict."""
    c = CLUSTERS[system](n, args)
    res = {"scenario": "default", "system": system, "n": n, "run": r}
    try:
        c.start()
        converge(c, res)
        if system == "colony":
            for th in c.threads:
                th.join(5)
            res["join_http_non_200"] = sum(1 for s in c.join_results if s != 200)
        steady_window(c, res, args)
        detect(c, res, pick, args)
        add_odd(c, res)
    finally:
        c.stop_into(logdir)
    return res


def run_pause(system, n, r, args, pick, logdir):
    """One starve/pause8s run of one system; returns its result dict."""
    stop_ms, period_ms, secs, settle = SCENARIOS[args.scenario]
    stop_ms, period_ms = args.stop_ms or stop_ms, args.period_ms or period_ms
    secs, settle = args.secs or secs, args.pause_settle or settle
    c = CLUSTERS[system](n, args)
    res = {"scenario": args.scenario, "system": system, "n": n, "run": r,
           "stop_ms": stop_ms, "period_ms": period_ms, "secs": secs}
    try:
        c.start()
        if not converge(c, res):
            raise RuntimeError("%s n=%d did not converge" % (system, n))
        c.pump(settle)
        slow = c.agents[pick]
        healthy = [a for a in c.agents if a is not slow]
        before = c.counters(c.agents)
        for a in c.agents:
            a.max_health = 0.0
        ts = time.monotonic()
        t_cont = duty_cycle(c, slow, stop_ms / 1000.0, period_ms / 1000.0, secs)
        c.wait_until(lambda: all(slow.name in a.alive for a in healthy), settle)
        c.pump(settle)  # let in-flight suspicions resolve
        after = c.counters(c.agents)
        res["slow"] = slow.name
        starve_fields(c, res, slow, healthy, ts, t_cont, before, after)
        add_odd(c, res)
    finally:
        c.stop_into(logdir)
    return res


def add_odd(c, res):
    """Colony only: count (and sample) log lines that look wrong."""
    if c.system != "colony":
        return
    odd = [(a.name, round(t, 3), s) for a in c.agents for (t, s) in a.odd]
    res["odd_log_lines"] = len(odd)
    res["odd_log_samples"] = odd[:5]


def pick_member(seed, scenario, n, r):
    """The victim / starved member index for (n, run): the same for both systems."""
    return random.Random("%s-%s-%d-%d" % (seed, scenario, n, r)).randrange(1, n)


def loadavg():
    """The 1-minute load average."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_times():
    """(idle, total) jiffies of all CPUs from /proc/stat (idle includes iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)


def idle_since(t0):
    """Fraction of CPU time idle since the cpu_times() sample t0."""
    i1, t1 = cpu_times()
    return round((i1 - t0[0]) / max(1, t1 - t0[1]), 3)


def wait_for_idle(min_idle, max_wait):
    """Block until the CPUs were at least min_idle idle over 2 s (gives up after max_wait s).
    The machine is shared: this keeps runs out of other people's builds. Returns the last idle."""
    end, idle = time.monotonic() + max_wait, None
    while True:
        t0 = cpu_times()
        time.sleep(2.0)
        idle = idle_since(t0)
        if idle >= min_idle or time.monotonic() > end:
            return idle
        log("machine busy (%.0f%% idle); waiting before the next run" % (100 * idle))
        time.sleep(8.0)


def progress_line(res):
    """One short human line for a finished run."""
    keys = ("converge_s", "detect_all_s", "first_suspect_s", "rss_kb_median", "udp_tx_pps_median",
            "udp_tx_Bps_median", "false_failed_events", "declared_failed", "failed_events_of_slow",
            "false_failed_of_healthy", "refutes_by_slow", "alive_everywhere_after_last_resume_s")
    shown = " ".join("%s=%s" % (k, res[k]) for k in keys if k in res)
    return "done %s %s n=%d run=%d: %s" % (res["scenario"], res["system"], res["n"], res["run"], shown)


def run_all(args, outdir):
    """All (size, run, system) combinations, alternating systems run by run."""
    sizes = [int(x) for x in args.sizes.split(",")]
    systems = ["serf", "colony"] if args.system == "both" else [args.system]
    runner = run_default if args.scenario == "default" else run_pause
    path = os.path.join(outdir, "runs.jsonl")
    for n in sizes:
        for r in range(args.runs):
            pick = pick_member(args.seed, args.scenario, n, r)
            for system in systems:
                logdir = os.path.join(outdir, "logs", "%s-%s-n%d-r%d" % (args.scenario, system, n, r))
                idle0 = wait_for_idle(args.min_idle, args.idle_wait)
                log("start %s %s n=%d run=%d/%d" % (args.scenario, system, n, r + 1, args.runs))
                load0, cpu0 = loadavg(), cpu_times()
                try:
                    res = runner(system, n, r, args, pick, logdir)
                except Exception as e:  # record and go on with the next run
                    res = {"scenario": args.scenario, "system": system, "n": n, "run": r, "error": str(e)}
                res["logs"] = os.path.relpath(logdir, REPO)
                res["loadavg_1m_start_end"] = [load0, loadavg()]  # the machine is shared: note its load
                res["cpu_idle_before"], res["cpu_idle_during"] = idle0, idle_since(cpu0)
                if system == "colony":  # another build may replace the binary between runs
                    res["colony_bin_mtime"] = time.strftime("%H:%M:%S", time.gmtime(os.path.getmtime(COLONY_BIN)))
                with open(path, "a") as f:
                    f.write(json.dumps(res) + "\n")
                log(progress_line(res) if "error" not in res else "FAILED %s" % res)
                time.sleep(1.0)
    return path


# ---------------------------------------------------------------- summary
def load_runs(paths):
    """Every run dict from the given runs.jsonl files."""
    return [json.loads(line) for p in paths for line in open(p) if line.strip()]


SKIP = ("n", "run", "stop_ms", "period_ms", "secs", "cpu_idle_before", "cpu_idle_during")  # parameters, not figures


def medians(runs):
    """{(scenario, n, system): {figure: median}} over the runs' numeric/bool figures."""
    groups = {}
    for r in runs:
        if "error" in r:
            continue
        groups.setdefault((r["scenario"], r["n"], r["system"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        figs = {k for r in rs for k, v in r.items() if isinstance(v, (int, float)) and k not in SKIP}
        out[key] = {k: med([float(r[k]) if r.get(k) is not None else None for r in rs]) for k in sorted(figs)}
        out[key]["runs"] = len(rs)
    return out


def fmt(v):
    """Format a number for the markdown table."""
    if v is None:
        return "-"
    return "%.0f" % v if abs(v) >= 1000 else ("%.3g" % v if abs(v) < 10 else "%.1f" % v)


def summary_markdown(meds):
    """One table per scenario: figure | N | serf | colony | colony/serf."""
    lines = []
    for scenario in sorted({k[0] for k in meds}):
        lines += ["", "### %s (medians)" % scenario, "",
                  "| figure | N | serf | colony | colony / serf |", "|---|---|---|---|---|"]
        for n in sorted({k[1] for k in meds if k[0] == scenario}):
            s, c = meds.get((scenario, n, "serf"), {}), meds.get((scenario, n, "colony"), {})
            for fig in sorted(set(s) | set(c)):
                a, b = s.get(fig), c.get(fig)
                ratio = fmt(b / a) if a and b is not None else "-"
                lines.append("| %s | %d | %s | %s | %s |" % (fig, n, fmt(a), fmt(b), ratio))
    return "\n".join(lines) + "\n"


def write_summary(paths, outdir):
    """Write summary.json and summary.md next to the runs and print the markdown."""
    runs = load_runs(paths)
    meds = medians(runs)
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump([{"scenario": k[0], "n": k[1], "system": k[2], "medians": v}
                   for k, v in sorted(meds.items())], f, indent=1)
    md = summary_markdown(meds)
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write(md)
    print(md, flush=True)


# ---------------------------------------------------------------- main
def parse_args():
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", default="both", choices=["both", "serf", "colony"])
    ap.add_argument("--scenario", default="default", choices=["default", "starve", "pause8s"])
    ap.add_argument("--sizes", default="5,20,50")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0, help="convergence timeout (s)")
    ap.add_argument("--detect-timeout", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=3.0, help="default scenario: wait before the window")
    ap.add_argument("--steady", type=float, default=30.0, help="steady-state window (s)")
    ap.add_argument("--stop-ms", type=int, default=0, help="override the scenario's SIGSTOP length")
    ap.add_argument("--period-ms", type=int, default=0, help="override the scenario's cycle")
    ap.add_argument("--secs", type=float, default=0, help="override the scenario's duration")
    ap.add_argument("--pause-settle", type=float, default=0, help="override starve/pause8s settle")
    ap.add_argument("--ip-start", type=int, default=100, help="agents use 127.0.0.<ip-start+i>")
    ap.add_argument("--serf-port", type=int, default=27946)
    ap.add_argument("--serf-rpc-port", type=int, default=27373)
    ap.add_argument("--colony-port", type=int, default=28946)
    ap.add_argument("--colony-http-port", type=int, default=28500, help="agent i: 127.0.0.1:<this+i>")
    ap.add_argument("--min-idle", type=float, default=0.8, help="wait before each run until CPUs are this idle")
    ap.add_argument("--idle-wait", type=float, default=1800, help="longest wait for an idle machine (s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="", help="result dir (default bench-results/membership/<UTC time>)")
    ap.add_argument("--summarize", nargs="+", metavar="RUNS_JSONL", help="only summarize these files")
    return ap.parse_args()


def preflight(args):
    """Refuse to start without the binaries or with too many agents for 127.0.0.x."""
    if args.system in ("both", "serf") and shutil.which("serf") is None:
        sys.exit("serf not found: apt-get update && apt-get install -y serf")
    if args.system in ("both", "colony") and not os.access(COLONY_BIN, os.X_OK):
        sys.exit("missing %s (build it: cargo build --release -p colony)" % COLONY_BIN)
    if args.ip_start + max(int(x) for x in args.sizes.split(",")) > 254:
        sys.exit("too many agents for 127.0.0.x")


def write_env(outdir, args):
    """Record versions, machine and arguments of this invocation."""
    ver = lambda cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.split("\n")[0]
    env = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
           "serf": ver(["serf", "version"]) if shutil.which("serf") else None,
           "colony": ver([COLONY_BIN, "--version"]), "nproc": os.cpu_count(),
           "loadavg": open("/proc/loadavg").read().strip()}
    with open(os.path.join(outdir, "env.jsonl"), "a") as f:
        f.write(json.dumps(env) + "\n")


def main():
    """Run the scenario for the chosen systems, then summarize the result dir."""
    args = parse_args()
    if args.summarize:
        write_summary(args.summarize, os.path.dirname(os.path.abspath(args.summarize[0])))
        return
    preflight(args)
    outdir = args.out or os.path.join(REPO, "bench-results", "membership", time.strftime("%Y%m%dT%H%M%S", time.gmtime()))
    os.makedirs(outdir, exist_ok=True)
    write_env(outdir, args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (serf.kill_started(), sys.exit(130)))
    log("results in %s" % outdir)
    try:
        path = run_all(args, outdir)
    finally:
        serf.kill_started()
    write_summary([path], outdir)


if __name__ == "__main__":
    main()
