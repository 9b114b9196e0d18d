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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
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
    """One luna-matcher process, role matcher, no plugins, logging into `log`."""

    def __init__(self, binary, env, data_dir, log):
        self.binary, self.env, self.data_dir, self.log = binary, env, data_dir, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)

    def load_log(self):
        """(faces, seconds) of the last 'store: loaded' line of a shared store."""
        with open(self.log) as log:
            found = re.findall(r"store: loaded (\d+) faces .* in ([0-9.]+) s", log.read())
        return (int(found[-1][0]), float(found[-1][1])) if found else None


def bodies(n, batch):
    """Bulk bodies of random faces in the list named @LIST@."""
    rng = random.Random(7)
    out = []
    for start in range(0, n, batch):
        faces = [{"account_id": ACCOUNT, "descriptor": {"data": base64.b64encode(rng.randbytes(512)).decode()}, "lists": ["@LIST@"]}
                 for _ in range(min(batch, n - start))]
        out.append(json.dumps(faces).encode())
    return out


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def timed(f):
    started = time.perf_counter()
    f()
    return time.perf_counter() - started


def lag(binary, work, seconds, rate, background):
    """Writes through A at `rate`/s beside `background` faces/s in bulks; for
    each, the time from A's answer until B has applied its store position."""
    db = f"luna_bench_{uuid.uuid4().hex}"
    psql(f"CREATE DATABASE {db}")
    env = {"LUNA_MATCHER__STORAGE__BACKEND": "postgres", "LUNA_MATCHER__STORAGE__DSN": f"{SERVER}/{db}"}
    a, b = Instance(binary, env, work, os.path.join(work, "a.log")), Instance(binary, env, work, os.path.join(work, "b.log"))
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
        a.stop()
        b.stop()
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
    # SIGTERM ends the run through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    n = args.faces
    db = f"luna_bench_{uuid.uuid4().hex}"
    psql(f"CREATE DATABASE {db}")
    work = tempfile.mkdtemp(prefix="luna-bench-")
    env = {"LUNA_MATCHER__STORAGE__BACKEND": "postgres", "LUNA_MATCHER__STORAGE__DSN": f"{SERVER}/{db}"}
    # Both run at once and every measurement alternates between them, so
    # whatever else the machine does weighs on both alike.
    backends = {"SQLite": Instance(args.binary, {}, os.path.join(work, "sqlite"), os.path.join(work, "sqlite.log")),
                "PostgreSQL": Instance(args.binary, env, work, os.path.join(work, "postgres.log"))}
    stats = {name: {"import": 0.0, "match": [], "start": [], "inner": []} for name in backends}
    try:
        lists = {}
        for name, instance in backends.items():
            instance.start()
            lists[name] = post(f"{instance.url}/1/lists", {"account_id": ACCOUNT})[1]["list_id"]
        for body in bodies(n, args.batch):
            for name, instance in backends.items():
                sent = body.replace(b"@LIST@", lists[name].encode())
                stats[name]["import"] += timed(lambda i=instance, b=sent: post(f"{i.url}/1/faces/bulk", b, raw=True))
        rng = random.Random(11)
        for _ in range(args.match_rounds):
            data = base64.b64encode(rng.randbytes(512)).decode()
            for name, instance in backends.items():
                q = {"references": [{"type": "descriptor", "data": data}],
                     "candidates": [{"filters": {"origin": "faces", "list_id": lists[name]}, "limit": 3}]}
                stats[name]["match"].append(timed(lambda i=instance, q=q: post(f"{i.url}/1/matcher/faces", q)))
        for instance in backends.values():
            instance.stop()
        for _ in range(args.loads):
            for name, instance in backends.items():
                stats[name]["start"].append(instance.start())
                stats[name]["inner"].append(instance.load_log())
                instance.stop()
        lag_p50, lag_p99, samples = lag(args.binary, work, args.lag_seconds, 20, 500)
    finally:
        for instance in backends.values():
            instance.stop()
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)

    s, pg = stats["SQLite"], stats["PostgreSQL"]
    start = {name: statistics.median(v["start"]) for name, v in stats.items()}
    print("\n| | SQLite | PostgreSQL |\n|---|---|---|")
    print(f"| bulk import, {n:,} faces in requests of {args.batch:,} | {n / s['import']:,.0f} faces/s | {n / pg['import']:,.0f} faces/s |")
    print(f"| start-up until /healthcheck is 200, {n:,} faces (median of {args.loads}) | {start['SQLite']:.2f} s ({n / start['SQLite']:,.0f} faces/s) "
          f"| {start['PostgreSQL']:.2f} s ({n / start['PostgreSQL']:,.0f} faces/s) |")
    inner = sorted(x for x in pg["inner"] if x)
    if inner:
        faces, secs = inner[len(inner) // 2]
        print(f"| of which the load (the service's log line) | | {secs:.2f} s ({faces / secs:,.0f} faces/s) |")
    print(f"| /1/matcher/faces, one descriptor against the {n:,}-face list, top-3, sequential: p50 / p99 "
          f"| {percentile(s['match'], 50) * 1000:.1f} / {percentile(s['match'], 99) * 1000:.1f} ms "
          f"| {percentile(pg['match'], 50) * 1000:.1f} / {percentile(pg['match'], 99) * 1000:.1f} ms |")
    print(f"\nWrite-to-visible lag on a second instance ({samples} writes at 20/s beside 500 faces/s in bulks): "
          f"p50 {lag_p50 * 1000:.1f} ms, p99 {lag_p99 * 1000:.1f} ms")


if __name__ == "__main__":
    main()
