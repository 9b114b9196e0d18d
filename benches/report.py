"""Print the kernel benchmarks beside FAISS as a Markdown table of ratios,
from criterion's estimates and faiss_peer.py's JSON (both from one run)."""

import json
import os
import sys

faiss_runs = json.load(open(sys.argv[1]))
criterion = sys.argv[2]


def luna(group, variant, n):
    path = os.path.join(criterion, group, variant, str(n), "new", "estimates.json")
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
