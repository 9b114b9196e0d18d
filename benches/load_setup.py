"""Fill a running luna-matcher with one list of N random 512 x u8 faces and
write the request bodies the load test sends."""

import argparse
import base64
import json
import os
import random
import urllib.request

ACCOUNT = "6d3f2a5e-1111-4222-8333-444455556666"


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def descriptor(rng):
    return base64.b64encode(rng.randbytes(512)).decode()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--faces", type=int, default=100_000)
    p.add_argument("--raw-candidates", type=int, default=100)
    p.add_argument("--out", required=True, help="directory for faces.json and raw.json")
    args = p.parse_args()
    rng = random.Random(7)
    list_id = post(f"{args.url}/1/lists", {"account_id": ACCOUNT})["list_id"]
    for start in range(0, args.faces, 5000):
        batch = [{"account_id": ACCOUNT, "descriptor": {"data": descriptor(rng)}, "lists": [list_id]}
                 for _ in range(min(5000, args.faces - start))]
        post(f"{args.url}/1/faces/bulk", batch)
    faces = {"references": [{"type": "descriptor", "id": "r1", "data": descriptor(rng)}],
             "candidates": [{"filters": {"origin": "faces", "list_id": list_id}, "limit": 3}]}
    raw = {"references": [{"id": "r1", "data": descriptor(rng)}],
           "candidates": [{"id": f"c{i}", "data": descriptor(rng)} for i in range(args.raw_candidates)],
           "descriptor_version": 62, "limit": 3}
    for name, body in (("faces.json", faces), ("raw.json", raw)):
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(body, f)
    print(f"list {list_id}: {args.faces} faces")


if __name__ == "__main__":
    main()
