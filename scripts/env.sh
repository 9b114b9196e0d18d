# Sourced by the scripts. The example plugins' third-party packages
# (plugins/requirements.txt) live in the project's virtual environment .venv,
# made from the interpreter luna-matcher embeds (`python3`: PYO3_PYTHON in
# .cargo/config.toml); the service imports them from there through VIRTUAL_ENV.

python_version() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null
}

# Make .venv once (again when it was made from another Python), install the
# requirements when plugins/requirements.txt (or another requirements file
# given as an argument: the tests' tools) changed, export VIRTUAL_ENV.
plugin_venv() {
  local venv=$PWD/.venv python stamp sum requirements=(plugins/requirements.txt "$@")
  python=$(python3 -c 'import sys; print(sys.executable)')
  if [ "$(python_version "$venv/bin/python")" != "$(python_version "$python")" ]; then
    echo "making the plugins' virtual environment .venv from $python"
    "$python" -m venv --clear "$venv" || {
      echo "cannot make .venv: $python needs its venv module (Debian: apt-get install python3-venv)" >&2
      return 1
    }
  fi
  stamp=$venv/.requirements.sha256
  sum=$(cat "${requirements[@]}" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    echo "installing ${requirements[*]} into .venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]/#/-r}"
    echo "$sum" >"$stamp"
  fi
  export VIRTUAL_ENV=$venv
}

# A free TCP port on the loopback, for a service a script starts.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready URL SECONDS: true once URL/healthcheck answers 2xx within SECONDS.
wait_ready() {
  for _ in $(seq $(($2 * 10))); do curl -sf "$1/healthcheck" >/dev/null && return; sleep 0.1; done
  return 1
}
