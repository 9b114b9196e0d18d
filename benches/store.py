"""The shared PostgreSQL store beside the embedded SQLite one, in one run,
with the release binary on loopback: bulk import, start-up load, matching
latency on each backend, and the write-to-visible lag on a second instance.
Prints Markdown tables. Needs psql and the PostgreSQL server of
LUNA_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432)."""

import argparse
import base64
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid

ACCOUNT = "6d3f2a5e-1111-4222-8333-444455556666"
SERVER = os.environ.get("LUNA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def psql(sql, db="postgres"):
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", f"{SERVER}/{db}", "-c", sql], check=True)


def post(url, body, raw=False):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.headers, json.load(r)


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def position(text):
    xid, seq = text.split(":")
    return int(xid), int(seq)


class Instance:
    """One luna-matcher process, role matcher, no plugins."""

    def __init__(self, binary, env, data_dir):
        self.binary, self.env, self.data_dir = binary, env, data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(tempfile.mkdtemp(prefix="luna-bench-"), "service.log")
        self.proc = None

    def start(self):
        """Start and wait until /healthcheck answers 200; the seconds it took."""
        env = dict(os.environ, RUST_LOG="info", LUNA_PYTHON_MATCHER_ACTIVE_PLUGINS="[]", **self.env)
        started = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--role", "matcher", "--port", str(self.port), "--data-dir", self.data_dir],
                env=env, stdout=log, stderr=log)
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthcheck", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited; log {self.log}")
            time.sleep(0.005)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)

    def load_log(self):
        """(faces, seconds) of the last 'store: loaded' line of a shared store."""
        with open(self.log) as log:
            text = log.read()
        found = re.findall(r"store: loaded (\d+) faces .* in ([0-9.]+) s", text)
        return (int(found[-1][0]), float(found[-1][1])) if found else None


def bodies(n, batch, list_id):
    rng = random.Random(7)
    out = []
    for start in range(0, n, batch):
        faces = [{"account_id": ACCOUNT, "descriptor": {"data": base64.b64encode(rng.randbytes(512)).decode()}, "lists": [list_id]}
                 for _ in range(min(batch, n - start))]
        out.append(json.dumps(faces).encode())
    return out


def bulk_import(instance, payloads, n):
    started = time.perf_counter()
    for body in payloads:
        post(f"{instance.url}/1/faces/bulk", body, raw=True)
    return n / (time.perf_counter() - started)


