"""`luna-matcher import` into the embedded SQLite store beside a plain SQLite
peer, in one run: the release binary (role standalone, no plugins) imports
N random faces from a .npy file over HTTP; the peer inserts the same rows
into a file of the same schema, page size and durability (WAL,
synchronous=FULL: every commit fsynced), one transaction per bulk request
the importer sent on average. Then the bytes per face on disk of each (after
a clean stop, the WAL folded in), and the restart of the service on its N
u8 faces until its first answer to a match. Prints a Markdown table."""

import argparse
import base64
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

from store import free_port

ACCOUNT = "6d3f2a5e-1111-4222-8333-444455556666"
DIM = 512


def write_npy(path, rows, dtype, seed):
    """N x 512 random descriptors: uint8, or float32 of unit norm's order of magnitude."""
    descr = "|u1" if dtype == "u8" else "<f4"
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {DIM}), }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        for _ in range(rows):
            if dtype == "u8":
                f.write(rng.randbytes(DIM))
            else:
                f.write(struct.pack(f"<{DIM}f", *(rng.uniform(-0.08, 0.08) for _ in range(DIM))))


def read_rows(path, dtype):
    """The payloads of a .npy file written by write_npy."""
    width = DIM if dtype == "u8" else DIM * 4
    with open(path, "rb") as f:
        f.read(8)
        (length,) = struct.unpack("<H", f.read(2))
        f.read(length)
        data = f.read()
    return [data[i:i + width] for i in range(0, len(data), width)]


class Service:
    def __init__(self, binary, data_dir, log):
        self.binary, self.data_dir, self.log = binary, data_dir, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        env = dict(os.environ, RUST_LOG="info", LUNA_MATCHER_PROXY_ACTIVE_PLUGINS="[]")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--data-dir", self.data_dir], env=env, stdout=log, stderr=log)

    def answers(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r) if r.status in (200, 201) else None
        except OSError as e:
            if self.proc.poll() is not None:
                raise SystemExit(f"the service exited; log {self.log}") from e
            return None

    def wait(self, path, body=None):
        """Seconds from now until `path` answers 200/201."""
        started = time.perf_counter()
        while self.answers(path, body) is None:
            time.sleep(0.005)
        return time.perf_counter() - started

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=300)


def database(data_dir):
    return os.path.join(data_dir, "luna-matcher.sqlite3")


def import_into_service(binary, work, npy, dtype, concurrency):
    """(summary.json, data dir, list id) of `luna-matcher import` into a fresh service."""
    data_dir = os.path.join(work, f"service-{dtype}")
    service = Service(binary, data_dir, os.path.join(work, f"service-{dtype}.log"))
    service.start()
    try:
        service.wait("/healthcheck")
        out = os.path.join(work, f"import-{dtype}")
        cmd = [binary, "import", "--url", service.url, "--list", "NEW", "--account-id", ACCOUNT, "--out", out, "--quiet", npy]
        if concurrency:
            cmd += ["--concurrency", str(concurrency)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
    finally:
        service.stop()
    return summary, data_dir, summary["list_id"]


def peer(work, rows, version, batch, like):
    """A plain SQLite insert of `rows` as the service stores them, in
    transactions of `batch` faces (Python's sqlite3, executemany): (faces/s,
    bytes per face)."""
    path = os.path.join(work, "peer.sqlite3")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    service = sqlite3.connect(like)
    page_size = service.execute("PRAGMA page_size").fetchone()[0]
    schema = [sql for (sql,) in service.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")]
    service.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size = {page_size}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA journal_size_limit = 4194304")
    for sql in schema:
        db.execute(sql)
    account, list_id = uuid.UUID(ACCOUNT).bytes, uuid.uuid4().bytes
    db.execute("INSERT INTO lists (list_id, account_id, user_data, create_time) VALUES (?, ?, '', 0)", (list_id, account))
    now = time.time_ns() // 1000
    faces = [(uuid.uuid4().bytes, account, version, payload, f"peer0000-{i}", "", now + i) for i, payload in enumerate(rows)]
    started = time.perf_counter()
    for start in range(0, len(faces), batch):
        chunk = faces[start:start + batch]
        db.execute("BEGIN")
        db.executemany("INSERT INTO faces (face_id, account_id, version, descriptor, external_id, user_data, create_time) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", chunk)
        # One writer: the rows just inserted are numbered on from the last one.
        last = db.execute("SELECT max(row) FROM faces").fetchone()[0]
        db.executemany("INSERT OR IGNORE INTO list_faces (list_id, face_row) VALUES (?, ?)",
                       ((list_id, row) for row in range(last - len(chunk) + 1, last + 1)))
        db.execute("COMMIT")
    seconds = time.perf_counter() - started
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return len(faces) / seconds, os.path.getsize(path) / len(faces)


def restart(binary, work, data_dir, list_id, rounds):
    """Median seconds from the start of the process to its first answer to a match on the list."""
    query = {"references": [{"type": "descriptor", "data": base64.b64encode(bytes(DIM)).decode()}],
             "candidates": [{"filters": {"origin": "faces", "list_id": list_id}, "limit": 3}]}
    times = []
    for _ in range(rounds):
        service = Service(binary, data_dir, os.path.join(work, "restart.log"))
        started = time.perf_counter()
        service.start()
        try:
            service.wait("/1/matcher/faces", query)
            times.append(time.perf_counter() - started)
        finally:
            service.stop()
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--faces", type=int, default=1_000_000, help="u8 faces")
    p.add_argument("--f32-faces", type=int, default=200_000)
    p.add_argument("--concurrency", type=int, help="the importer's --concurrency (its default otherwise)")
    p.add_argument("--restarts", type=int, default=3)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = tempfile.mkdtemp(prefix="luna-bench-import-")
    results = []
    try:
        for dtype, n, version in (("u8", args.faces, 62), ("f32", args.f32_faces, 1000)):
            npy = os.path.join(work, f"{dtype}.npy")
            write_npy(npy, n, dtype, seed=7)
            summary, data_dir, list_id = import_into_service(args.binary, work, npy, dtype, args.concurrency)
            assert summary["complete"] and summary["faces"] == n, summary
            service_bytes = os.path.getsize(database(data_dir)) / n
            batch = max(1, round(n / summary["requests"]))
            peer_rate, peer_bytes = peer(work, read_rows(npy, dtype), version, batch, database(data_dir))
            restarted = restart(args.binary, work, data_dir, list_id, args.restarts) if dtype == "u8" else None
            results.append((dtype, n, summary, batch, service_bytes, peer_rate, peer_bytes, restarted))
            os.remove(npy)
            shutil.rmtree(data_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\n| faces | service (`luna-matcher import`) | plain SQLite peer | service / peer | bulk requests (faces each) "
          "| bytes per face on disk, service / peer | payload | restart to first answer |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype, n, s, batch, service_bytes, peer_rate, peer_bytes, restarted in results:
        payload = DIM if dtype == "u8" else DIM * 4
        print(f"| {n:,} x {dtype} | {s['faces_per_s']:,.0f} faces/s ({s['seconds']:.1f} s) | {peer_rate:,.0f} faces/s "
              f"| {s['faces_per_s'] / peer_rate:.2f}x | {s['requests']:,} ({batch:,}) | {service_bytes:,.0f} / {peer_bytes:,.0f} "
              f"| {payload:,} | {f'{restarted:.2f} s' if restarted else '-'} |")


if __name__ == "__main__":
    main()
