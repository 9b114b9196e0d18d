"""The peers for the kernel benchmarks, over the float32 version
((q - 128) / 128) of the same u8 descriptors the criterion bench reads: FAISS
IndexFlatIP, one query, top-10; numpy (BLAS) and FAISS batched searches of 32
and 256 queries, top-10 each; and the machine's read bandwidth, measured with
numpy on one and on all cores. Writes the data, then prints its timings as JSON."""

import argparse
import json
import os
import threading
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


def read_bandwidth(data, threads):
    """Bytes per second `threads` threads read `data` at, each summing its share (numpy releases the GIL)."""
    words = data.reshape(-1).view(np.int64)
    shares = np.array_split(words, threads)

    def read_all():
        workers = [threading.Thread(target=np.add.reduce, args=(s,)) for s in shares]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return data.nbytes / best_of(read_all, seconds=2.0)


def numpy_search(xb, xq, limit, block=65536):
    """Top-`limit` inner products of each query, a block of candidates at a time (BLAS matrix multiply)."""
    best_s = np.full((len(xq), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(xq), 0), dtype=np.int64)
    for start in range(0, len(xb), block):
        scores = xq @ xb[start : start + block].T
        top = np.argpartition(-scores, limit - 1, axis=1)[:, :limit]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argpartition(-best_s, limit - 1, axis=1)[:, :limit]
        best_s, best_i = np.take_along_axis(best_s, keep, axis=1), np.take_along_axis(best_i, keep, axis=1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


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
    results = {"faiss_version": faiss.__version__, "numpy_version": np.__version__, "runs": [], "batches": []}
    results["read_bytes_per_s"] = {str(t): read_bandwidth(candidates, t) for t in (1, os.cpu_count())}
    queries = (rng.integers(0, 256, size=(256, DIM), dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    faiss.omp_set_num_threads(os.cpu_count())
    for n in (100_000, 1_000_000):
        index = faiss.IndexFlatIP(DIM)
        index.add(xb[:n])
        for batch in (32, 256):
            xq_batch = queries[:batch]
            for peer, search in (
                ("numpy", lambda xq_batch=xq_batch, n=n: numpy_search(xb[:n], xq_batch, LIMIT)),
                ("faiss", lambda xq_batch=xq_batch, index=index: index.search(xq_batch, LIMIT)),
            ):
                seconds = best_of(search, seconds=3.0, min_runs=3)
                results["batches"].append({"peer": peer, "n": n, "batch": batch, "seconds": seconds, "pairs_per_s": n * batch / seconds})
        del index
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
