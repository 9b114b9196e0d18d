"""Print the kernel benchmarks beside their peers as Markdown tables of ratios,
from criterion's estimates and faiss_peer.py's JSON (both from one run): one
query beside FAISS; a 1,000-face list in a 1M store beside the same list
alone; batches beside numpy (BLAS) and FAISS; one 1M u8 query beside the
time to read its data at the measured bandwidth."""

import json
import os
import sys

faiss_runs = json.load(open(sys.argv[1]))
criterion = sys.argv[2]


def luna(group, variant, n=None):
    path = os.path.join(criterion, group, variant, *([str(n)] if n is not None else []), "new", "estimates.json")
    return json.load(open(path))["median"]["point_estimate"] / 1e9


def faiss_s(threads, n):
    return next(r["seconds"] for r in faiss_runs["runs"] if r["threads"] == threads and r["n"] == n)


cores = max(r["threads"] for r in faiss_runs["runs"])
print(
    "| candidates | luna u8, 1 core | luna f32, 1 core | FAISS f32, 1 thread | u8 / FAISS | f32 / FAISS "
    f"| luna u8, {cores} cores | FAISS, {cores} threads | u8 / FAISS ({cores}) |"
)
print("|---|---|---|---|---|---|---|---|---|")
for n in (10_000, 100_000, 1_000_000):
    u8, f32, fa = luna("scan_u8", "1core", n), luna("scan_f32", "1core", n), faiss_s(1, n)
    u8m, fam = luna("scan_u8", "engine", n), faiss_s(cores, n)

    def m(s, n=n):
        return f"{n / s / 1e6:.1f} M/s"

    print(f"| {n:,} | {m(u8)} | {m(f32)} | {m(fa)} | {fa / u8:.2f}x | {fa / f32:.2f}x | {m(u8m)} | {m(fam)} | {fam / u8m:.2f}x |")
print(f"\nFAISS {faiss_runs['faiss_version']}; one query, top-{10}, 512-d; medians.")

big, alone = luna("list_1000", "in_1M_store"), luna("list_1000", "alone")
print("\n| one query, 1,000-face list | in a 1M-face store | alone (a 1,000-face store) | ratio |")
print("|---|---|---|---|")
print(f"| u8 512-d, top-10, {cores} cores | {big * 1e3:.3f} ms | {alone * 1e3:.3f} ms | {big / alone:.2f}x |")

print("\n| batch | candidates | dtype | luna pairs/s | numpy (BLAS) pairs/s | luna / numpy | FAISS pairs/s | luna / FAISS |")
print("|---|---|---|---|---|---|---|---|")
tiles = os.path.isdir(os.path.join(criterion, "batch_u8", "32-blocks"))
for batch in (32, 256):
    for n in (100_000, 1_000_000):
        peers = {r["peer"]: r["pairs_per_s"] for r in faiss_runs["batches"] if r["n"] == n and r["batch"] == batch}
        for dtype in ("u8", "f32"):
            rate = batch * n / luna(f"batch_{dtype}", str(batch), n)
            print(
                f"| {batch} | {n:,} | {dtype} | {rate / 1e6:.0f} M/s | {peers['numpy'] / 1e6:.0f} M/s | {rate / peers['numpy']:.2f}x "
                f"| {peers['faiss'] / 1e6:.0f} M/s | {rate / peers['faiss']:.2f}x |"
            )
            if dtype == "u8" and tiles:
                blocks = batch * n / luna("batch_u8", f"{batch}-blocks", n)
                print(f"| {batch} | {n:,} | u8, AVX-512 blocks (no tiles) | {blocks / 1e6:.0f} M/s | | {blocks / peers['numpy']:.2f}x | | |")

bandwidth = faiss_runs["read_bytes_per_s"]
one, two = bandwidth["1"], bandwidth[str(cores)]
read_s = 1_000_000 * 512 / two
single = luna("scan_u8", "engine", 1_000_000)
print(
    f"\nRead bandwidth (numpy {faiss_runs['numpy_version']}, same run): {one / 1e9:.1f} GB/s on 1 thread, {two / 1e9:.1f} GB/s on {cores}. "
    f"One query against 1M u8 faces ({cores} cores): {single * 1e3:.1f} ms, {single / read_s:.2f}x the {read_s * 1e3:.1f} ms "
    f"{cores} cores take to read its 512 MB once."
)
