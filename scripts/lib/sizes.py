#!/usr/bin/env python3
"""Sizes that once cost seconds or gigabytes, against a msgbus binary:

    sizes.py BINARY [STEPS]     e.g. sizes.py target/release/msgbus 1,2,3

1: GET /events?type_prefix= over 100,000 distinct types (one-shot pages),
   and publish latency while 6 clients scan a non-matching prefix;
2: RSS while 300,000 events with a unique type, source and subject each
   pass through --retention-max-events 1000;
3: a batch of DUPS (env, default 100) duplicates of a 1 MB event, and
   publish latency meanwhile.
Each step starts its own server on loopback in a temp directory and kills
it after. Prints what it measured; asserts only the answers' statuses."""
import http.client, json, subprocess, sys, tempfile, time, re, os, threading

BIN = sys.argv[1]
STEPS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["1", "2", "3"]
import functools
print = functools.partial(print, flush=True)

def start(args):
    d = tempfile.mkdtemp()
    p = subprocess.Popen([BIN, "serve", "--addr", "127.0.0.1:0", "--data-dir", d + "/data", "--log-format", "json"] + args,
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in p.stderr:
        m = re.search(r'"msgbus listening","addr":"([0-9.:]+)"', line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            h, port = m.group(1).split(":")
            return p, h, int(port)
    raise SystemExit("no start")

def req(c, method, path, body=None):
    h = {"Content-Type": "application/json"} if body is not None else {}
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    return r.status, r.read()

def rss(p):
    with open(f"/proc/{p.pid}/status") as f:
        d = dict(l.split(":", 1) for l in f)
    return int(d["VmRSS"].split()[0]) // 1024, int(d["VmHWM"].split()[0]) // 1024

def pct(v, q):
    v = sorted(v); return v[min(len(v) - 1, int(len(v) * q / 100))]

def step1():
    p, h, port = start([])
    c = http.client.HTTPConnection(h, port, timeout=120)
    for start_k in range(0, 100_000, 1000):
        batch = [{"type": f"many.t{k:06d}", "source": "/many", "id": f"m-{k}"} for k in range(start_k, start_k + 1000)]
        s, _ = req(c, "POST", "/events/batch", json.dumps(batch))
        assert s == 201, s
    for name, q in [("non-matching type_prefix", "many.zzz"), ("type_prefix matching 10 types", "many.t01234"),
                    ("type_prefix matching all 100,000 types", "many.t")]:
        t = []
        for _ in range(20):
            t0 = time.monotonic(); s, b = req(c, "GET", f"/events?type_prefix={q}&limit=1000"); t.append(time.monotonic() - t0)
            assert s == 200, (s, b[:200])
        n = len(json.loads(b)["events"])
        print(f"100,000 types: GET /events?{name} (limit 1000, {n} events in the page): p50 {pct(t,50)*1000:.1f} ms, max {max(t)*1000:.1f} ms")
    # publish latency while 6 clients scan a non-matching prefix
    stop = time.monotonic() + 10
    def scanner():
        cc = http.client.HTTPConnection(h, port, timeout=120)
        while time.monotonic() < stop:
            req(cc, "GET", "/events?type_prefix=many.zzz&limit=1000")
    ths = [threading.Thread(target=scanner) for _ in range(6)]
    [t.start() for t in ths]
    lat = []; i = 0
    while time.monotonic() < stop:
        i += 1; t0 = time.monotonic()
        s, _ = req(c, "POST", "/events", json.dumps({"type": "probe", "source": "/probe", "id": f"p{i}"})); lat.append(time.monotonic() - t0)
    [t.join() for t in ths]
    print(f"100,000 types, 6 clients scanning a non-matching prefix for 10 s: publish p50 {pct(lat,50)*1000:.1f} ms, p99 {pct(lat,99)*1000:.1f} ms ({len(lat)} publishes)")
    print(f"  RSS {rss(p)[0]} MiB")
    p.kill()


def step2():
    p, h, port = start(["--retention-max-events", "1000", "--segment-bytes", "1MiB"])
    c = http.client.HTTPConnection(h, port, timeout=120)
    r0 = rss(p)[0]
    marks = []
    for k0 in range(0, 300_000, 1000):
        batch = [{"type": f"u.t{k}", "source": f"/u/{k}", "subject": f"subject-{k}-{'x'*40}", "id": f"u-{k}"} for k in range(k0, k0 + 1000)]
        s, _ = req(c, "POST", "/events/batch", json.dumps(batch)); assert s == 201, s
        if (k0 + 1000) % 100_000 == 0:
            marks.append(f"{k0+1000}: {rss(p)[0]} MiB")
    print(f"unique type/source/subject per event, --retention-max-events 1000: RSS at start {r0} MiB; after " + ", ".join(marks) + f" (peak {rss(p)[1]} MiB)")
    p.kill()


def step3():
    p, h, port = start(["--max-batch-bytes", "1100MiB", "--max-event-bytes", "2MiB"])
    c = http.client.HTTPConnection(h, port, timeout=300)
    ev = {"type": "dup", "source": "/dup", "id": "d-1", "data": "d" * (1000 * 1000)}
    s, _ = req(c, "POST", "/events", json.dumps(ev)); assert s == 201
    body = json.dumps([ev] * DUPS)
    done = threading.Event(); lat = []
    def prober():
        cc = http.client.HTTPConnection(h, port, timeout=60); i = 0
        while not done.is_set():
            i += 1; t0 = time.monotonic()
            req(cc, "POST", "/events", json.dumps({"type": "probe", "source": "/probe", "id": f"q{i}"})); lat.append(time.monotonic() - t0)
    th = threading.Thread(target=prober); th.start()
    t = []
    for _ in range(3):
        t0 = time.monotonic(); s, b = req(c, "POST", "/events/batch", body); t.append(time.monotonic() - t0)
        assert s == 200, (s, b[:300])
    done.set(); th.join()
    print(f"batch of {DUPS} duplicates of a 1 MB event ({len(body)>>20} MiB body): answered 200 in {min(t)*1000:.0f}-{max(t)*1000:.0f} ms; "
          f"meanwhile publish p50 {pct(lat,50)*1000:.1f} ms, p99 {pct(lat,99)*1000:.1f} ms, max {max(lat)*1000:.1f} ms ({len(lat)}); peak RSS {rss(p)[1]} MiB")
    p.kill()

DUPS = int(os.environ.get("DUPS", "100"))
for st in STEPS:
    globals()["step" + st]()