def match_latency(instance, list_id, rounds):
    rng = random.Random(11)
    times = []
    for _ in range(rounds):
        q = {"references": [{"type": "descriptor", "data": base64.b64encode(rng.randbytes(512)).decode()}],
             "candidates": [{"filters": {"origin": "faces", "list_id": list_id}, "limit": 3}]}
        started = time.perf_counter()
        post(f"{instance.url}/1/matcher/faces", q)
        times.append(time.perf_counter() - started)
    return percentile(times, 50), percentile(times, 99)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def lag(binary, seconds, rate, background):
    """Writes through A at `rate`/s beside `background` faces/s in bulks; for
    each, the time from A's answer until B has applied its store position."""
    db = f"luna_bench_{uuid.uuid4().hex}"
    psql(f"CREATE DATABASE {db}")
    env = {"LUNA_MATCHER__STORAGE__BACKEND": "postgres", "LUNA_MATCHER__STORAGE__DSN": f"{SERVER}/{db}"}
    a, b = Instance(binary, env, tempfile.mkdtemp()), Instance(binary, env, tempfile.mkdtemp())
    try:
        a.start()
        b.start()
        _, created = post(f"{a.url}/1/lists", {"account_id": ACCOUNT})
        list_id = created["list_id"]
        stop = threading.Event()

        def writer():
            rng = random.Random(3)
            while not stop.is_set():
                faces = [{"account_id": ACCOUNT, "descriptor": {"data": base64.b64encode(rng.randbytes(512)).decode()}, "lists": [list_id]}
                         for _ in range(background // 10)]
                post(f"{a.url}/1/faces/bulk", faces)
                time.sleep(0.1)

        bg = threading.Thread(target=writer)
        bg.start()
        rng = random.Random(5)
        lags = []
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            tick = time.perf_counter()
            face = {"account_id": ACCOUNT, "descriptor": {"data": base64.b64encode(rng.randbytes(512)).decode()}, "lists": [list_id]}
            headers, _ = post(f"{a.url}/1/faces", face)
            acknowledged = time.perf_counter()
            wanted = position(headers["Luna-Store-Position"])
            while position(get(f"{b.url}/1/matcher/cache")["position"]) < wanted:
                time.sleep(0.0005)
            lags.append(time.perf_counter() - acknowledged)
            time.sleep(max(0.0, 1 / rate - (time.perf_counter() - tick)))
        stop.set()
        bg.join()
        return percentile(lags, 50), percentile(lags, 99), len(lags)
    finally:
        for i in (a, b):
            if i.proc and i.proc.poll() is None:
                i.stop()
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--faces", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--loads", type=int, default=3, help="start-ups measured per backend; the median is reported")
    p.add_argument("--match-rounds", type=int, default=200)
    p.add_argument("--lag-seconds", type=int, default=30)
    args = p.parse_args()

    db = f"luna_bench_{uuid.uuid4().hex}"
    psql(f"CREATE DATABASE {db}")
    work = tempfile.mkdtemp(prefix="luna-bench-")
    backends = {
        "SQLite": Instance(args.binary, {}, os.path.join(work, "sqlite")),
        "PostgreSQL": Instance(args.binary, {"LUNA_MATCHER__STORAGE__BACKEND": "postgres", "LUNA_MATCHER__STORAGE__DSN": f"{SERVER}/{db}"}, work),
    }
    results = {}
    try:
        for name, instance in backends.items():
            instance.start()
            _, created = post(f"{instance.url}/1/lists", {"account_id": ACCOUNT})
            list_id = created["list_id"]
            payloads = bodies(args.faces, args.batch, list_id)
            rate = bulk_import(instance, payloads, args.faces)
            del payloads
            p50, p99 = match_latency(instance, list_id, args.match_rounds)
            instance.stop()
            loads, inner = [], []
            for _ in range(args.loads):
                loads.append(instance.start())
                inner.append(instance.load_log())
                instance.stop()
            results[name] = {"import": rate, "match": (p50, p99), "start": statistics.median(loads), "inner": inner[len(inner) // 2]}
            print(f"{name}: {results[name]}", flush=True)
        lag_p50, lag_p99, samples = lag(args.binary, args.lag_seconds, 20, 500)
    finally:
        for i in backends.values():
            if i.proc and i.proc.poll() is None:
                i.stop()
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    n = args.faces
    print("\n| | SQLite | PostgreSQL |\n|---|---|---|")
    s, pg = results["SQLite"], results["PostgreSQL"]
    print(f"| bulk import ({args.batch} faces a request) | {s['import']:,.0f} faces/s | {pg['import']:,.0f} faces/s |")
    print(f"| start-up until /healthcheck is 200, {n:,} faces (median of {args.loads}) | {s['start']:.2f} s ({n / s['start']:,.0f} faces/s) "
          f"| {pg['start']:.2f} s ({n / pg['start']:,.0f} faces/s) |")
    if pg["inner"]:
        faces, secs = pg["inner"]
        print(f"| of which the load itself (PostgreSQL's log line) | | {secs:.2f} s ({faces / secs:,.0f} faces/s) |")
    print(f"| /1/matcher/faces, one descriptor against the {n:,}-face list, top-3, sequential: p50 / p99 "
          f"| {s['match'][0] * 1000:.1f} / {s['match'][1] * 1000:.1f} ms | {pg['match'][0] * 1000:.1f} / {pg['match'][1] * 1000:.1f} ms |")
    print(f"\nWrite-to-visible lag on a second instance ({samples} writes at 20/s beside 500 faces/s in bulks): "
          f"p50 {lag_p50 * 1000:.1f} ms, p99 {lag_p99 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
