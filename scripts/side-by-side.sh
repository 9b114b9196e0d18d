# Sourced by the scripts that measure a plugin beside the built-in path
# (bench-list-cache, bench-dispatch), after env.sh: standalone services on
# one fresh PostgreSQL database, each with a data directory of its own,
# stopped and the database dropped when the script exits.

# shared_store: make the database and the work directory ($work).
shared_store() {
  pg=${LUNA_TEST_POSTGRES:-postgresql://postgres@127.0.0.1:5432}
  db=luna_bench_$(date +%s%N)
  work=$(mktemp -d)
  pids=()
  trap stop_shared_store EXIT
  psql -q "$pg/postgres" -c "CREATE DATABASE $db"
}

stop_shared_store() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$pg/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$work"
}

# serve CONFIG: a standalone service on the database; its URL in $url.
serve() {
  local port
  port=$(free_port)
  RUST_LOG=warn LUNA_MATCHER__STORAGE__BACKEND=postgres LUNA_MATCHER__STORAGE__DSN="$pg/$db" \
    target/release/luna-matcher --config "$1" --port "$port" --data-dir "$work/data-$port" &
  pids+=($!)
  url=http://127.0.0.1:$port
  wait_ready "$url" 30 && return
  echo "the service on $port did not start" >&2
  exit 1
}

# random_list URL FACES: FACES seeded random u8 faces imported through URL
# into a new list; its id in $list, the import's directory (for the bench's
# --imported, which checks answers against it) in $imported.
random_list() {
  "$VIRTUAL_ENV/bin/python" -c "import numpy, sys; numpy.save(sys.argv[1], numpy.random.default_rng(7).integers(0, 256, ($2, 512), dtype=numpy.uint8))" "$work/faces.npy"
  target/release/luna-matcher import --url "$1" --list NEW --account-id 6d3f2a5e-1111-4222-8333-444455556666 --out "$work/import" "$work/faces.npy" >/dev/null
  imported=$work/import
  list=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["list_id"])' "$work/import/summary.json")
}
