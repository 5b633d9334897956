#!/usr/bin/env python3
"""A userspace Ethernet switch between network namespaces that can delay, jitter, duplicate
and drop frames per link: the fault tests' stand-in for `tc netem`, which this kernel lacks.

Run it inside the switch namespace the test made:

    ip netns exec PREFIX-sw python3 linkemu.py --prefix PREFIX --subnet S --hosts 1,2,3,100

For each host H it opens a TAP device, moves it into namespace PREFIX-hH as eth0 with address
10.S.0.H/24 and brings it up; then it prints "ready" and forwards frames (MAC learning,
flooding broadcasts and unknown destinations). Link rules arrive on stdin, one JSON object per
line, and apply to every frame from host FROM to host TO ("*" for any):

    {"from": 1, "to": "*", "delay_ms": 30, "jitter_ms": 25, "dup": 0.1, "loss": 0.05}
    {"clear": true}

A later rule for the same link replaces the earlier one. Jitter draws each frame's delay
uniformly from [delay - jitter, delay + jitter], so frames overtake each other (reordering).
Random choices come from a PRNG seeded by --seed. It exits when stdin closes (the test is
gone) or on SIGTERM, printing what it did on stderr. Python standard library only.
"""
import argparse
import fcntl
import heapq
import json
import os
import random
import selectors
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def ip(*args):
    subprocess.run(["ip", *args], check=True)


class Link:
    """The fault settings of one direction between two hosts."""

    __slots__ = ("delay", "jitter", "dup", "loss")

    def __init__(self, rule):
        self.delay = float(rule.get("delay_ms", 0)) / 1000.0
        self.jitter = float(rule.get("jitter_ms", 0)) / 1000.0
        self.dup = float(rule.get("dup", 0))
        self.loss = float(rule.get("loss", 0))


class Switch:
    def __init__(self, hosts, seed):
        self.hosts = hosts
        self.rng = random.Random(seed)
        self.taps = {}  # host -> fd
        self.host_of_fd = {}
        self.where = {}  # MAC -> host
        self.links = {}  # (from, to) -> Link
        self.queue = []  # (due, seq, to, frame)
        self.seq = 0
        self.counts = {"forwarded": 0, "dropped": 0, "duplicated": 0, "delayed": 0}

    def attach(self, prefix, subnet):
        for host in self.hosts:
            name = f"tap{host}"
            fd = open_tap(name)
            ns = f"{prefix}-h{host}"
            ip("link", "set", name, "netns", ns)
            ip("-n", ns, "link", "set", name, "name", "eth0")
            ip("-n", ns, "addr", "add", f"10.{subnet}.0.{host}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            self.taps[host] = fd
            self.host_of_fd[fd] = host

    def apply(self, rule):
        if rule.get("clear"):
            self.links.clear()
            return
        sources = self.hosts if rule.get("from", "*") == "*" else [int(rule["from"])]
        targets = self.hosts if rule.get("to", "*") == "*" else [int(rule["to"])]
        link = Link(rule)
        for a in sources:
            for b in targets:
                if a != b:
                    self.links[(a, b)] = link

    def receive(self, fd):
        src = self.host_of_fd[fd]
        while True:
            try:
                frame = os.read(fd, 65536)
            except BlockingIOError:
                return
            if len(frame) < 14:
                continue
            self.where[frame[6:12]] = src
            dst_mac = frame[0:6]
            dst = self.where.get(dst_mac)
            if dst_mac[0] & 1 or dst is None:
                targets = [h for h in self.hosts if h != src]
            elif dst == src:
                continue
            else:
                targets = [dst]
            now = time.monotonic()
            for dst in targets:
                self.route(now, src, dst, frame)

    def route(self, now, src, dst, frame):
        link = self.links.get((src, dst))
        if link is None:
            self.push(now, dst, frame)
            return
        if link.loss and self.rng.random() < link.loss:
            self.counts["dropped"] += 1
            return
        copies = 2 if link.dup and self.rng.random() < link.dup else 1
        if copies == 2:
            self.counts["duplicated"] += 1
        for _ in range(copies):
            delay = link.delay
            if link.jitter:
                delay += self.rng.uniform(-link.jitter, link.jitter)
            if delay > 0:
                self.counts["delayed"] += 1
            self.push(now + max(0.0, delay), dst, frame)

    def push(self, due, dst, frame):
        self.seq += 1
        heapq.heappush(self.queue, (due, self.seq, dst, frame))

    def flush(self):
        now = time.monotonic()
        while self.queue and self.queue[0][0] <= now:
            _, _, dst, frame = heapq.heappop(self.queue)
            try:
                os.write(self.taps[dst], frame)
                self.counts["forwarded"] += 1
            except OSError:
                self.counts["dropped"] += 1

    def next_wait(self):
        if not self.queue:
            return 0.1
        return max(0.0, min(0.1, self.queue[0][0] - time.monotonic()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--subnet", type=int, required=True)
    parser.add_argument("--hosts", required=True, help="comma-separated host numbers")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    switch = Switch([int(h) for h in args.hosts.split(",")], args.seed)
    switch.attach(args.prefix, args.subnet)
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    selector = selectors.DefaultSelector()
    for fd in switch.taps.values():
        selector.register(fd, selectors.EVENT_READ, "tap")
    stdin = sys.stdin.fileno()
    os.set_blocking(stdin, False)
    selector.register(stdin, selectors.EVENT_READ, "control")
    pending = b""
    print("ready", flush=True)
    while running:
        for key, _ in selector.select(switch.next_wait()):
            if key.data == "tap":
                switch.receive(key.fd)
                continue
            try:
                chunk = os.read(stdin, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                running = False
                break
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    try:
                        switch.apply(json.loads(line))
                    except (ValueError, KeyError, TypeError) as error:
                        print(f"linkemu: bad rule {line!r}: {error}", file=sys.stderr, flush=True)
        switch.flush()
    print(f"linkemu: {json.dumps(switch.counts)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
