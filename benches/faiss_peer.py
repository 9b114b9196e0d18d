"""The peer for the kernel benchmarks: FAISS IndexFlatIP, one query, top-10,
over the float32 version ((q - 128) / 128) of the same u8 descriptors the
criterion bench reads. Writes the data, then prints its timings as JSON."""

import argparse
import json
import os
import time

import faiss
import numpy as np

SIZES = [10_000, 100_000, 1_000_000]
DIM = 512
LIMIT = 10


def best_of(fn, seconds=3.0, min_runs=5):
    """Median seconds per call over at least `min_runs` calls and `seconds` of calls."""
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="directory for candidates_u8.bin and query_u8.bin")
    args = p.parse_args()
    os.makedirs(args.data, exist_ok=True)
    rng = np.random.default_rng(20261129)
    candidates = rng.integers(0, 256, size=(max(SIZES), DIM), dtype=np.uint8)
    query = rng.integers(0, 256, size=(1, DIM), dtype=np.uint8)
    candidates.tofile(os.path.join(args.data, "candidates_u8.bin"))
    query.tofile(os.path.join(args.data, "query_u8.bin"))

    xb = (candidates.astype(np.float32) - 128.0) / 128.0
    xq = (query.astype(np.float32) - 128.0) / 128.0
    results = {"faiss_version": faiss.__version__, "runs": []}
    for threads in (1, os.cpu_count()):
        faiss.omp_set_num_threads(threads)
        for n in SIZES:
            index = faiss.IndexFlatIP(DIM)
            index.add(xb[:n])
            seconds = best_of(lambda index=index: index.search(xq, LIMIT))
            results["runs"].append({"threads": threads, "n": n, "seconds": seconds, "candidates_per_s": n / seconds})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
