#!/usr/bin/env python3
"""Memory and start-up against stored events, on one growing store.

    large_store.py BINARY SIZES [--keep DIR]     e.g. large_store.py target/release/msgbus 1000000,5000000

Fills a fresh store (in a temp dir on the same disk as this script's
TMPDIR) with events of about 300 bytes, by batches of 1,000, up to each
size in turn; at each size it stops the server and starts it three times,
and for each start prints: seconds from launch to /health/ready 200,
resident memory right after (VmRSS) and its peak (VmHWM), a duplicate of
seq 1 (must answer 200 with seq 1), GET /events/{seq} at 2,000 random seqs
(p50/p99 over one keep-alive connection), and the /stats memory figures.
Standard library only; loopback only."""
import http.client, json, os, random, re, signal, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
SIZES = [int(x) for x in sys.argv[2].split(",")]
root = tempfile.mkdtemp(prefix="msgbus-large-")
data = os.path.join(root, "data")
PAD = "x" * 150


def start():
    t0 = time.monotonic()
    p = subprocess.Popen([BIN, "serve", "--addr", "127.0.0.1:0", "--data-dir", data, "--log-format", "json"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    host = port = None
    for line in p.stderr:
        m = re.search(r'"msgbus listening","addr":"([0-9.:]+)"', line)
        if m:
            host, port = m.group(1).split(":")
            break
    if host is None:
        raise SystemExit("the server did not start")
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    c = http.client.HTTPConnection(host, int(port), timeout=600)
    while True:
        try:
            c.request("GET", "/health/ready")
            r = c.getresponse()
            r.read()
            if r.status == 200:
                break
        except OSError:
            c = http.client.HTTPConnection(host, int(port), timeout=600)
        time.sleep(0.002)
    return p, c, time.monotonic() - t0


def mem_mb(p, key):
    with open(f"/proc/{p.pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=600)


def call(c, method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    return r.status, r.read()


stored = 0
print(f"{'events':>11} {'ready s':>8} {'RSS MB':>7} {'peak MB':>8} {'GET p50 ms':>10} {'GET p99 ms':>10} "
      f"{'in-memory entries':>18} {'key filter MB':>13}  duplicate of seq 1", flush=True)
for size in SIZES:
    p, c, _ = start()
    t0 = time.monotonic()
    n0 = stored
    while stored < size:
        k = min(1000, size - stored)
        batch = [{"type": f"bench.t{(stored + i) % 7}", "source": f"/s/{(stored + i) % 13}", "id": f"e{stored + i + 1}",
                  "subject": f"sub-{stored + i + 1}", "data": {"p": PAD}} for i in range(k)]
        status, _ = call(c, "POST", "/events/batch", json.dumps(batch))
        if status not in (200, 201):
            raise SystemExit(f"fill: {status}")
        stored += k
    fill_s = time.monotonic() - t0
    _, st = call(c, "GET", "/stats")
    st = json.loads(st)
    print(f"# filled {stored - n0} events in {fill_s:.0f} s; store {st['store']['bytes'] / 1e9:.2f} GB in "
          f"{st['store']['segments']} segments", flush=True)
    stop(p)
    for run in range(3):
        p, c, ready = start()
        rss, peak = mem_mb(p, "VmRSS:"), mem_mb(p, "VmHWM:")
        status, body = call(c, "POST", "/events", json.dumps({"type": "x", "source": "/s/0", "id": "e1"}))
        dup = json.loads(body)
        lat = []
        for _ in range(2000):
            seq = random.randint(1, stored)
            t1 = time.monotonic()
            s, _ = call(c, "GET", f"/events/{seq}")
            lat.append(time.monotonic() - t1)
            if s != 200:
                raise SystemExit(f"GET /events/{seq}: {s}")
        lat.sort()
        _, st = call(c, "GET", "/stats")
        st = json.loads(st)
        ok = status == 200 and dup.get("seq") == 1
        print(f"{stored:>11} {ready:>8.2f} {rss:>7.0f} {peak:>8.0f} {lat[1000] * 1000:>10.2f} {lat[1980] * 1000:>10.2f} "
              f"{st['store']['memory_entries']:>18} {st['writer']['key_filter_bytes'] / 1e6:>13.1f}  "
              f"{status} seq {dup.get('seq')}{'' if ok else '  WRONG'}", flush=True)
        stop(p)
        if not ok:
            raise SystemExit(1)
subprocess.run(["rm", "-rf", root])
