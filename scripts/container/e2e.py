"""End-to-end checks of the container image over HTTP, with podman (run by
scripts/container-test, which builds the image and sets podman up).

    python3 scripts/container/e2e.py IMAGE [podman build options for derived images]

Containers run with --network host on loopback ports of their own; each check
prints ok/FAIL, the last line is "N passed, M failed". What a check makes
(containers, volumes, images) is removed at the end.
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

IMAGE = sys.argv[1]
BUILD_OPTIONS = sys.argv[2:]
LABEL = "luna-matcher-test"
ACCOUNT = "6d3f2a5e-1111-4222-8333-444455556666"
DATA = "/srv/luna_python_matcher/data"
PLUGINS = "/srv/luna_python_matcher/plugins"
RUN_ID = uuid.uuid4().hex[:8]
# The PostgreSQL server of the shared store in the proxy check: the one the tests use.
POSTGRES = os.environ.get("LUNA_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")

made = {"container": [], "volume": [], "image": []}
results = []

# A plugin with its own routes; /my-plugin/requirement imports the package its
# requirements.txt names, which the base image does not have.
MY_PLUGIN = """
from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin, pluginHTTPResponse


class MyPlugin(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/my-plugin", self.hello, methods={"get"})
        self.addRoute("/my-plugin/requirement", self.requirement, methods={"get"})

    async def hello(self, request):
        return pluginHTTPResponse(body={"plugin": "my_plugin"})

    async def requirement(self, request):
        import six

        return pluginHTTPResponse(body={"six": six.__version__})
"""


# A plugin that crashes the interpreter (a segfault, as a broken native
# extension would), ending the process that all plugins share.
CRASH = """
import ctypes

from luna_plugins.base.plugins_meta.base_plugins import BaseBackgroundPlugin


class Crash(BaseBackgroundPlugin):
    async def initialize(self):
        self.addRoute("/crash", self.crash, methods={"post"})

    async def crash(self, request):
        ctypes.string_at(0)
"""


def podman(*args, check=True, timeout=600):
    r = subprocess.run(["podman", *args], check=False, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {r.stderr.strip()}")
    return r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def volume():
    name = f"luna-e2e-{RUN_ID}-{len(made['volume'])}"
    podman("volume", "create", "--label", LABEL, name)
    made["volume"].append(name)
    return name


class Container:
    """A container of the service on a loopback port of its own."""

    def __init__(self, image, env=None, options=(), port=None):
        self.port = port or free_port()
        args = ["run", "-d", "--pull=never", "--network", "host", "--label", LABEL]
        env = {"LUNA_MATCHER__SERVER__HOST": "127.0.0.1", "LUNA_MATCHER__SERVER__PORT": str(self.port), **(env or {})}
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        self.id = podman(*args, *options, image).stdout.strip()
        made["container"].append(self.id)

    def http(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def ready(self, limit=60):
        """Wait until /healthcheck answers 200."""
        until = time.monotonic() + limit
        while time.monotonic() < until:
            try:
                if self.http("GET", "/healthcheck")[0] == 200:
                    return
            except OSError:
                pass
            if podman("inspect", "--format", "{{.State.Running}}", self.id).stdout.strip() != "true":
                raise AssertionError(f"the container stopped:\n{self.logs()}")
            time.sleep(0.2)
        raise AssertionError(f"no 200 from /healthcheck within {limit}s:\n{self.logs()}")

    def logs(self):
        r = podman("logs", self.id, check=False)
        return r.stdout + r.stderr

    def stop(self):
        """podman stop (SIGTERM, SIGKILL after 10 s): seconds taken, exit code."""
        start = time.monotonic()
        podman("stop", "-t", "10", self.id)
        took = time.monotonic() - start
        return took, int(podman("inspect", "--format", "{{.State.ExitCode}}", self.id).stdout.strip())

    def service_uid(self):
        """The uid the luna-matcher process runs as, read on the host (/proc)."""
        pid = podman("inspect", "--format", "{{.State.Pid}}", self.id).stdout.strip()
        for p in [pid, *read(f"/proc/{pid}/task/{pid}/children").split()]:
            if read(f"/proc/{p}/comm").strip() == "luna-matcher":
                return int(next(line for line in read(f"/proc/{p}/status").splitlines() if line.startswith("Uid:")).split()[1])
        raise AssertionError(f"no luna-matcher process under PID {pid}")


def read(path):
    with open(path) as f:
        return f.read()


def check(name):
    def run(fn):
        start = time.monotonic()
        try:
            fn()
        except Exception as e:  # a failed check is reported, the others still run
            results.append(False)
            print(f"FAIL - {name}: {type(e).__name__}: {e}", flush=True)
        else:
            results.append(True)
            print(f"ok - {name} ({time.monotonic() - start:.1f}s)", flush=True)

    return run


def expect(condition, what):
    if not condition:
        raise AssertionError(what)


def descriptor():
    return base64.b64encode(os.urandom(512)).decode()


def list_face_match(c):
    """A list, a face in it, and a match of its own descriptor: (list_id, face_id, descriptor)."""
    status, body = c.http("POST", "/1/lists", {"account_id": ACCOUNT})
    expect(status == 201, f"POST /1/lists: {status} {body}")
    list_id = body["list_id"]
    d = descriptor()
    status, body = c.http("POST", "/1/faces", {"account_id": ACCOUNT, "descriptor": {"data": d}, "lists": [list_id], "user_data": "alice"})
    expect(status == 201, f"POST /1/faces: {status} {body}")
    face_id = body["face_id"]
    expect_match(c, list_id, face_id, d)
    return list_id, face_id, d


def expect_match(c, list_id, face_id, d):
    query = {
        "references": [{"type": "descriptor", "id": "probe", "data": d}],
        "candidates": [{"filters": {"origin": "faces", "list_id": list_id}, "targets": ["face_id", "similarity", "user_data"]}],
    }
    status, body = c.http("POST", "/1/matcher/faces", query)
    expect(status == 200, f"POST /1/matcher/faces: {status} {body}")
    result = body[0]["matches"][0]["result"]
    expect(len(result) == 1 and result[0]["face"]["face_id"] == face_id and result[0]["face"]["user_data"] == "alice", f"match: {body}")
    expect(abs(result[0]["similarity"] - 1.0) < 1e-6, f"similarity: {body}")


def expect_my_plugin(c):
    status, body = c.http("GET", "/my-plugin")
    expect((status, body) == (200, {"plugin": "my_plugin"}), f"GET /my-plugin: {status} {body}\n{c.logs()}")


# Example plugins that need nothing outside the container (redis_faces would
# read the machine's Redis through the host network).
EXAMPLES = {"LUNA_MATCHER_PROXY_ACTIVE_PLUGINS": '["request_monitoring", "teapot"]'}
WITH_MY_PLUGIN = {"LUNA_MATCHER_PROXY_ACTIVE_PLUGINS": '["teapot", "my_plugin"]'}


def main():
    fixtures = tempfile.mkdtemp(prefix="luna-e2e-")
    try:
        os.makedirs(f"{fixtures}/my_plugin")
        with open(f"{fixtures}/my_plugin/__init__.py", "w") as f:
            f.write(MY_PLUGIN)
        with open(f"{fixtures}/my_plugin/requirements.txt", "w") as f:
            f.write("six\n")
        with open(f"{fixtures}/crash.py", "w") as f:
            f.write(CRASH)
        run_checks(fixtures)
    finally:
        shutil.rmtree(fixtures, ignore_errors=True)
        for c in made["container"]:
            podman("rm", "-f", "-v", "-t", "0", c, check=False)  # -v: its anonymous data volume too
        for v in made["volume"]:
            podman("volume", "rm", "-f", v, check=False)
        for i in made["image"]:
            podman("rmi", "-f", i, check=False)
    print(f"{results.count(True)} passed, {results.count(False)} failed")
    return 0 if all(results) else 1


def run_checks(fixtures):
    data = volume()
    state = {}
    first = Container(IMAGE, EXAMPLES, ["-v", f"{data}:{DATA}"])

    @check("the image serves /healthcheck")
    def _():
        first.ready()

    @check("the image's HEALTHCHECK reports healthy")
    def _():
        r = podman("healthcheck", "run", first.id, check=False)
        expect(r.returncode == 0, f"podman healthcheck run: {r.returncode} {r.stdout} {r.stderr}")

    @check("the service runs as uid 1001")
    def _():
        expect(first.service_uid() == 1001, f"uid {first.service_uid()}")

    @check("a list, a face and a match")
    def _():
        state["list"], state["face"], state["descriptor"] = list_face_match(first)

    @check("a plugin route (/teapot) and plugins importing from the image's venv")
    def _():
        status, body = first.http("GET", "/teapot")
        expect((status, body) == (418, "I am teapot"), f"GET /teapot: {status} {body}")
        status, plugins = first.http("GET", "/1/plugins")
        states = {p["name"]: p["state"] for p in plugins}
        expect(states == {"request_monitoring": "running", "teapot": "running"}, f"/1/plugins: {plugins}")
        expect("with the virtual environment /srv/luna_python_matcher/venv (from plugins.venv)" in first.logs(), first.logs())

    @check("SIGTERM stops the service within 5 s with exit code 0")
    def _():
        took, code = first.stop()
        expect(took < 5 and code == 0, f"stopped in {took:.1f}s with exit code {code}\n{first.logs()}")
        expect("stopped" in first.logs(), first.logs())

    @check("the store is kept across a restart with the volume")
    def _():
        expect("face" in state, "no face was stored")
        again = Container(IMAGE, EXAMPLES, ["-v", f"{data}:{DATA}"])
        again.ready()
        status, body = again.http("GET", f"/1/faces/{state['face']}")
        expect(status == 200 and body["face_id"] == state["face"], f"GET /1/faces/{state['face']}: {status} {body}")
        expect_match(again, state["list"], state["face"], state["descriptor"])
        podman("restart", "-t", "10", again.id)
        again.ready()
        expect_match(again, state["list"], state["face"], state["descriptor"])
        _, code = again.stop()
        expect(code == 0, f"exit code {code}")

    @check("an arbitrary uid in group 0 (OpenShift) stores data and loads plugins")
    def _():
        c = Container(IMAGE, EXAMPLES, ["--user", "1234567:0", "-v", f"{volume()}:{DATA}"])
        c.ready()
        expect(c.service_uid() == 1234567, f"uid {c.service_uid()}")
        list_face_match(c)
        expect(c.http("GET", "/teapot")[0] == 418, "GET /teapot")
        _, code = c.stop()
        expect(code == 0, f"exit code {code}")

    @check("a derived image: the seed's COPY line, its requirements, the active-plugins variable")
    def _():
        derived = f"localhost/luna-matcher-derived:{RUN_ID}"
        with open(f"{fixtures}/Containerfile", "w") as f:
            f.write(
                f"FROM {IMAGE}\n"
                "COPY --chown=1001:0 my_plugin ./luna_python_matcher/plugins/my_plugin\n"
                "RUN pip install --no-cache-dir -r ./luna_python_matcher/plugins/my_plugin/requirements.txt\n"
                'ENV LUNA_MATCHER_PROXY_ACTIVE_PLUGINS=\'["teapot", "my_plugin"]\'\n'
            )
        podman("build", "--format", "docker", "--network", "host", "--pull=never", "--label", LABEL, *BUILD_OPTIONS, "-t", derived, fixtures)
        made["image"].append(derived)
        c = Container(derived)
        c.ready()
        expect_my_plugin(c)
        status, body = c.http("GET", "/my-plugin/requirement")
        expect(status == 200 and body.get("six"), f"GET /my-plugin/requirement: {status} {body}")
        owner = podman("run", "--rm", "--pull=never", "--entrypoint", "stat", derived, "-c", "%u:%g", f"{PLUGINS}/my_plugin/__init__.py").stdout.strip()
        expect(owner == "1001:0", f"owner {owner}")
        c.stop()

    @check("a plugin bind-mounted into a container of the image")
    def _():
        mount = f"type=bind,source={fixtures}/my_plugin,target={PLUGINS}/my_plugin,readonly"
        c = Container(IMAGE, WITH_MY_PLUGIN, ["--mount", mount])
        c.ready()
        expect_my_plugin(c)
        # Its requirement is not in the base image: only a derived image adds it.
        status, body = c.http("GET", "/my-plugin/requirement")
        expect(status == 500 and "No module named 'six'" in c.logs(), f"GET /my-plugin/requirement: {status} {body}")
        c.stop()

    @check("a plugin copied into a running container (podman cp), committed, and the new image run")
    def _():
        running = Container(IMAGE, EXAMPLES)
        running.ready()
        podman("cp", f"{fixtures}/my_plugin", f"{running.id}:{PLUGINS}/my_plugin")
        committed = f"localhost/luna-matcher-committed:{RUN_ID}"
        podman(
            "commit",
            "--format",
            "docker",
            "--change",
            f"ENV LUNA_MATCHER_PROXY_ACTIVE_PLUGINS={WITH_MY_PLUGIN['LUNA_MATCHER_PROXY_ACTIVE_PLUGINS']}",
            running.id,
            committed,
        )
        made["image"].append(committed)
        running.stop()
        c = Container(committed)
        c.ready()
        expect_my_plugin(c)
        c.stop()

    @check("a plugin that segfaults ends the process: --restart=always brings the service back with its store")
    def _():
        mount = f"type=bind,source={fixtures}/crash.py,target={PLUGINS}/crash.py,readonly"
        c = Container(IMAGE, {"LUNA_MATCHER_PROXY_ACTIVE_PLUGINS": '["crash"]'}, ["--restart=always", "-v", f"{volume()}:{DATA}", "--mount", mount])
        c.ready()
        list_id, face_id, d = list_face_match(c)
        try:
            c.http("POST", "/crash")
        except OSError:
            pass  # the connection dies with the process
        until = time.monotonic() + 60
        while int(podman("inspect", "--format", "{{.RestartCount}}", c.id).stdout.strip() or 0) < 1:
            expect(time.monotonic() < until, f"no restart within 60s:\n{c.logs()}")
            time.sleep(0.2)
        c.ready()
        expect_match(c, list_id, face_id, d)
        _, code = c.stop()
        expect(code == 0, f"exit code {code}")

    proxy_role()


def psql(sql):
    """One statement on the machine's PostgreSQL server (the tests' server)."""
    r = subprocess.run(["psql", f"{POSTGRES}/postgres", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True, check=False)
    expect(r.returncode == 0, f"psql {sql}: {r.stderr.strip()}")


def proxy_role():
    """SERVICE_TYPE=proxy from the same image, in front of a matcher container
    of the same image, both on a PostgreSQL database of their own."""
    db = f"luna_e2e_{RUN_ID}"
    psql(f"CREATE DATABASE {db}")
    try:
        store = {"LUNA_MATCHER__STORAGE__BACKEND": "postgres", "LUNA_MATCHER__STORAGE__DSN": f"{POSTGRES}/{db}"}
        matcher = Container(IMAGE, {**store, "LUNA_MATCHER__SERVER__ROLE": "matcher"})
        proxy = Container(IMAGE, {**store, "SERVICE_TYPE": "proxy", "LUNA_MATCHER__PROXY__MATCHERS": json.dumps([f"http://127.0.0.1:{matcher.port}"])})

        @check("SERVICE_TYPE=proxy: a proxy container matches through a matcher container")
        def _():
            matcher.ready()
            proxy.ready()
            expect("as Proxy" in proxy.logs(), proxy.logs())
            status, body = proxy.http("GET", "/healthcheck?include_luna_services=1")
            expect(status == 200, f"proxy /healthcheck?include_luna_services=1: {status} {body}")
            list_face_match(proxy)
            status, metrics = proxy.http("GET", "/metrics")
            expect(status == 200 and f"127.0.0.1:{matcher.port}" in metrics, f"the proxy's /metrics name the matcher:\n{metrics}")

        @check("the proxy and the matcher stop on SIGTERM with exit code 0")
        def _():
            for c in (proxy, matcher):
                _, code = c.stop()
                expect(code == 0, f"exit code {code}\n{c.logs()}")
    finally:
        for c in made["container"]:
            podman("rm", "-f", "-t", "0", c, check=False)
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    sys.exit(main())
