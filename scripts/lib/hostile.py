#!/usr/bin/env python3
"""Every hostile-client attack of the hardening issue at once, against one
running msgbus on loopback, while a publisher keeps a ledger of every
acknowledged event and a prober times /health/live.

    hostile.py URL PID [--seconds N] [--ledger-out FILE] [--tokens]
    hostile.py URL --check FILE [--tokens]   (after a restart: the ledger again)

URL is msgbus's base URL (loopback only), PID its process id (peak RSS is
read from /proc/PID/status). Prints one line per attack with its answers,
then peak RSS, /health/live and publish latencies, and the ledger check
(every acknowledged event read back at its seq: none lost, none renumbered).
Exit 0 when the ledger holds and no attack got an answer it must not get,
1 otherwise. Standard library only; every loop stops at the deadline.

With --tokens the server requires tokens (scripts/hostile creates them):
the honest clients send the one in MSGBUS_HOSTILE_TOKEN, every attacker the
rate-limited one in MSGBUS_HOSTILE_ATTACKER_TOKEN, and one more attack sends
made-up tokens.
"""

import argparse
import collections
import http.client
import json
import multiprocessing
import os
import secrets
import socket
import sys
import threading
import time
import urllib.parse

PAD = "x" * 200


class Stats:
    """Answers per attack, and latencies per probe, shared by threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.status = collections.defaultdict(collections.Counter)
        self.latency = collections.defaultdict(list)
        self.findings = []

    def count(self, attack, status):
        with self.lock:
            self.status[attack][status] += 1

    def time(self, probe, seconds):
        with self.lock:
            self.latency[probe].append(seconds)

    def finding(self, what):
        with self.lock:
            if len(self.findings) < 50:
                self.findings.append(what)


class Client:
    """One keep-alive HTTP/1.1 connection, reopened after any error."""

    def __init__(self, host, port, timeout=30, token=None):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method, path, body=None, headers=None):
        headers = {**self.auth, **(headers or {})}
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.conn.request(method, path, body=body, headers=headers)
                res = self.conn.getresponse()
                data = res.read()
                if res.getheader("connection", "").lower() == "close":
                    self.close()
                return res.status, data
            except (BrokenPipeError, ConnectionResetError):
                # The server answered and closed before taking the whole
                # body (an early 413), or dropped the connection.
                self.close()
                return "closed while sending", b""
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 1:
                    return 0, b""
        return 0, b""

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


class Run:
    def __init__(self, url, pid, seconds, token=None, honest_token=None):
        u = urllib.parse.urlsplit(url)
        if not (u.hostname or "").startswith("127."):
            raise SystemExit("hostile.py: loopback addresses only")
        self.host, self.port, self.pid = u.hostname, u.port, pid
        self.deadline = time.monotonic() + seconds
        self.stats = Stats()
        self.ledger = {}  # id -> seq
        self.ledger_lock = threading.Lock()
        self.peak_rss_kb = 0
        self.phase = "attack"
        # The token every request of this run sends, and the honest
        # clients' one for the setup and the ledger check (None: no token).
        self.token = token
        self.honest_token = honest_token if honest_token is not None else token

    def client(self, timeout=30, token=None):
        return Client(self.host, self.port, timeout, token or self.token)

    def auth_line(self):
        """The Authorization header line of a raw request, or nothing."""
        return f"Authorization: Bearer {self.token}\r\n" if self.token else ""

    def running(self):
        return time.monotonic() < self.deadline

    def json_post(self, c, path, value, ctype="application/json"):
        return c.request("POST", path, json.dumps(value).encode(), {"Content-Type": ctype})

    # -- the honest clients ------------------------------------------------

    def publisher(self, n):
        c = self.client()
        i = 0
        while self.running():
            i += 1
            eid = f"ledger-{self.phase}-{n}-{i}"
            ev = {"type": "hostile.ledger", "source": f"/ledger/{n}", "id": eid, "data": {"i": i}}
            t0 = time.monotonic()
            status, body = self.json_post(c, "/events", ev)
            self.stats.time("publish", time.monotonic() - t0)
            self.stats.count("ledger publish", status)
            if status == 201:
                with self.ledger_lock:
                    self.ledger[(f"/ledger/{n}", eid)] = json.loads(body)["seq"]
            else:
                time.sleep(0.01)

    def prober(self):
        c = self.client(timeout=60)
        while self.running():
            t0 = time.monotonic()
            status, _ = c.request("GET", "/health/live")
            self.stats.time("live", time.monotonic() - t0)
            self.stats.count("health/live probe", status)
            time.sleep(0.05)

    def rss_watch(self):
        while self.running():
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.5)

    # -- setup: what the attacks read --------------------------------------

    def setup(self, types, big_events):
        c = self.client(timeout=120, token=self.honest_token)
        for start in range(0, types, 1000):
            batch = [
                {"type": f"hostile.many.t{k:06d}", "source": "/many", "id": f"many-{k}", "subject": f"s-{k}"}
                for k in range(start, min(types, start + 1000))
            ]
            status, _ = self.json_post(c, "/events/batch", batch)
            self.stats.count("setup: distinct types", status)
        big = "b" * (900 * 1024)
        for k in range(big_events):
            status, _ = self.json_post(
                c, "/events", {"type": "hostile.big", "source": "/big", "id": f"big-{k}", "data": big}
            )
            self.stats.count("setup: 900 KiB events", status)

    # -- attacks -----------------------------------------------------------

    def idle_connections(self, n):
        """Connections that send nothing, reopened when the server drops them."""
        socks = []
        while self.running():
            while len(socks) < n and self.running():
                try:
                    socks.append(socket.create_connection((self.host, self.port), timeout=5))
                    self.stats.count("idle connections", "opened")
                except OSError as e:
                    self.stats.count("idle connections", f"refused:{e.errno}")
                    time.sleep(0.5)
                    break
            time.sleep(1)
            alive = []
            for s in socks:
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        self.stats.count("idle connections", "closed by server")
                        s.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    self.stats.count("idle connections", "reset by server")
                    s.close()
                    continue
                alive.append(s)
            socks = alive
        for s in socks:
            s.close()

    def slow_headers(self):
        """Partial request headers, one byte a second."""
        while self.running():
            try:
                s = socket.create_connection((self.host, self.port), timeout=5)
                s.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\n")
                sent = 0
                while self.running():
                    s.sendall(b"X")
                    sent += 1
                    time.sleep(1)
                s.close()
                self.stats.count("slow headers", "still open at the end (younger than the timeout)")
            except OSError:
                self.stats.count("slow headers", "dropped by server")

    def big_pages(self):
        c = self.client(timeout=120)
        while self.running():
            status, body = c.request("GET", "/events?source=/big&limit=1000")
            self.stats.count("GET 1000 x 900 KiB page", status)

    def zero_batches(self):
        body = b"[" + b",".join([b"0"] * (8 << 20)) + b"]"  # 16 MiB
        c = self.client(timeout=120)
        while self.running():
            status, _ = c.request("POST", "/events/batch", body, {"Content-Type": "application/json"})
            self.stats.count("16 MiB batch of zeros", status)
            if status in (200, 201):
                self.stats.finding("a 16 MiB batch of zeros was accepted")

    def prefix_scans(self):
        c = self.client(timeout=120)
        while self.running():
            status, _ = c.request("GET", "/events?type_prefix=hostile.many.zzz&limit=1000")
            self.stats.count("non-matching type_prefix scan", status)

    def sse_subscribers(self, n):
        socks = []
        req = (
            f"GET /events/stream?type_prefix=hostile.nomatch. HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Accept: text/event-stream\r\n{self.auth_line()}\r\n"
        ).encode()
        for _ in range(n):
            try:
                s = socket.create_connection((self.host, self.port), timeout=5)
                s.sendall(req)
                # The status line: 200 for a stream, 429 past a cap
                # (--max-subscribers, a token's --max-streams-per-token).
                head = s.recv(64)
                status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.1 ") else "no answer"
                self.stats.count("SSE subscribers (non-matching)", status)
                if status == "200":
                    socks.append(s)
                else:
                    s.close()
            except TimeoutError:
                self.stats.count("SSE subscribers (non-matching)", "no answer within 5 s")
            except OSError:
                self.stats.count("SSE subscribers (non-matching)", "refused")
        while self.running():
            for s in socks:
                s.setblocking(False)
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
            time.sleep(0.5)
        for s in socks:
            s.close()

    def duplicates(self):
        c = self.client(timeout=120)
        big = {"type": "hostile.dup", "source": "/dup", "id": "dup-1", "data": "d" * (512 * 1024)}
        self.json_post(c, "/events", big)
        batch = json.dumps([big] * 20).encode()
        while self.running():
            status, _ = c.request("POST", "/events/batch", batch, {"Content-Type": "application/json"})
            self.stats.count("batch of 20 duplicates of a 512 KiB event", status)

    def consumers(self):
        """1,200 consumers (past the 1,000 limit) with the longest filters
        allowed, one with a 60 KB filter, and acks on them all the time."""
        c = self.client()
        fat = {"type_prefix": "t" * 60000}
        status, _ = c.request("PUT", "/consumers/hostile-fat", json.dumps(fat).encode(),
                              {"Content-Type": "application/json"})
        self.stats.count("consumer with a 60 KB filter", status)
        if status in (200, 201):
            self.stats.finding("a consumer with a 60 KB filter was accepted")
        long = {"type_prefix": "hostile." + "t" * 240, "source": "/" + "s" * 1000}
        for k in range(1200):
            if not self.running():
                return
            status, _ = c.request("PUT", f"/consumers/hostile-{k}", json.dumps(long).encode(),
                                  {"Content-Type": "application/json"})
            self.stats.count("create 1,200 consumers (limit 1,000)", status)
        k = 0
        while self.running():
            k += 1
            status, _ = c.request(
                "POST", f"/consumers/hostile-{k % 1000}/ack", json.dumps({"seq": 1 + k // 1000}).encode(),
                {"Content-Type": "application/json"}
            )
            self.stats.count("consumer ack", status)

    def malformed(self):
        """Requests that must be refused: each accepted one is a finding."""
        c = self.client()
        deep = ('["]",' * 5000) + "1" + ("]" * 5000)
        cases = [
            ("brackets in strings, 5,000 deep", "/events", json.dumps(
                {"type": "hostile.deep", "source": "/deep", "data": "X"}).replace('"X"', deep).encode(),
             {"Content-Type": "application/json"}),
            ("no Content-Type", "/events", b'{"type":"t","source":"/s"}', {}),
            ("cross-site browser POST", "/events", b'{"type":"t","source":"/s"}',
             {"Content-Type": "text/plain", "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}),
            ("10,000 invalid items", "/events/batch",
             json.dumps([{"type": ""}] * 10000).encode(), {"Content-Type": "application/json"}),
        ]
        while self.running():
            for name, path, body, headers in cases:
                status, data = c.request("POST", path, body, headers)
                self.stats.count(name, status)
                if status in (200, 201):
                    self.stats.finding(f"{name}: accepted with {status}")
                if len(data) > 1 << 20:
                    self.stats.finding(f"{name}: a {len(data)}-byte answer")
            time.sleep(0.2)

    def wrong_tokens(self):
        """Made-up tokens (a random id and secret each time), as fast as one
        connection goes: 401, then 429 once the address's failed
        authentications pass --auth-failure-rate. Never anything else."""
        c = Client(self.host, self.port, 30)
        ev = json.dumps({"type": "hostile.guess", "source": "/guess", "data": {}}).encode()
        while self.running():
            guess = f"mb_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}"
            status, _ = c.request("POST", "/events", ev, {"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {guess}"})
            self.stats.count("made-up tokens", status)
            if status not in (401, 429, 0, "closed while sending"):
                self.stats.finding(f"a made-up token was answered {status}")

    # -- the check ---------------------------------------------------------

    def check_ledger(self):
        c = self.client(timeout=120, token=self.honest_token)
        found = {}
        after = 0
        while True:
            status, body = c.request("GET", f"/events?after={after}&limit=1000&type=hostile.ledger")
            if status != 200:
                self.stats.finding(f"reading the ledger back: {status}")
                break
            page = json.loads(body)
            for item in page["events"]:
                ev = item["event"]
                found[(ev["source"], ev["id"])] = item["seq"]
            if not page["events"] or page["next_after"] == after:
                break
            after = page["next_after"]
        lost = [k for k in self.ledger if k not in found]
        renumbered = [k for k, seq in self.ledger.items() if k in found and found[k] != seq]
        return lost, renumbered


# Attack name -> (Run method, its arguments, how many threads run it).
ATTACKS = {
    "idle": ("idle_connections", (300,), 1),
    "sse": ("sse_subscribers", (200,), 1),
    "duplicates": ("duplicates", (), 1),
    "consumers": ("consumers", (), 1),
    "malformed": ("malformed", (), 1),
    "slow-headers": ("slow_headers", (), 20),
    "big-pages": ("big_pages", (), 4),
    "zero-batches": ("zero_batches", (), 2),
    "prefix-scans": ("prefix_scans", (), 6),
    # Only with --tokens: with no access control any token is accepted.
    "wrong-tokens": ("wrong_tokens", (), 2),
}
TOKEN_ONLY = {"wrong-tokens"}

# The default --auth-failure-rate (30/m, a burst of a minute's worth):
# made-up tokens may get at most this many 401s in a run of S seconds.
AUTH_FAILURES_BURST, AUTH_FAILURES_PER_SEC = 30, 0.5


def honest_client(url, seconds, results, phase, role, token):
    """One honest client (a publisher keeping the ledger, or the liveness
    prober) in a process of its own."""
    run = Run(url, 0, seconds, token)
    run.phase = phase
    if role == "prober":
        run.prober()
    else:
        run.publisher(role)
    results.put((
        [[s, i, seq] for (s, i), seq in run.ledger.items()],
        dict(run.stats.latency),
        {k: dict(v) for k, v in run.stats.status.items()},
    ))


def measure(url, seconds, results, phase, token):
    """The ledger publishers and the liveness prober, each in a process of
    its own so no client's timings include waiting for another's turn at
    Python's GIL; their results merged into one."""
    queue = multiprocessing.Queue()
    roles = ["prober", 0, 1, 2, 3]
    procs = [multiprocessing.Process(target=honest_client, args=(url, seconds, queue, phase, r, token))
             for r in roles]
    for p in procs:
        p.start()
    ledger, latency, status = [], collections.defaultdict(list), collections.defaultdict(collections.Counter)
    for _ in procs:
        part_ledger, part_latency, part_status = queue.get(timeout=seconds + 300)
        ledger += part_ledger
        for k, v in part_latency.items():
            latency[k] += v
        for k, v in part_status.items():
            status[k].update(v)
    for p in procs:
        p.join(timeout=60)
    results.put((ledger, dict(latency), {k: dict(v) for k, v in status.items()}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("pid", type=int, nargs="?", default=0)
    p.add_argument("--ledger-out")
    p.add_argument("--check")
    p.add_argument("--seconds", type=float, default=180)
    p.add_argument("--types", type=int, default=20000)
    p.add_argument("--big-events", type=int, default=20)
    p.add_argument("--baseline-seconds", type=float, default=20)
    p.add_argument("--only", action="append", choices=sorted(ATTACKS),
                   help="run only this attack (repeatable; default: all at once)")
    p.add_argument("--attacker-nice", type=int, default=0,
                   help="run the attacking threads at this nice value (the honest clients stay at 0)")
    p.add_argument("--attacker-idle", action="store_true",
                   help="run the attacking threads under SCHED_IDLE: they get only the CPU that the server "
                        "and the honest clients leave, as attackers on other machines would")
    p.add_argument("--tokens", action="store_true",
                   help="the server requires tokens: the honest clients send MSGBUS_HOSTILE_TOKEN, the attackers "
                        "the rate-limited MSGBUS_HOSTILE_ATTACKER_TOKEN, and made-up tokens are sent too")
    a = p.parse_args()
    honest_token = attacker_token = None
    if a.tokens:
        honest_token = os.environ.get("MSGBUS_HOSTILE_TOKEN")
        attacker_token = os.environ.get("MSGBUS_HOSTILE_ATTACKER_TOKEN")
        if not honest_token or (not a.check and not attacker_token):
            raise SystemExit("hostile.py: --tokens needs MSGBUS_HOSTILE_TOKEN and MSGBUS_HOSTILE_ATTACKER_TOKEN")
    elif a.only and TOKEN_ONLY & set(a.only):
        raise SystemExit(f"hostile.py: {', '.join(sorted(TOKEN_ONLY))} needs --tokens")

    if a.check:
        run = Run(a.url, 0, 0, honest_token)
        run.ledger = {(s, i): seq for s, i, seq in json.load(open(a.check))}
        lost, renumbered = run.check_ledger()
        print(f"ledger after restart    {len(run.ledger)} acknowledged, {len(lost)} lost, {len(renumbered)} renumbered")
        return 0 if not lost and not renumbered and not run.stats.findings else 1

    run = Run(a.url, a.pid, a.seconds + 3600, attacker_token, honest_token)  # the deadline is set after setup
    t0 = time.monotonic()
    run.setup(a.types, a.big_events)
    print(f"setup: {a.types} distinct types, {a.big_events} events of 900 KiB in {time.monotonic() - t0:.0f} s",
          flush=True)
    # The baseline: the same honest clients with no attack running.
    results = multiprocessing.Queue()
    honest = multiprocessing.Process(target=measure, args=(a.url, a.baseline_seconds, results, "baseline",
                                                                honest_token))
    honest.start()
    base_ledger, base_latency, _ = results.get(timeout=a.baseline_seconds + 300)
    honest.join(timeout=60)
    print(f"baseline (no attack) for {a.baseline_seconds:.0f} s:", flush=True)
    for probe, name in (("live", "/health/live"), ("publish", "publish")):
        v = base_latency.get(probe, [])
        print(f"  {name:22s}p50 {percentile(v, 50) * 1000:.1f} ms, p99 {percentile(v, 99) * 1000:.1f} ms, "
              f"max {max(v or [0]) * 1000:.1f} ms ({len(v)})", flush=True)

    run.deadline = time.monotonic() + a.seconds
    # The honest clients run in a process of their own, so their timings do
    # not include waiting for the attackers' threads (Python's GIL).
    results = multiprocessing.Queue()
    honest = multiprocessing.Process(target=measure, args=(a.url, a.seconds, results, "attack", honest_token))
    honest.start()
    # Threads inherit the nice value and policy of the thread that starts them.
    if a.attacker_nice:
        os.nice(a.attacker_nice)
    if a.attacker_idle:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    threads = [threading.Thread(target=run.rss_watch)]
    for name, (target, args, copies) in ATTACKS.items():
        if a.only and name not in a.only:
            continue
        if name in TOKEN_ONLY and not a.tokens:
            continue
        threads += [threading.Thread(target=getattr(run, target), args=args) for _ in range(copies)]
    for t in threads:
        t.daemon = True
        t.start()
    for t in threads:
        t.join(timeout=max(0, run.deadline - time.monotonic()) + 120)
    ledger, latency, status = results.get(timeout=300)
    honest.join(timeout=60)
    run.ledger = {(s, i): seq for s, i, seq in base_ledger + ledger}
    run.stats.latency.update(latency)
    for attack, counter in status.items():
        run.stats.status[attack].update(counter)

    print(f"\nattacks for {a.seconds:.0f} s (answers by status):")
    for attack, counter in sorted(run.stats.status.items()):
        parts = ", ".join(f"{k} x{v}" for k, v in sorted(counter.items(), key=lambda kv: str(kv[0])))
        print(f"  {attack:45s} {parts}")
    guessed = run.stats.status.get("made-up tokens", {}).get(401, 0)
    if guessed > AUTH_FAILURES_BURST + AUTH_FAILURES_PER_SEC * a.seconds + 5:
        run.stats.finding(f"{guessed} made-up tokens answered 401: more than --auth-failure-rate allows")
    live = run.stats.latency["live"]
    pub = run.stats.latency["publish"]
    lost, renumbered = run.check_ledger()
    print()
    print(f"peak RSS                {run.peak_rss_kb / 1024:.0f} MiB")
    print(f"/health/live            p50 {percentile(live, 50) * 1000:.1f} ms, p99 {percentile(live, 99) * 1000:.1f} ms, "
          f"max {max(live or [0]) * 1000:.1f} ms ({len(live)} probes)")
    print(f"publish                 p50 {percentile(pub, 50) * 1000:.1f} ms, p99 {percentile(pub, 99) * 1000:.1f} ms, "
          f"max {max(pub or [0]) * 1000:.1f} ms ({len(pub)} publishes)")
    print(f"ledger                  {len(run.ledger)} acknowledged, {len(lost)} lost, {len(renumbered)} renumbered")
    if a.ledger_out:
        with open(a.ledger_out, "w") as f:
            json.dump([[s, i, seq] for (s, i), seq in run.ledger.items()], f)
    for f in run.stats.findings:
        print(f"FINDING: {f}")
    ok = not lost and not renumbered and not run.stats.findings
    print("result                  " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
