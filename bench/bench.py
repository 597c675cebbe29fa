#!/usr/bin/env python3
"""spawngate benchmark: spawngate next to a baseline, measured side by side in one run.

  a. forwardAuth `/auth/u-<slug>` of a logged-in user whose container is ready,
     against a hyper no-op responder (examples/noop.rs), with identical wrk settings;
     then what a user pays: the app through Traefik with spawngate's forwardAuth,
     against the same Traefik, router, middlewares and service with a no-op
     forwardAuth (the app's secret header added by a headers middleware).
  b. Cold first request through Traefik (create + start + ready + proxy) against a
     raw `docker run` of the same image followed by polling until the first 200.
  c. Resume of a stopped container: admin stop, then the first request through
     Traefik, against `docker stop` then `docker start` + polling until the first 200.
  d. Warm pool (docker-compose deployment, network mode): first request of a new user
     with pool.size 0 against pool.size N; skipped when the build has no pool.
  e. Unpause: a container paused by the idle culler (lifecycle.pause_after_secs = 2),
     first request through Traefik, against `docker pause` then `docker unpause` +
     polling until the first 200.
  f. Scale: spawngate's memory with 1,000 users and 50 running containers, the size and
     fetch time of /traefik/config, /auth latency at that scale, next to the memory of
     the 50 containers and of Traefik.
  g. Soak: 50 users, client loops with session cookies through Traefik for a few
     minutes while the idle culler (short tiers) pauses, stops and removes containers
     and a chaos loop stops them (admin API) and `docker rm -f`s them; counts every
     answer (only 200 and the documented 503 "starting" are allowed: anything else
     makes the run exit non-zero), spawngate's RSS, threads and open fds at start and
     end, and the containers and volumes left after the users are deleted.
  i. Many users (not in the default set: `bench/run --only i`, ~15 min): one pair grown
     to 1,000 / 10,000 / 50,000 users through the admin API, a few calls at a time; at
     each step the creation rate, the time until a new user's router is in Traefik (1 s
     poll), spawngate's and Traefik's memory, the provider document, /auth req/s next
     to a pair with 10 users, and the latency of single adds.
  h. SSH: `ssh … -- true` into a running environment (a new connection each time,
     and over one multiplexed connection) against `docker exec <container> true` of
     the same container, sides alternating; then cold: `ssh … -- true` after an
     admin stop against `docker stop`, then `docker start` + `docker exec … true`
     of a raw container of the same image (spawngate-example-shell).
  j. Jupyter (spawngate-example-jupyter, examples/jupyter, as a profile with
     strip_prefix = false and app_auth = "token"): cold first request of a new
     environment through Traefik against a raw `docker run` of the same image + polling
     until the first 200, then resume after an admin stop against `docker stop`, then
     `docker start` + polling; both sides poll Jupyter's `<base path>/api`.
  s. Swarm backend (docker.mode = "swarm", ports published in host mode): cold first
     request of a new user through Traefik (a new service) against a raw `docker
     service create` of the same image + polling until the first 200; resume (admin
     stop = scale to 0, then the first request) against scaling a raw service 0 -> 1
     + polling. On a single-node swarm the bench makes (and leaves) when the engine
     is in none. Run with b. and c. (`--only bcs`) for the Docker backend's figures
     of the same run.
  r. Replicas on PostgreSQL (issue 16; not in the default set: `bench/run --only r`):
     a signed-in user's app through Traefik with one spawngate on sled, one replica
     on PostgreSQL and two, all three behind Traefik's `internal` entry point
     (docs/ha.md), plus the sled one with forwardAuth straight to spawngate, wrk
     rounds alternating, ratios against sled; cold start on PostgreSQL vs sled; the propagation delay of a
     revocation (revoked on replica A, B's /auth polled until 401; p50/p99 of 50);
     failover (leader SIGKILLed -> the other reports role=leader -> its first cull).
     Starts a throw-away PostgreSQL (Debian's package, as the tests do).

Run it with bench/run (which builds everything first). Stdlib only. Everything it
creates (spawngate, Traefik, the no-op server, containers, volumes, networks, compose
projects, temporary directories) is removed at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SGBENCH_SPAWNGATE: another build (e.g. a debug one) for a quick check of a section.
SPAWNGATE = os.environ.get("SGBENCH_SPAWNGATE") or os.path.join(ROOT, "dist", "spawngate")
TRAEFIK = os.path.join(ROOT, ".venv", "bin", "traefik")
NOOP = os.path.join(ROOT, "target", "release", "examples", "noop")
IMAGE = "spawngate-example-app:latest"
# The example app with a shell and sftp-server (examples/shell/build), for h.
SHELL_IMAGE = "spawngate-example-shell:latest"
# The Jupyter example (examples/debian-image/build examples/jupyter), for j.
JUPYTER_IMAGE = "spawngate-example-jupyter:latest"
JUPYTER_PORT = 8888
APP_PORT = 8080
COOKIE_NAME = "spawngate_session"


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], timeout: float = 60, env: dict | None = None, check: bool = True,
        cwd: str | None = None) -> str:
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and p.returncode != 0:
        raise BenchError(f"command failed ({p.returncode}): {' '.join(args)}\n{p.stderr.strip()}")
    return p.stdout


def docker_lines(*args: str) -> list[str]:
    out = run(["docker", *args], check=False)
    return [l.strip() for l in out.splitlines() if l.strip()]


_KNOWN_ENV: dict[str, bool] = {}


def build_knows(var: str, value: str) -> bool:
    """Whether dist/spawngate knows the setting `var`: `spawngate check` with it set
    and a temporary data directory fails naming unknown variables."""
    if var not in _KNOWN_ENV:
        tmp = tempfile.mkdtemp(prefix="sgbench-check-")
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SPAWNGATE_")}
            env.update({var: value, "SPAWNGATE_SERVER_DATA_DIR": tmp})
            p = subprocess.run([SPAWNGATE, "check"], capture_output=True, text=True, timeout=60, env=env)
            _KNOWN_ENV[var] = f"unknown environment variable {var}" not in p.stdout + p.stderr
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _KNOWN_ENV[var]


def optional_settings() -> dict[str, str]:
    """Settings the bench needs only from builds that have them: login rate limits
    (30 an hour per address by default) would refuse f.'s 50 logins from 127.0.0.1."""
    wanted = {"SPAWNGATE_LOGIN_PER_IP_PER_HOUR": "100000"}
    return {k: v for k, v in wanted.items() if build_knows(k, v)}


def http_request(
    port: int,
    path: str,
    method: str = "GET",
    headers: dict | None = None,
    body: str | None = None,
    timeout: float = 30,
) -> tuple[int | None, dict, bytes]:
    """One request on a fresh connection. Connection errors give status None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    except (OSError, http.client.HTTPException) as e:
        return None, {}, str(e).encode()
    finally:
        conn.close()


def wait_until(what: str, pred, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Poll:
    ms: float
    attempts: int
    statuses: list = field(default_factory=list)  # non-200 outcomes seen on the way


def poll_until_200(port: int, path: str, headers: dict, t0: float, interval: float, timeout: float = 60) -> Poll:
    """GETs until the first 200; a new connection per attempt, `interval` between
    failed attempts. Returns milliseconds since `t0` (a perf_counter value)."""
    attempts = 0
    seen: list = []
    deadline = t0 + timeout
    while True:
        attempts += 1
        status, _, body = http_request(port, path, headers=headers, timeout=timeout)
        if status == 200:
            return Poll((time.perf_counter() - t0) * 1000, attempts, seen)
        seen.append(status if status is not None else "conn-err")
        if time.perf_counter() > deadline:
            raise BenchError(f"no 200 from 127.0.0.1:{port}{path} within {timeout} s (last: {status} {body[:200]!r})")
        time.sleep(interval)


def compress(statuses: list) -> str:
    """[conn-err, conn-err, 503] -> 'conn-err x2, 503'."""
    out: list[str] = []
    prev, n = None, 0
    for s in statuses + [object()]:
        if s == prev:
            n += 1
            continue
        if prev is not None:
            out.append(f"{prev} x{n}" if n > 1 else f"{prev}")
        prev, n = s, 1
    return ", ".join(out) or "-"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def fmt_ms(x: float) -> str:
    return f"{x:,.1f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def table(headers: list[str], rows: list[list[str]], indent: str = "  ") -> str:
    """First column left-aligned, the others right-aligned (numbers)."""
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]

    def line(r):
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return indent + "  ".join(cells).rstrip()

    sep = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def key_values(rows: list[list[str]], indent: str = "  ") -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}" for k, v in rows)


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    rps: float
    p50: float
    p99: float
    requests: int
    non2xx: int
    socket_errors: str


def _to_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        raise BenchError(f"cannot parse wrk latency {value!r}")
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, threads: int, conns: int, duration: str, headers: list[str]) -> WrkResult:
    args = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}", "--latency"]
    for h in headers:
        args += ["-H", h]
    args.append(url)
    out = run(args, timeout=600)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and total):
        raise BenchError(f"cannot parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors:\s*(.*)", out)
    return WrkResult(
        rps=float(rps.group(1)),
        p50=_to_ms(p50.group(1)),
        p99=_to_ms(p99.group(1)),
        requests=int(total.group(1)),
        non2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sock.group(1).strip() if sock else "",
    )


# --------------------------------------------------------------------------- the bench


class Bench:
    """One spawngate (host mode) + Traefik pair, optionally with the no-op server, and
    the raw baseline containers measured next to it. Sections e. and f. start pairs of
    their own (`tag` keeps their instance, network, labels and ports apart)."""

    def __init__(self, opts: argparse.Namespace, run_id: str | None = None, tag: str = "",
                 extra_env: dict | None = None, noop: bool = True,
                 host_ports: tuple[int, int] = (20000, 23999)) -> None:
        self.opts = opts
        self.run_id = run_id or secrets.token_hex(4)
        self.tag = tag
        self.with_noop = noop
        self.instance = f"bench{self.run_id}{tag}"
        self.network = f"sgbench-{self.run_id}{tag}"
        # Which networks the raw baselines ran on (printed with the results).
        self.raw_networks: set[str] = set()
        self.raw_label = f"sgbench.run={self.run_id}{tag}"
        self.data_dir = tempfile.mkdtemp(prefix=f"sgbench-{self.run_id}{tag}-")
        self.sg_port = free_port()
        self.web_port = free_port()
        self.api_port = free_port()
        self.noop_port = free_port()
        self.public = f"http://127.0.0.1:{self.web_port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, str] = {}
        self.admin_token = ""
        self.started = False
        self.cleaned = False
        # Processes cleanup() stops, in this order (SIGTERM, then SIGKILL after 10 s).
        self.stop_order = ["traefik", "noop", "spawngate"]
        self.sg_env = {k: v for k, v in os.environ.items() if not k.startswith("SPAWNGATE_")}
        self.sg_env.update(
            SPAWNGATE_SERVER_LISTEN=f"127.0.0.1:{self.sg_port}",
            SPAWNGATE_SERVER_DATA_DIR=self.data_dir,
            SPAWNGATE_SERVER_PUBLIC_URL=self.public,
            SPAWNGATE_DOCKER_INSTANCE=self.instance,
            SPAWNGATE_DOCKER_NETWORK=self.network,
            # Disjoint host-port ranges: several pairs of this run (and their users'
            # published ports) may be up at once.
            SPAWNGATE_DOCKER_HOST_PORT_MIN=str(host_ports[0]),
            SPAWNGATE_DOCKER_HOST_PORT_MAX=str(host_ports[1]),
            # Cold means cold: no container before the first request (the defaults
            # create it with the user and start it at login).
            SPAWNGATE_LIFECYCLE_PRECREATE="false",
            SPAWNGATE_LIFECYCLE_START_ON_LOGIN="false",
            # Quiet, except one JSON line per spawn ("container ready", ms): the
            # time spawngate's own spawn task took, shown next to the totals.
            SPAWNGATE_LOG="warn,spawngate::lifecycle=info",
            SPAWNGATE_LOG_FORMAT="json",
        )
        self.sg_env.update(optional_settings())
        self.sg_env.update(extra_env or {})
        self.traefik_args = [
            f"--entrypoints.web.address=127.0.0.1:{self.web_port}",
            f"--entrypoints.traefik.address=127.0.0.1:{self.api_port}",
            "--api.insecure=true",
            f"--providers.http.endpoint=http://127.0.0.1:{self.sg_port}/traefik/config",
            "--providers.http.pollinterval=1s",
            "--global.checknewversion=false",
            "--global.sendanonymoususage=false",
            "--log.level=ERROR",
        ]
        # The pair with the no-op server also serves a.'s floor: the same Traefik, a
        # second entry point, and routers from a file provider (see section_a_traefik).
        self.floor_port = free_port()
        self.floor_dir = os.path.join(self.data_dir, "traefik-floor")
        if noop:
            os.makedirs(self.floor_dir, exist_ok=True)
            self.traefik_args += [
                f"--entrypoints.floor.address=127.0.0.1:{self.floor_port}",
                f"--providers.file.directory={self.floor_dir}",
                "--providers.file.watch=true",
            ]

    # ---- processes

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> None:
        path = os.path.join(self.data_dir, f"{name}.log")
        self.logs[name] = path
        with open(path, "wb") as f:
            # Own session: Ctrl-C reaches only this script, which stops them in order.
            self.procs[name] = subprocess.Popen(
                args, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise BenchError(f"{name} exited with code {p.returncode}; log:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 30) -> str:
        try:
            with open(self.logs[name], errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def log_offset(self) -> int:
        try:
            return os.path.getsize(self.logs["spawngate"])
        except (OSError, KeyError):
            return 0

    def ready_ms(self, user: str, since: int) -> float | None:
        """The `ms` of spawngate's last "container ready" log line for `user` written
        after byte `since` of its log; None when there is none (or the log format
        changed)."""
        found = None
        try:
            with open(self.logs["spawngate"], "rb") as f:
                f.seek(since)
                for raw in f:
                    try:
                        fields = json.loads(raw).get("fields", {})
                    except (ValueError, AttributeError):
                        continue
                    if fields.get("message") == "container ready" and fields.get("user") == user:
                        found = float(fields["ms"]) if "ms" in fields else found
        except (OSError, KeyError, ValueError, TypeError):
            return None
        return found

    def cli(self, *args: str) -> str:
        return run([SPAWNGATE, *args], env=self.sg_env, timeout=60).strip()

    def start(self) -> None:
        self.started = True
        self.spawn("spawngate", [SPAWNGATE, "serve"], env=self.sg_env)
        wait_until(
            "spawngate /healthz",
            lambda: self.check_alive() or http_request(self.sg_port, "/healthz", timeout=2)[0] == 200,
            timeout=30,
        )
        if self.with_noop:
            self.spawn("noop", [NOOP], env={**os.environ, "PORT": str(self.noop_port)})
            wait_until(
                "the no-op server",
                lambda: self.check_alive() or http_request(self.noop_port, "/", timeout=2)[0] == 200,
                timeout=30,
            )
        self.spawn("traefik", [TRAEFIK, *self.traefik_args])
        self.wait_router("spawngate")
        self.admin_token = self.cli("token")
        if not self.admin_token:
            raise BenchError("`spawngate token` printed nothing")

    def wait_router(self, name: str) -> None:
        wait_until(
            f"Traefik to load router {name}@http",
            lambda: self.check_alive()
            or http_request(self.api_port, f"/api/http/routers/{name}@http", timeout=2)[0] == 200,
            timeout=30,
        )

    # ---- users

    def add_user(self, name: str) -> str:
        out = self.cli("user", "add", name)
        m = re.search(r"/u-([A-Za-z0-9]+)/?\s*$", out)
        if not m:
            raise BenchError(f"cannot find the slug in `user add` output: {out!r}")
        return m.group(1)

    def login(self, name: str, port: int | None = None, env: dict | None = None) -> str:
        """Signs `name` in through Traefik (or at `port`, with a link the CLI
        run with `env` mints); the Cookie header value."""
        link = run([SPAWNGATE, "user", "login-link", name], env=env or self.sg_env, timeout=60).strip()
        token = urllib.parse.parse_qs(urllib.parse.urlparse(link).query).get("token", [""])[0]
        if not token:
            raise BenchError(f"no token in login link {link!r}")
        status, headers, body = http_request(
            port or self.web_port,
            "/_spawngate/login",
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=urllib.parse.urlencode({"token": token}),
        )
        # http.client folds repeated Set-Cookie headers into one, comma-separated.
        m = re.search(rf"{COOKIE_NAME}=([^;,\s]+)", headers.get("set-cookie", ""))
        if status != 303 or not m:
            raise BenchError(f"login of {name} failed: {status} {headers} {body[:300]!r}")
        return f"{COOKIE_NAME}={m.group(1)}"

    def prepare_users(self, names: list[str]) -> dict[str, tuple[str, str]]:
        """Creates users, waits for their Traefik routers, logs them in."""
        users = {n: self.add_user(n) for n in names}
        for slug in users.values():
            self.wait_router(f"u-{slug}")
        return {n: (slug, self.login(n)) for n, slug in users.items()}

    def api(self, method: str, path: str, body: dict | None = None, expect: int = 200,
            timeout: float = 60) -> dict:
        """One admin API call (`/_spawngate/api/<path>`) with the admin token."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        status, _, data = http_request(
            self.sg_port, f"/_spawngate/api/{path}", method=method, headers=headers,
            body=None if body is None else json.dumps(body), timeout=timeout,
        )
        if status != expect:
            raise BenchError(f"{method} /_spawngate/api/{path} failed: {status} {data[:300]!r}")
        try:
            return json.loads(data)
        except ValueError:
            raise BenchError(f"{method} /_spawngate/api/{path}: not JSON: {data[:300]!r}")

    def admin_stop(self, name: str) -> None:
        self.api("POST", f"users/{name}/container/stop")

    def container_states(self, slug: str) -> list[str]:
        """Docker states (`running`, `exited`, ...) of the user's containers."""
        ids = docker_lines(
            "ps", "-aq",
            "--filter", f"label=spawngate.instance={self.instance}",
            "--filter", f"label=spawngate.slug={slug}",
        )
        return docker_lines("inspect", "-f", "{{.State.Status}}", *ids) if ids else []

    def through_traefik(self, slug: str, cookie: str, t0: float) -> Poll:
        return poll_until_200(
            self.web_port, f"/u-{slug}/whoami.json", {"Cookie": cookie}, t0, self.opts.poll_ms / 1000
        )

    # ---- raw docker

    def raw_run(self, tag: str) -> tuple[str, int, float, Poll]:
        """`docker run -d -p …` then poll; returns (id, port, cli_ms, poll).

        On spawngate's own network once it exists: attaching a container to a
        network with inter-container traffic off costs Docker ~100 ms more than
        the default bridge, and that is the isolation's price, not spawngate's."""
        port = free_port()
        network = ["--network", self.network] if self.network_ids() else []
        self.raw_networks.add(self.network if network else "bridge")
        args = [
            "docker", "run", "-d",
            "--name", f"sgbench-raw-{self.run_id}-{tag}",
            "--label", self.raw_label,
            *network,
            "-p", f"127.0.0.1:{port}:{APP_PORT}",
            IMAGE,
        ]
        t0 = time.perf_counter()
        cid = run(args, timeout=120).strip()
        cli_ms = (time.perf_counter() - t0) * 1000
        poll = poll_until_200(port, "/whoami.json", {}, t0, self.opts.poll_ms / 1000)
        return cid, port, cli_ms, poll

    def raw_start(self, cid: str, port: int) -> tuple[float, Poll]:
        t0 = time.perf_counter()
        run(["docker", "start", cid], timeout=120)
        cli_ms = (time.perf_counter() - t0) * 1000
        return cli_ms, poll_until_200(port, "/whoami.json", {}, t0, self.opts.poll_ms / 1000)

    # ---- clean-up

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for name in self.stop_order:
                p = self.procs.get(name)
                if p is None or p.poll() is not None:
                    continue
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            for label in (f"label=spawngate.instance={self.instance}", f"label={self.raw_label}"):
                # Swarm services first (s.): their task containers go below.
                services = docker_lines("service", "ls", "-q", "--filter", label)
                if services:
                    run(["docker", "service", "rm", *services], check=False, timeout=120)
                ids = docker_lines("ps", "-aq", "--filter", label)
                if ids:
                    run(["docker", "rm", "-f", "-v", *ids], check=False, timeout=120)
            vols = docker_lines("volume", "ls", "-q", "--filter", f"label=spawngate.instance={self.instance}")
            if vols:
                run(["docker", "volume", "rm", "-f", *vols], check=False)
            # By id: Docker allows several networks with one name, and then refuses
            # to remove any of them by that name.
            nets = self.network_ids() + docker_lines(
                "network", "ls", "-q", "--filter", f"label=spawngate.instance={self.instance}")
            # An overlay stays in use a moment after its last task went.
            for _ in range(20):
                if not nets:
                    break
                run(["docker", "network", "rm", *nets], check=False)
                nets = self.network_ids() + docker_lines(
                    "network", "ls", "-q", "--filter", f"label=spawngate.instance={self.instance}")
                if nets:
                    time.sleep(0.25)
            shutil.rmtree(self.data_dir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old_int)

    def leftovers(self) -> list[str]:
        left = []
        for label in (f"label=spawngate.instance={self.instance}", f"label={self.raw_label}"):
            left += [f"container {c}" for c in docker_lines("ps", "-aq", "--filter", label)]
        left += [
            f"volume {v}"
            for v in docker_lines("volume", "ls", "-q", "--filter", f"label=spawngate.instance={self.instance}")
        ]
        left += [f"network {self.network} ({n})" for n in self.network_ids()]
        for label in (f"label=spawngate.instance={self.instance}", f"label={self.raw_label}"):
            left += [f"service {x}" for x in docker_lines("service", "ls", "-q", "--filter", label)]
        left += [f"network {n}" for n in docker_lines(
            "network", "ls", "-q", "--filter", f"label=spawngate.instance={self.instance}")]
        return left

    def network_ids(self) -> list[str]:
        lines = docker_lines("network", "ls", "--no-trunc", "--format", "{{.ID}} {{.Name}}")
        return [l.split()[0] for l in lines if l.split()[1:] == [self.network]]


# --------------------------------------------------------------------------- sections


def header(b: Bench, o: argparse.Namespace) -> None:
    def first_line(args: list[str]) -> str:
        try:
            p = subprocess.run(args, capture_output=True, text=True, timeout=30)
            return ((p.stdout or p.stderr).strip().splitlines() or ["?"])[0]
        except (OSError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    git = run(["git", "-C", ROOT, "describe", "--always", "--dirty"], check=False).strip() or "unknown"

    # What one docker CLI call costs by itself (the raw baselines pay it once per run).
    cli_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        run(["docker", "image", "inspect", "-f", ".", IMAGE])
        cli_times.append((time.perf_counter() - t0) * 1000)

    print("spawngate benchmark")
    print("=" * 78)
    print("Machine")
    rows = [
        ["nproc", str(os.cpu_count())],
        ["cpu", cpu],
        ["kernel", platform.release()],
        ["load average (1/5/15 min)", " ".join(f"{x:.2f}" for x in os.getloadavg())],
        ["docker server / client", run(["docker", "version", "--format", "{{.Server.Version}} / {{.Client.Version}}"]).strip()],
        ["docker CLI call (image inspect), median of 5", f"{median(cli_times):.1f} ms"],
        ["traefik", " ".join(first_line([TRAEFIK, "version"]).split())],
        ["wrk", first_line(["wrk", "--version"])],
        ["spawngate", f"{first_line([SPAWNGATE, '--version'])} ({os.path.relpath(SPAWNGATE, ROOT)}, git {git})"],
        ["python", platform.python_version()],
    ]
    print(key_values(rows))
    print()
    print("Settings")
    wrk_cmd = f"wrk -t{o.threads} -c{o.connections} -d{o.duration} --latency"
    rows = [
        ["a. load generator", f"{wrk_cmd} <url>   ({o.rounds} rounds alternating auth/noop, best by req/s; "
                              f"warm-up {wrk_cmd.replace(f'-d{o.duration}', f'-d{o.warmup_duration}')} each)"],
        ["a. spawngate", f"GET http://127.0.0.1:{b.sg_port}/auth/u-<slug>  -H 'Cookie: {COOKIE_NAME}=<jwt>' (container ready)"],
        ["a. baseline", f"GET http://127.0.0.1:{b.noop_port}/  (target/release/examples/noop)"],
        ["b./c. runs", f"{o.runs} timed + {o.warmup} untimed warm-up per side, sides alternating"],
        ["b./c. polling", f"new connection per GET, {o.poll_ms:g} ms between failed attempts, timer: time.perf_counter"],
        ["b./c. settle", f"{o.settle:g} s idle before each timed run"],
        ["b. spawngate", "GET <traefik>/u-<slug>/whoami.json until 200 (user created, routed, logged in beforehand; "
                         "lifecycle.precreate and lifecycle.start_on_login off, so no container exists before)"],
        ["b. baseline", f"docker run -d --network <spawngate's network, once it exists> -p 127.0.0.1:<port>:{APP_PORT} {IMAGE}, "
                        "then GET /whoami.json until 200"],
        ["c. spawngate", "POST /_spawngate/api/users/<name>/container/stop; then GET through Traefik until 200"],
        ["c. baseline", "docker stop <id>; then docker start <id> + GET /whoami.json until 200"],
        ["b./c. not equal", "spawngate's container also gets its named volume, memory/CPU/pids limits and "
                            "no-new-privileges; the raw one runs on the same network with plain defaults "
                            "(+ the image's anonymous /data volume)"],
        ["d. spawngate", "docker-compose.yml + examples/compose.local.yml + an override (precreate and "
                         "start_on_login off), two projects up at once, pool.size 0 and pool.size <runs>; "
                         "GET <traefik>/u-<slug>/whoami.json until 200 for a new user, sides alternating"],
        ["e. spawngate", "a second pair, + " + " ".join(f"{k}={v}" for k, v in SETTINGS_E.items())
                         + "; wait until Docker reports the container paused, then GET through Traefik until 200"],
        ["e. baseline", "docker pause <id>; then docker unpause <id> + GET /whoami.json until 200"],
        ["g. spawngate", f"a fresh pair, + " + " ".join(f"{k}={v}" for k, v in SETTINGS_G.items())
                         + f"; {o.soak_users} users, {o.soak_clients} client loops, {o.soak_secs:g} s"],
        ["h. spawngate", "a fresh pair, + SPAWNGATE_SSH_ENABLED=true, image " + SHELL_IMAGE
                         + "; ssh -p <port> -i <ed25519 key> <user>@127.0.0.1 -- true (OpenSSH client)"],
        ["h. baseline", "docker exec <the same container> true; cold: docker start <raw> && docker exec <raw> true"],
        ["j. spawngate", f"a fresh pair with [profiles.jupyter] ({JUPYTER_IMAGE}, strip_prefix = false, "
                         "app_auth = \"token\", ready_path /api); a new environment per cold run (admin API), "
                         "GET <traefik>/u-<slug>/api until 200; resume: POST users/<name>/environments/lab/stop first"],
        ["j. baseline", f"docker run -d --network <spawngate's network> -p 127.0.0.1:<port>:{JUPYTER_PORT} "
                        f"-e SPAWNGATE_BASE_PATH=/u-raw -e SPAWNGATE_SECRET=<random> {JUPYTER_IMAGE}, "
                        "GET /u-raw/api until 200; resume: docker stop, then docker start + the same polling"],
        ["f. spawngate", f"a fresh pair; {o.scale_users:,} users (admin API), {o.scale_running} logged in and "
                         "started; /proc/<pid>/status, GET /traefik/config x20, wrk as in a."],
        ["i. spawngate", f"a fresh pair grown to {o.many_users} users (POST /_spawngate/api/users, "
                         f"{o.many_workers} at a time, kept-alive connections); per step: 3 new users polled in "
                         "/traefik/config and Traefik's /api/http/routers, "
                         f"{o.many_singles} single adds, wrk /auth -d{o.many_wrk} x{o.rounds} alternating with a 10-user pair"],
        ["spawngate env", " ".join(f"{k}={v}" for k, v in b.sg_env.items() if k.startswith("SPAWNGATE_"))],
        ["traefik args", " ".join(b.traefik_args)],
        ["s. spawngate", "a fresh pair, + " + " ".join(f"{k}={v}" for k, v in SETTINGS_S.items())
                         + "; cold: GET through Traefik until 200 for a new user; resume: admin stop, then GET"],
        ["s. baseline", f"docker service create -d --restart-condition none --publish mode=host,target={APP_PORT},"
                        f"published=<port> {IMAGE} + GET until 200; docker service scale <svc>=0, then "
                        "docker service update -d --force --replicas 1 <svc> + GET until 200"],
        ["sections", o.only],
    ]
    print(key_values(rows))
    print(flush=True)


def section_a(b: Bench, o: argparse.Namespace, user: tuple[str, str]) -> WrkResult:
    slug, cookie = user
    auth_url = f"http://127.0.0.1:{b.sg_port}/auth/u-{slug}"
    noop_url = f"http://127.0.0.1:{b.noop_port}/"
    # Warm-up request: starts the container (the first /auth holds up to 10 s).
    poll_until_200(b.sg_port, f"/auth/u-{slug}", {"Cookie": cookie}, time.perf_counter(), 0.05)
    # The same request to both (Traefik sends the client's cookie to either):
    # only what the server does with it differs.
    targets = [
        ("spawngate /auth", auth_url, [f"Cookie: {cookie}"]),
        ("hyper no-op", noop_url, [f"Cookie: {cookie}"]),
    ]
    results = alternate(b, o, targets)
    print(f"a. forwardAuth throughput: spawngate /auth (ready container) vs hyper no-op  "
          f"[wrk -t{o.threads} -c{o.connections} -d{o.duration} --latency]")
    a, _ = side_by_side(o, results, "spawngate /auth", "hyper no-op", "ratio auth/noop")
    print(flush=True)
    return a


def alternate(b: Bench, o: argparse.Namespace,
              targets: list[tuple[str, str, list[str]]]) -> dict[str, list[WrkResult]]:
    """A warm-up of each target, then `o.rounds` wrk rounds alternating between them,
    so both see the same machine load."""
    for name, url, hdrs in targets:
        log(f"a. warm-up {name} ({o.warmup_duration})")
        wrk(url, o.threads, o.connections, o.warmup_duration, hdrs)
    results: dict[str, list[WrkResult]] = {name: [] for name, _, _ in targets}
    for r in range(o.rounds):
        for name, url, hdrs in targets:
            b.check_alive()
            log(f"a. round {r + 1}/{o.rounds}: {name} ({o.duration})")
            results[name].append(wrk(url, o.threads, o.connections, o.duration, hdrs))
    return results


def side_by_side(o: argparse.Namespace, results: dict[str, list[WrkResult]], a_name: str, b_name: str,
                 ratio_name: str) -> tuple[WrkResult, WrkResult]:
    """Prints every wrk round of two targets, then the best of each and their ratio."""
    rows = []
    for name in (a_name, b_name):
        for i, w in enumerate(results[name]):
            rows.append([f"{name}, round {i + 1}", f"{w.rps:,.0f}", f"{w.p50:.3f}", f"{w.p99:.3f}",
                         f"{w.requests:,}", str(w.non2xx), w.socket_errors or "0"])
    print(table(["run", "req/s", "p50 ms", "p99 ms", "requests", "non-2xx", "socket errors"], rows))
    best = {name: max(rs, key=lambda w: w.rps) for name, rs in results.items()}
    a, n = best[a_name], best[b_name]
    print()
    rows = [
        [a_name, f"{a.rps:,.0f}", f"{a.p50:.3f}", f"{a.p99:.3f}"],
        [b_name, f"{n.rps:,.0f}", f"{n.p50:.3f}", f"{n.p99:.3f}"],
        [ratio_name, ratio(a.rps, n.rps), ratio(a.p50, n.p50), ratio(a.p99, n.p99)],
    ]
    print(table([f"best of {o.rounds} (by req/s)", "req/s", "p50 ms", "p99 ms"], rows))
    if any(w.non2xx for rs in results.values() for w in rs):
        print("  WARNING: some responses were not 2xx/3xx; the numbers above are not comparable.")
    return a, n


def container_env(b: Bench, slug: str, name: str) -> str:
    """The value of env `name` in the user's running container ('' if unset)."""
    ids = docker_lines("ps", "-q", "--filter", f"label=spawngate.instance={b.instance}",
                       "--filter", f"label=spawngate.slug={slug}", "--filter", "status=running")
    if not ids:
        raise BenchError(f"no running container for u-{slug}")
    for line in docker_lines("inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", ids[0]):
        key, _, value = line.partition("=")
        if key == name:
            return value
    return ""


def section_a_traefik(b: Bench, o: argparse.Namespace, user: tuple[str, str]) -> tuple[WrkResult, WrkResult]:
    """What a user pays: the same Traefik, the same router, middlewares and service
    (spawngate's own, referenced from a file provider), on a second entry point, with
    only the forwardAuth address changed to the no-op server. The app's secret header,
    which spawngate's answer carries, is added there by a plain headers middleware."""
    slug, cookie = user
    status, _, body = http_request(b.sg_port, "/traefik/config")
    if status != 200:
        raise BenchError(f"GET /traefik/config: {status} {body[:200]!r}")
    http = json.loads(body)["http"]
    name = f"u-{slug}"
    router = http["routers"][name]
    auth_name = f"auth-{name}"
    forward_auth = dict(http["middlewares"][auth_name]["forwardAuth"])
    forward_auth["address"] = f"http://127.0.0.1:{b.noop_port}/"
    floor_auth, floor_secret = f"floor-auth-{name}", f"floor-secret-{name}"
    chain = []
    for m in router["middlewares"]:
        if m == auth_name:
            chain += [floor_auth, floor_secret]
        else:
            chain.append(f"{m}@http")
    secret = container_env(b, slug, "SPAWNGATE_SECRET")
    headers = {"customRequestHeaders": {"X-Spawngate-Secret": secret}} if secret else {"customRequestHeaders": {}}
    floor = {"http": {
        "routers": {f"floor-{name}": {
            "rule": router["rule"], "entryPoints": ["floor"], "middlewares": chain,
            "service": f"{router['service']}@http",
        }},
        "middlewares": {floor_auth: {"forwardAuth": forward_auth}, floor_secret: {"headers": headers}},
    }}
    # JSON is YAML: the file provider reads it by the .yml extension.
    path = os.path.join(b.floor_dir, "floor.yml")
    with open(path + ".tmp", "w") as f:
        json.dump(floor, f)
    os.replace(path + ".tmp", path)
    wait_until(
        f"Traefik to load router floor-{name}@file",
        lambda: b.check_alive()
        or http_request(b.api_port, f"/api/http/routers/floor-{name}@file", timeout=2)[0] == 200,
        timeout=30,
    )
    # The app's /healthz, not /whoami.json: the latter persists a visit counter
    # (write + rename per request, ~1.1k req/s here), which would make both sides
    # measure the app's disk rather than Traefik and forwardAuth.
    path_q = f"/u-{slug}/healthz"
    for port in (b.web_port, b.floor_port):
        got = http_request(port, path_q, headers={"Cookie": cookie})
        if got[0] != 200:
            raise BenchError(f"GET 127.0.0.1:{port}{path_q}: {got[0]} {got[2][:200]!r}")
    targets = [
        ("Traefik + spawngate forwardAuth", f"http://127.0.0.1:{b.web_port}{path_q}"),
        ("Traefik + no-op forwardAuth", f"http://127.0.0.1:{b.floor_port}{path_q}"),
    ]
    results = alternate(b, o, [(label, url, [f"Cookie: {cookie}"]) for label, url in targets])
    print(f"a. through Traefik: GET {path_q} with the session cookie, the same router, middlewares and "
          f"service; only the forwardAuth address differs  [wrk -t{o.threads} -c{o.connections} -d{o.duration}]")
    a, n = side_by_side(o, results, targets[0][0], targets[1][0], "ratio spawngate/no-op")
    print(f"  floor: router floor-{name}@file on entry point 'floor', middlewares {chain}, service "
          f"{router['service']}@http; forwardAuth as spawngate's with address {forward_auth['address']}")
    print(flush=True)
    return a, n


def timed_summary(title: str, sg: list[float], raw: list[float], sg_name: str, raw_name: str,
                  spawn: list[float | None]) -> None:
    def stats(name: str, xs: list[float]) -> list[str]:
        return [name, fmt_ms(median(xs)), fmt_ms(min(xs)), fmt_ms(max(xs))]

    rows = [stats(sg_name, sg)]
    if spawn and all(x is not None for x in spawn):
        rows.append(stats("  of which spawngate's spawn task", spawn))
        rows.append(stats("  rest: HTTP path through Traefik", [t - x for t, x in zip(sg, spawn)]))
    rows += [
        stats(raw_name, raw),
        ["ratio spawngate/raw", ratio(median(sg), median(raw)), ratio(min(sg), min(raw)), ratio(max(sg), max(raw))],
    ]
    print(table([title, "median ms", "min ms", "max ms"], rows))


def opt_ms(x: float | None) -> str:
    return "-" if x is None else fmt_ms(x)


SPAWN_NOTE = (
    "  spawn task = the `ms` of spawngate's \"container ready\" log line: from the first forwardAuth\n"
    "  request's kick to the container answering (Docker calls, store writes, readiness probes)."
)


def section_b(b: Bench, o: argparse.Namespace, users: list[tuple[str, str, str]]) -> None:
    sg_ms: list[float] = []
    raw_ms: list[float] = []
    spawn_ms: list[float | None] = []
    rows = []
    for i in range(o.warmup + o.runs):
        warm = i < o.warmup
        label = "warm-up" if warm else f"run {i - o.warmup + 1}"
        name, slug, cookie = users[i]
        log(f"b. {label}: spawngate cold start ({name})")
        if b.container_states(slug):
            raise BenchError(f"{name} already has a container before the cold request: {b.container_states(slug)}")
        time.sleep(o.settle)
        b.check_alive()
        offset = b.log_offset()
        sg = b.through_traefik(slug, cookie, time.perf_counter())
        spawn = b.ready_ms(name, offset)
        log(f"b. {label}: raw docker run")
        time.sleep(o.settle)
        cid, _, cli_ms, raw = b.raw_run(f"cold{i}")
        # Leave both stopped, so every run starts from the same Docker state.
        b.admin_stop(name)
        run(["docker", "stop", cid], timeout=120)
        if not warm:
            sg_ms.append(sg.ms)
            raw_ms.append(raw.ms)
            spawn_ms.append(spawn)
        rows.append([
            label + (" (untimed)" if warm else ""),
            fmt_ms(sg.ms), opt_ms(spawn), str(sg.attempts), compress(sg.statuses),
            fmt_ms(raw.ms), fmt_ms(cli_ms), str(raw.attempts), compress(raw.statuses),
        ])
    print("b. Cold first request: spawngate through Traefik (create + start + ready) vs raw docker run + poll")
    print(table(
        ["", "spawngate ms", "spawn task", "GETs", "non-200", "raw ms", "docker run returned", "GETs", "non-200"],
        rows,
    ))
    print()
    timed_summary(f"{o.runs} runs", sg_ms, raw_ms, "spawngate (Traefik, cold)", "raw docker run + poll", spawn_ms)
    print(f"  raw containers ran on: {', '.join(sorted(b.raw_networks))}")
    print(SPAWN_NOTE)
    print(flush=True)


def section_c(b: Bench, o: argparse.Namespace, user: tuple[str, str, str]) -> None:
    name, slug, cookie = user
    interval = o.poll_ms / 1000
    # One raw container, created and answering before the first stop.
    cid, port, _, _ = b.raw_run("resume")
    sg_ms: list[float] = []
    raw_ms: list[float] = []
    spawn_ms: list[float | None] = []
    rows = []
    for i in range(o.warmup + o.runs):
        warm = i < o.warmup
        label = "warm-up" if warm else f"run {i - o.warmup + 1}"
        # spawngate: make sure it runs and Traefik has talked to it, stop, settle, time.
        b.check_alive()
        b.through_traefik(slug, cookie, time.perf_counter())
        t0 = time.perf_counter()
        b.admin_stop(name)
        sg_stop_ms = (time.perf_counter() - t0) * 1000
        log(f"c. {label}: spawngate resume ({name})")
        if b.container_states(slug) != ["exited"]:
            raise BenchError(f"{name}'s container is not stopped after the admin stop: {b.container_states(slug)}")
        time.sleep(o.settle)
        offset = b.log_offset()
        sg = b.through_traefik(slug, cookie, time.perf_counter())
        spawn = b.ready_ms(name, offset)
        # raw: the same steps with the docker CLI.
        poll_until_200(port, "/whoami.json", {}, time.perf_counter(), interval)
        t0 = time.perf_counter()
        run(["docker", "stop", cid], timeout=120)
        raw_stop_ms = (time.perf_counter() - t0) * 1000
        log(f"c. {label}: raw docker start")
        time.sleep(o.settle)
        cli_ms, raw = b.raw_start(cid, port)
        if not warm:
            sg_ms.append(sg.ms)
            raw_ms.append(raw.ms)
            spawn_ms.append(spawn)
        rows.append([
            label + (" (untimed)" if warm else ""),
            fmt_ms(sg.ms), opt_ms(spawn), str(sg.attempts), compress(sg.statuses), fmt_ms(sg_stop_ms),
            fmt_ms(raw.ms), fmt_ms(cli_ms), str(raw.attempts), compress(raw.statuses), fmt_ms(raw_stop_ms),
        ])
    print("c. Resume of a stopped container: spawngate (admin stop, then first request through Traefik)")
    print("   vs docker stop, then docker start + poll")
    print(table(
        ["", "spawngate ms", "spawn task", "GETs", "non-200", "(stop ms)",
         "raw ms", "docker start returned", "GETs", "non-200", "(stop ms)"],
        rows,
    ))
    print()
    timed_summary(f"{o.runs} runs", sg_ms, raw_ms, "spawngate (Traefik, resume)", "raw docker start + poll", spawn_ms)
    print(SPAWN_NOTE)
    print("  (stop ms) = untimed: the admin stop call / docker stop before the run.")
    print(flush=True)


SETTINGS_E = {
    "SPAWNGATE_LIFECYCLE_PAUSE_AFTER_SECS": "2",
    "SPAWNGATE_LIFECYCLE_IDLE_TIMEOUT_SECS": "600",
}


def section_e(be: Bench, o: argparse.Namespace) -> None:
    """Unpause: the idle culler pauses the container (pause_after_secs = 2); the next
    request through Traefik unpauses it inside the forwardAuth hold."""
    name = "bench-pause"
    slug, cookie = be.prepare_users([name])[name]
    interval = o.poll_ms / 1000
    # Ready once (a cold start, untimed), so the loop below always begins from a
    # running container; the raw one likewise.
    be.through_traefik(slug, cookie, time.perf_counter())
    cid, port, _, _ = be.raw_run("pause")
    sg_ms: list[float] = []
    raw_ms: list[float] = []
    spawn_ms: list[float | None] = []
    rows = []
    for i in range(o.warmup + o.runs):
        warm = i < o.warmup
        label = "warm-up" if warm else f"run {i - o.warmup + 1}"
        be.check_alive()
        # spawngate: one request makes sure it is ready, then no requests until the
        # culler has paused it.
        be.through_traefik(slug, cookie, time.perf_counter())
        t_last = time.perf_counter()
        log(f"e. {label}: waiting for the culler to pause {name}'s container")
        wait_until(f"{name}'s container to be paused",
                   lambda: be.container_states(slug) == ["paused"], timeout=60, interval=0.1)
        paused_after = time.perf_counter() - t_last
        time.sleep(o.settle)
        log(f"e. {label}: spawngate unpause ({name})")
        offset = be.log_offset()
        sg = be.through_traefik(slug, cookie, time.perf_counter())
        spawn = be.ready_ms(name, offset)
        # raw: running and answering, docker pause, settle, docker unpause + poll.
        poll_until_200(port, "/whoami.json", {}, time.perf_counter(), interval)
        t0 = time.perf_counter()
        run(["docker", "pause", cid])
        raw_pause_ms = (time.perf_counter() - t0) * 1000
        time.sleep(o.settle)
        log(f"e. {label}: raw docker unpause")
        t0 = time.perf_counter()
        run(["docker", "unpause", cid])
        cli_ms = (time.perf_counter() - t0) * 1000
        raw = poll_until_200(port, "/whoami.json", {}, t0, interval)
        if not warm:
            sg_ms.append(sg.ms)
            raw_ms.append(raw.ms)
            spawn_ms.append(spawn)
        rows.append([
            label + (" (untimed)" if warm else ""),
            fmt_ms(sg.ms), opt_ms(spawn), str(sg.attempts), compress(sg.statuses), f"{paused_after:.1f}",
            fmt_ms(raw.ms), fmt_ms(cli_ms), str(raw.attempts), compress(raw.statuses), fmt_ms(raw_pause_ms),
        ])
    print("e. Unpause: spawngate (paused by the idle culler, first request through Traefik)")
    print("   vs docker pause, then docker unpause + poll")
    print("   [second spawngate + Traefik pair: "
          + " ".join(f"{k}={v}" for k, v in SETTINGS_E.items()) + "]")
    print(table(
        ["", "spawngate ms", "spawn task", "GETs", "non-200", "(paused after s)",
         "raw ms", "docker unpause returned", "GETs", "non-200", "(pause ms)"],
        rows,
    ))
    print()
    timed_summary(f"{o.runs} runs", sg_ms, raw_ms, "spawngate (Traefik, unpause)", "raw docker unpause + poll",
                  spawn_ms)
    print("  spawn task = the `ms` of spawngate's \"container ready\" log line: from the forwardAuth\n"
          "  request's kick to the unpaused container answering its readiness probe.")
    print("  raw ms includes starting the docker CLI process (see \"docker CLI call\" under Machine).")
    print("  (paused after s) = untimed: from the last request until Docker reported the container paused;")
    print("  (pause ms) = untimed: the docker pause call before the raw run.")
    print(flush=True)


# ---- f. scale


def proc_mem(pid: int) -> tuple[int, int, int]:
    """(VmRSS, VmHWM, RssAnon) of a process in KiB; zeros if it is gone. RssAnon is the
    private part: VmRSS also counts file-backed pages (the binary) shared with others."""
    found = {"VmRSS:": 0, "VmHWM:": 0, "RssAnon:": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(None, 1)[0] if line.strip() else ""
                if key in found:
                    found[key] = int(line.split()[1])
    except OSError:
        pass
    return found["VmRSS:"], found["VmHWM:"], found["RssAnon:"]


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f}"


def parse_size(text: str) -> float:
    """`1.93MiB` / `512kB` / `0B` (docker stats) -> KiB."""
    m = re.fullmatch(r"([\d.]+)\s*([KMGT]?i?B)", text.strip())
    if not m:
        raise BenchError(f"cannot parse size {text!r}")
    n, unit = float(m.group(1)), m.group(2)
    factor = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "TiB": 1024 ** 4,
              "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
    return n * factor / 1024


@dataclass
class ConfigDoc:
    size: int
    ms: list[float]
    routers: int


def config_doc(b: Bench, n: int = 20) -> ConfigDoc:
    """Size of /traefik/config and the latency of `n` GETs (new connection each)."""
    times = []
    size = routers = 0
    for _ in range(n):
        t0 = time.perf_counter()
        status, _, body = http_request(b.sg_port, "/traefik/config", timeout=30)
        times.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise BenchError(f"GET /traefik/config: {status} {body[:200]!r}")
        size = len(body)
    try:
        routers = len(json.loads(body).get("http", {}).get("routers", {}))
    except (ValueError, AttributeError):
        routers = -1
    return ConfigDoc(size, times, routers)


def parallel(fn, items: list, workers: int) -> list:
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def section_f(bf: Bench, o: argparse.Namespace, a_best: WrkResult | None,
              small: tuple[Bench, str, str] | None) -> None:
    """Memory of spawngate itself with 1,000 users and 50 running containers. `small`:
    the pair of sections a.-c. (a handful of users) and its warm user (slug, cookie),
    when still up, for /auth rounds alternating with the ones at scale."""
    n_users, n_running, workers = o.scale_users, o.scale_running, 8
    create_workers = o.scale_create_workers
    sg_pid = bf.procs["spawngate"].pid
    traefik_pid = bf.procs["traefik"].pid
    points: list[tuple[str, tuple[int, int, int], ConfigDoc | None]] = []
    time.sleep(1)
    points.append(("at start (no users)", proc_mem(sg_pid), config_doc(bf)))

    names = [f"u{i:04d}" for i in range(1, n_users + 1)]
    log(f"f. creating {n_users} users (POST /_spawngate/api/users, {create_workers} at a time)")
    t0 = time.perf_counter()
    created = parallel(lambda n: bf.api("POST", "users", {"name": n}, expect=201), names, create_workers)
    create_s = time.perf_counter() - t0
    slugs = {u["name"]: u["slug"] for u in created}
    time.sleep(1)
    points.append((f"after {n_users:,} users", proc_mem(sg_pid), config_doc(bf)))

    chosen = names[:n_running]
    log(f"f. logging in {n_running} users and starting their containers "
        f"(POST /_spawngate/api/users/<name>/container/start, {workers} threads)")
    cookies = {n: bf.login(n) for n in chosen}
    t0 = time.perf_counter()
    parallel(lambda n: bf.api("POST", f"users/{n}/container/start", timeout=180), chosen, workers)
    start_s = time.perf_counter() - t0
    bf.wait_router(f"u-{slugs[chosen[0]]}")
    # One of them end to end through Traefik, so the path is proven, not assumed.
    poll_until_200(bf.web_port, f"/u-{slugs[chosen[0]]}/whoami.json", {"Cookie": cookies[chosen[0]]},
                   time.perf_counter(), 0.05)
    ids = docker_lines("ps", "-q", "--filter", f"label=spawngate.instance={bf.instance}",
                       "--filter", "status=running")
    if len(ids) != n_running:
        raise BenchError(f"expected {n_running} running containers, found {len(ids)}")
    time.sleep(1)
    points.append((f"after {n_running} running", proc_mem(sg_pid), config_doc(bf)))

    # Idle cost at that scale: CPU used in a quiet window (Traefik polls every second).
    quiet = 5.0
    hz = os.sysconf("SC_CLK_TCK")
    before = proc_cpu_ticks(sg_pid), proc_cpu_ticks(traefik_pid)
    time.sleep(quiet)
    after = proc_cpu_ticks(sg_pid), proc_cpu_ticks(traefik_pid)
    idle_cpu = [(a - b) / hz / quiet * 100 for a, b in zip(after, before)]

    # The 50 containers: cgroup memory as docker stats reports it, and the VmRSS of
    # each one's process (the example app is a single static process).
    stats = docker_lines("stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", *ids)
    cgroup_kib = [parse_size(l.split(None, 1)[1].split("/")[0]) for l in stats]
    pids = [int(p) for p in docker_lines("inspect", "-f", "{{.State.Pid}}", *ids)]
    cont_mem = [proc_mem(p) for p in pids]
    cont_rss = [m[0] for m in cont_mem]
    cont_anon = [m[2] for m in cont_mem]
    traefik_rss, traefik_hwm, traefik_anon = proc_mem(traefik_pid)

    # /auth at that scale, the same wrk settings as section a.; rounds alternating with
    # the small pair of a.-c. when it is up, so both see the same machine load.
    user = chosen[0]
    targets = [("at scale", f"http://127.0.0.1:{bf.sg_port}/auth/u-{slugs[user]}", [f"Cookie: {cookies[user]}"], bf)]
    if small:
        sb, s_slug, s_cookie = small
        targets.append(("small (pair of a.-c.)", f"http://127.0.0.1:{sb.sg_port}/auth/u-{s_slug}",
                        [f"Cookie: {s_cookie}"], sb))
        poll_until_200(sb.sg_port, f"/auth/u-{s_slug}", {"Cookie": s_cookie}, time.perf_counter(), 0.05)
    for name, url, hdrs, _ in targets:
        log(f"f. warm-up spawngate /auth, {name} ({o.warmup_duration})")
        wrk(url, o.threads, o.connections, o.warmup_duration, hdrs)
    rounds: dict[str, list[WrkResult]] = {name: [] for name, _, _, _ in targets}
    for r in range(o.rounds):
        for name, url, hdrs, owner in targets:
            owner.check_alive()
            log(f"f. round {r + 1}/{o.rounds}: spawngate /auth, {name} ({o.duration})")
            rounds[name].append(wrk(url, o.threads, o.connections, o.duration, hdrs))
    points.append(("after wrk", proc_mem(sg_pid), None))
    best = {name: max(rs, key=lambda w: w.rps) for name, rs in rounds.items()}

    print(f"f. Scale: spawngate with {n_users:,} users and {n_running} running containers "
          f"(fresh pair, host mode, precreate and start_on_login off)")
    print(f"   {n_users:,} users created in {create_s:.1f} s ({n_users / create_s:,.0f}/s, "
          f"{create_workers} API call{'s' if create_workers > 1 else ''} at a time); "
          f"{n_running} containers started in {start_s:.1f} s ({workers} concurrent API calls)")
    rows = []
    for label, (rss, hwm, anon), doc in points:
        rows.append([f"spawngate {label}", mib(rss), mib(hwm), mib(anon),
                     f"{doc.size:,}" if doc else "-", str(doc.routers) if doc else "-",
                     f"{median(doc.ms):.2f}" if doc else "-",
                     f"{min(doc.ms):.2f} / {max(doc.ms):.2f}" if doc else "-"])
    print(table(["", "VmRSS MiB", "VmHWM MiB", "RssAnon MiB", "/traefik/config bytes", "routers",
                 "GET median ms", "min / max ms"], rows))
    print("  (config GETs: 20 per row, a new connection each, straight to spawngate)")
    print()
    sg_rss, _, sg_anon = points[2][1]
    sum_rss, sum_anon, sum_cg = sum(cont_rss), sum(cont_anon), sum(cgroup_kib)
    rows = [
        [f"spawngate (after {n_running} running)", mib(sg_rss), "1.00x", mib(sg_anon), "1.00x", f"{idle_cpu[0]:.1f}"],
        [f"traefik ({n_users:,} users' routers)", mib(traefik_rss), ratio(sg_rss, traefik_rss),
         mib(traefik_anon), ratio(sg_anon, traefik_anon), f"{idle_cpu[1]:.1f}"],
        [f"{n_running} user containers, sum", mib(sum_rss), ratio(sg_rss, sum_rss),
         mib(sum_anon), ratio(sg_anon, sum_anon), "-"],
        ["one user container, median", mib(median(cont_rss)), ratio(sg_rss, median(cont_rss)),
         mib(median(cont_anon)), ratio(sg_anon, median(cont_anon)), "-"],
        [f"{n_running} user containers, sum of docker stats", mib(sum_cg), ratio(sg_rss, sum_cg), "", "", "-"],
    ]
    print(table(["memory", "VmRSS MiB", "spawngate / this", "RssAnon MiB", "spawngate / this",
                 f"idle CPU % ({quiet:g} s)"], rows))
    print(f"  VmRSS counts the binary's shared file-backed pages in every process; RssAnon is private memory.")
    print(f"  docker stats MemUsage per container: min {mib(min(cgroup_kib))}, median {mib(median(cgroup_kib))}, "
          f"max {mib(max(cgroup_kib))} MiB (cgroup, page cache counted once); traefik VmHWM {mib(traefik_hwm)} MiB;")
    print(f"  idle CPU = utime+stime over {quiet:g} s without requests (Traefik polls /traefik/config every second).")
    print()
    rows = [[f"{name}, round {i + 1}", f"{w.rps:,.0f}", f"{w.p50:.3f}", f"{w.p99:.3f}", f"{w.requests:,}",
             str(w.non2xx), w.socket_errors or "0"] for name, rs in rounds.items() for i, w in enumerate(rs)]
    print(table([f"spawngate /auth [wrk -t{o.threads} -c{o.connections} -d{o.duration}]",
                 "req/s", "p50 ms", "p99 ms", "requests", "non-2xx", "socket errors"], rows))
    print()
    sc = best["at scale"]
    rows = [[f"at scale ({n_users:,} users, {n_running} running)", f"{sc.rps:,.0f}", f"{sc.p50:.3f}", f"{sc.p99:.3f}"]]
    if small:
        sm = best["small (pair of a.-c.)"]
        small_users = len(small[0].api("GET", "users").get("users", []))
        rows += [
            [f"small pair, same time ({small_users} user{'s' if small_users != 1 else ''})", f"{sm.rps:,.0f}",
             f"{sm.p50:.3f}", f"{sm.p99:.3f}"],
            ["ratio scale/small", ratio(sc.rps, sm.rps), ratio(sc.p50, sm.p50), ratio(sc.p99, sm.p99)],
        ]
    if a_best:
        rows += [
            ["section a (earlier in this run)", f"{a_best.rps:,.0f}", f"{a_best.p50:.3f}", f"{a_best.p99:.3f}"],
            ["ratio scale/a", ratio(sc.rps, a_best.rps), ratio(sc.p50, a_best.p50), ratio(sc.p99, a_best.p99)],
        ]
    print(table([f"best of {o.rounds} (by req/s)", "req/s", "p50 ms", "p99 ms"], rows))
    if not (a_best or small):
        print("  (sections a.-c. not run in this invocation: nothing to compare with)")
    if any(w.non2xx for rs in rounds.values() for w in rs):
        print("  WARNING: some responses were not 2xx/3xx; the numbers above are not comparable.")
    print(flush=True)


# ---- i. many users


class KeepAlive:
    """Admin API calls over one kept-alive connection (one per worker thread: the
    bulk creation measures spawngate, not Python's connection set-up)."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.conn.request(method, f"/_spawngate/api/{path}",
                                  body=None if body is None else json.dumps(body),
                                  headers={"Authorization": f"Bearer {self.token}",
                                           "Content-Type": "application/json"})
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def metric(b: Bench, name: str) -> float | None:
    """One un-labelled sample of spawngate's /metrics (None when absent)."""
    status, _, body = http_request(b.sg_port, "/metrics", timeout=30)
    if status != 200:
        return None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.split()[1])
            except ValueError:
                return None
    return None


def section_i(o: argparse.Namespace, run_id: str, small: tuple[Bench, str, str] | None,
              stacks: list) -> None:
    """One spawngate + Traefik pair grown to each step of --many-users; at each step:
    creation rate, time until a new user's router is in Traefik, memory, the provider
    document, /auth next to a pair with a handful of users, single-add latency."""
    steps = sorted({int(s) for s in o.many_users.split(",") if s.strip()})
    workers = o.many_workers
    # Host mode (so /auth reaches a real, ready container) with a port range wide
    # enough for the largest step.
    lo = 10000
    hi = min(65000, lo + max(steps) + 2000)
    bi = Bench(o, run_id=run_id, tag="i", noop=False, host_ports=(lo, hi))
    stacks.append(bi)
    log(f"i. starting a fresh spawngate + Traefik pair (instance {bi.instance}, host ports {lo}-{hi})")
    bi.start()
    if small is None:
        bs = Bench(o, run_id=run_id, tag="is", noop=False, host_ports=(hi + 1, min(65535, hi + 200)))
        stacks.append(bs)
        log(f"i. starting a small pair for /auth comparisons (instance {bs.instance})")
        bs.start()
        s_users = bs.prepare_users([f"small{i}" for i in range(10)])
        s_slug, s_cookie = s_users["small0"]
        small = (bs, s_slug, s_cookie)
    sb, s_slug, s_cookie = small
    poll_until_200(sb.sg_port, f"/auth/u-{s_slug}", {"Cookie": s_cookie}, time.perf_counter(), 0.05)
    # The warm user at scale: created first, logged in, container started.
    warm = bi.prepare_users(["warm"])["warm"]
    poll_until_200(bi.sg_port, f"/auth/u-{warm[0]}", {"Cookie": warm[1]}, time.perf_counter(), 0.05)

    clients = [KeepAlive(bi.sg_port, bi.admin_token) for _ in range(workers)]
    lock = threading.Lock()
    created = [1]
    started = time.perf_counter()
    results = []

    def create_range(first: int, last: int) -> list[float]:
        """Creates users first..last-1, `workers` calls at a time; per-call ms."""
        nxt = [first]
        times: list[float] = []
        errors: list[str] = []

        def worker(c: KeepAlive) -> None:
            while True:
                with lock:
                    i = nxt[0]
                    # Past the budget the step is measured where creation got to.
                    if i >= last or errors or time.perf_counter() - started > o.many_budget_secs:
                        return
                    nxt[0] += 1
                t0 = time.perf_counter()
                status, body = c.call("POST", "users", {"name": f"m{i:06d}"})
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    if status != 201:
                        errors.append(f"{status} {body[:200]!r}")
                    times.append(ms)
                    created[0] += 1

        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise BenchError(f"creating users: {errors[0]}")
        return times

    def routable_ms(name: str) -> tuple[float, float]:
        """(ms until /traefik/config has the new user's router, ms until Traefik's
        API shows it), from the moment the create call returns."""
        status, body = clients[0].call("POST", "users", {"name": name})
        if status != 201:
            raise BenchError(f"creating {name}: {status} {body[:200]!r}")
        created[0] += 1
        t0 = time.perf_counter()
        slug = json.loads(body)["slug"]
        in_doc = None
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            bi.check_alive()
            if in_doc is None:
                st, _, doc = http_request(bi.sg_port, "/traefik/config", timeout=30)
                if st == 200 and f'"u-{slug}"'.encode() in doc:
                    in_doc = (time.perf_counter() - t0) * 1000
            if http_request(bi.api_port, f"/api/http/routers/u-{slug}@http", timeout=30)[0] == 200:
                return in_doc if in_doc is not None else (time.perf_counter() - t0) * 1000, \
                    (time.perf_counter() - t0) * 1000
            time.sleep(0.02)
        raise BenchError(f"router u-{slug} not in Traefik within 120 s")

    done = 1
    for step in steps:
        if time.perf_counter() - started > o.many_budget_secs:
            log(f"i. time budget ({o.many_budget_secs:g} s) spent: stopping before {step:,} users")
            break
        log(f"i. creating users {done:,}..{step:,} ({workers} API calls at a time)")
        t0 = time.perf_counter()
        tail = max(1, min(500, step - done))
        before = created[0]
        create_range(done, step - tail)
        t1 = time.perf_counter()
        mid = created[0]
        tail_times = create_range(step - tail, step)
        t2 = time.perf_counter()
        total_rate = (created[0] - before) / (t2 - t0)
        tail_rate = (created[0] - mid) / (t2 - t1) if created[0] > mid else \
            (mid - before) / max(t1 - t0, 1e-9)
        done = step
        time.sleep(1.5)
        log(f"i. {step:,} users: time until routable (3 new users, Traefik polls every 1 s)")
        routes = [routable_ms(f"r{step}-{k}") for k in range(3)]
        log(f"i. {step:,} users: single adds (one at a time)")
        singles = []
        for k in range(o.many_singles):
            t = time.perf_counter()
            st, body = clients[0].call("POST", "users", {"name": f"s{step}-{k}"})
            if st != 201:
                raise BenchError(f"single add: {st} {body[:200]!r}")
            singles.append((time.perf_counter() - t) * 1000)
            created[0] += 1
        time.sleep(1.5)
        doc = config_doc(bi, 5)
        render_s = metric(bi, "spawngate_provider_render_duration_seconds_sum")
        renders = metric(bi, "spawngate_provider_renders_total")
        sg_mem = proc_mem(bi.procs["spawngate"].pid)
        tr_mem = proc_mem(bi.procs["traefik"].pid)
        log(f"i. {step:,} users: /auth, at scale and on the small pair, alternating")
        targets = [("scale", bi, warm), ("small", sb, (s_slug, s_cookie))]
        best: dict[str, WrkResult] = {}
        for name, b, (slug, cookie) in targets:
            wrk(f"http://127.0.0.1:{b.sg_port}/auth/u-{slug}", o.threads, o.connections, "1s", [f"Cookie: {cookie}"])
        for _ in range(o.rounds):
            for name, b, (slug, cookie) in targets:
                w = wrk(f"http://127.0.0.1:{b.sg_port}/auth/u-{slug}", o.threads, o.connections,
                        o.many_wrk, [f"Cookie: {cookie}"])
                if name not in best or w.rps > best[name].rps:
                    best[name] = w
        singles.sort()
        results.append(dict(
            users=created[0], step=step, total_rate=total_rate, tail_rate=tail_rate,
            tail_p99=sorted(tail_times)[int(0.99 * (len(tail_times) - 1))] if tail_times else None,
            in_doc=[r[0] for r in routes], routable=[r[1] for r in routes],
            doc=doc, render_ms=(render_s / renders * 1000) if render_s and renders else None,
            sg=sg_mem, traefik=tr_mem, auth=best["scale"], auth_small=best["small"],
            single_p50=median(singles), single_p99=singles[int(0.99 * (len(singles) - 1))],
            single_max=singles[-1],
        ))
        r = results[-1]
        print(f"i. at {r['users']:,} users: created {r['total_rate']:,.0f}/s (last 500: {r['tail_rate']:,.0f}/s); "
              f"routable after {' / '.join(f'{x:,.0f}' for x in r['routable'])} ms "
              f"(in /traefik/config after {' / '.join(f'{x:,.0f}' for x in r['in_doc'])} ms); "
              f"document {r['doc'].size:,} B; RSS spawngate {mib(r['sg'][0])} MiB, traefik {mib(r['traefik'][0])} MiB; "
              f"/auth {r['auth'].rps:,.0f} vs {r['auth_small'].rps:,.0f} req/s; "
              f"single add p50 {r['single_p50']:.1f} p99 {r['single_p99']:.1f} ms", flush=True)
        if time.perf_counter() - started > o.many_budget_secs:
            break

    print(f"i. Many users: one spawngate + Traefik pair grown to {', '.join(f'{s:,}' for s in steps)} users "
          f"(host mode, no containers but one, providers.http.pollInterval=1s)")
    if not results:
        print("   no step reached within the time budget")
        return
    cols = [f"{r['users']:,} users" for r in results]
    def row(label, f):
        return [label] + [f(r) for r in results]
    rows = [
        row(f"creation, users/s ({workers} API calls at a time)", lambda r: f"{r['total_rate']:,.0f}"),
        row("  of the last 500 before the step", lambda r: f"{r['tail_rate']:,.0f}"),
        row("  p99 of those calls, ms", lambda r: "-" if r['tail_p99'] is None else f"{r['tail_p99']:.1f}"),
        row("new user in /traefik/config after, ms (3 runs)", lambda r: " / ".join(f"{x:,.0f}" for x in r['in_doc'])),
        row("new user's router in Traefik's API after, ms", lambda r: " / ".join(f"{x:,.0f}" for x in r['routable'])),
        row("/traefik/config bytes", lambda r: f"{r['doc'].size:,}"),
        row("/traefik/config GET median ms", lambda r: f"{median(r['doc'].ms):.1f}"),
        row("provider render, mean ms per change", lambda r: "-" if r['render_ms'] is None else f"{r['render_ms']:.2f}"),
        row("spawngate VmRSS MiB", lambda r: mib(r['sg'][0])),
        row("spawngate RssAnon MiB", lambda r: mib(r['sg'][2])),
        row("traefik VmRSS MiB", lambda r: mib(r['traefik'][0])),
        row(f"/auth req/s at scale [wrk -c{o.connections} -d{o.many_wrk}]", lambda r: f"{r['auth'].rps:,.0f}"),
        row("/auth req/s, small pair (10 users or fewer), same time", lambda r: f"{r['auth_small'].rps:,.0f}"),
        row("  ratio scale / 10 users", lambda r: ratio(r['auth'].rps, r['auth_small'].rps)),
        row("/auth p99 ms at scale / 10 users", lambda r: f"{r['auth'].p99:.3f} / {r['auth_small'].p99:.3f}"),
        row(f"single user add ({o.many_singles}, one at a time) p50 ms", lambda r: f"{r['single_p50']:.1f}"),
        row("  p99 ms", lambda r: f"{r['single_p99']:.1f}"),
        row("  max ms", lambda r: f"{r['single_max']:.1f}"),
    ]
    print(table([""] + cols, rows))
    print("  'in /traefik/config' is spawngate's part (store, directory, render); the rest of 'in Traefik's API'")
    print("  is Traefik's: waiting for its next poll (1 s), fetching, decoding and rebuilding its routers.")
    print(flush=True)


# ---- d. warm pool (docker-compose)


def pool_supported() -> bool:
    return build_knows("SPAWNGATE_POOL_SIZE", "1")


class Compose:
    """One docker-compose deployment (docker-compose.yml + examples/compose.local.yml +
    a temporary override), network mode, with its own project, port, edge network and
    instance."""

    def __init__(self, opts: argparse.Namespace, run_id: str, tag: str, pool_size: int, tmp: str) -> None:
        self.opts = opts
        self.project = f"sgbench{run_id}{tag}"
        self.tag = tag
        self.pool_size = pool_size
        self.port = free_port()
        self.public = f"http://127.0.0.1:{self.port}"
        self.started = False
        self.cleaned = False
        self.sg_id = ""
        # Not everything the comparison needs is passed through by docker-compose.yml:
        # an override sets it on the spawngate service (overrides win over the base
        # file). The shared network (where pool containers wait) gets a name of this
        # project's, so nothing is shared with other deployments on this host.
        self.override_env = {
            "SPAWNGATE_LIFECYCLE_PRECREATE": "false",
            "SPAWNGATE_LIFECYCLE_START_ON_LOGIN": "false",
            "SPAWNGATE_POOL_SIZE": str(pool_size),
            "SPAWNGATE_DOCKER_NETWORK": f"{self.project}-shared",
            # As in the host-mode pairs: one JSON line per spawn, with its `ms`.
            "SPAWNGATE_LOG": "warn,spawngate::lifecycle=info",
            "SPAWNGATE_LOG_FORMAT": "json",
            **optional_settings(),
        }
        self.override = os.path.join(tmp, f"override-{tag}.yml")
        with open(self.override, "w") as f:
            f.write('version: "3.7"\nservices:\n  spawngate:\n    environment:\n')
            for k, v in self.override_env.items():
                f.write(f'      {k}: "{v}"\n')
        # An empty env file: a .env in the checkout must not change the deployment.
        self.env_file = os.path.join(tmp, "empty.env")
        open(self.env_file, "w").close()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPAWNGATE_")}
        self.env.update(
            SPAWNGATE_PROVIDER_TOKEN=secrets.token_hex(16),
            SPAWNGATE_HTTP_PORT=str(self.port),
            SPAWNGATE_PUBLIC_URL=self.public,
            SPAWNGATE_EDGE_NETWORK=f"{self.project}-edge",
            SPAWNGATE_INSTANCE=self.project,
            SPAWNGATE_POOL_SIZE=str(pool_size),
        )

    def compose(self, *args: str, timeout: float = 180, check: bool = True) -> str:
        return run(
            ["docker-compose", "--env-file", self.env_file,
             "-f", os.path.join(ROOT, "docker-compose.yml"),
             "-f", os.path.join(ROOT, "examples", "compose.local.yml"),
             "-f", self.override, "-p", self.project, *args],
            env=self.env, timeout=timeout, check=check, cwd=ROOT,
        )

    def up(self) -> None:
        self.started = True
        self.compose("up", "-d", "--no-build")
        self.sg_id = self.compose("ps", "-q", "spawngate").strip()
        if not self.sg_id:
            raise BenchError(f"compose project {self.project}: no spawngate container")
        wait_until(
            f"{self.project}: the login page through Traefik",
            lambda: http_request(self.port, "/_spawngate/login", timeout=2)[0] == 200,
            timeout=60, interval=0.2,
        )

    def cli(self, *args: str) -> str:
        # `docker exec` on the service's container: what `docker-compose exec -T` does,
        # without the docker-compose start-up time.
        return run(["docker", "exec", self.sg_id, "/spawngate", *args], timeout=60).strip()

    def add_user(self, name: str) -> str:
        out = self.cli("user", "add", name)
        m = re.search(r"/u-([A-Za-z0-9]+)/?\s*$", out)
        if not m:
            raise BenchError(f"cannot find the slug in `user add` output: {out!r}")
        return m.group(1)

    def login(self, name: str) -> str:
        link = self.cli("user", "login-link", name)
        token = urllib.parse.parse_qs(urllib.parse.urlparse(link).query).get("token", [""])[0]
        status, headers, body = http_request(
            self.port, "/_spawngate/login", method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            body=urllib.parse.urlencode({"token": token}),
        )
        m = re.search(rf"{COOKIE_NAME}=([^;,\s]+)", headers.get("set-cookie", ""))
        if status != 303 or not m:
            raise BenchError(f"{self.project}: login of {name} failed: {status} {headers} {body[:300]!r}")
        return f"{COOKIE_NAME}={m.group(1)}"

    def idle_pool(self) -> list[str]:
        """Running, unclaimed pool containers (a claimed one is renamed to the user's
        container name; its labels cannot change)."""
        names = docker_lines(
            "ps", "--filter", f"label=spawngate.instance={self.project}", "--filter", "label=spawngate.pool=true",
            "--filter", "status=running", "--format", "{{.Names}}",
        )
        return [n for n in names if n.startswith("spawngate-pool-")]

    def user_container(self, slug: str) -> tuple[str, str] | None:
        """(state, spawngate.pool label) of the user's container, None if none."""
        out = run(["docker", "inspect", "-f", '{{.State.Status}} {{index .Config.Labels "spawngate.pool"}}',
                   f"spawngate-u-{slug}"], check=False).split()
        return (out[0], out[1] if len(out) > 1 else "") if out else None

    def sg_alive(self) -> None:
        state = run(["docker", "inspect", "-f", "{{.State.Status}}", self.sg_id], check=False).strip()
        if state != "running":
            raise BenchError(f"{self.project}: spawngate is {state or 'gone'}; logs:\n{self.tail()}")

    def ready_ms(self, user: str) -> float | None:
        """The `ms` of the last "container ready" log line for `user` (spawngate's
        own spawn task, as in sections b., c. and e.)."""
        p = subprocess.run(["docker", "logs", self.sg_id], capture_output=True, text=True, timeout=30)
        found = None
        for raw in (p.stdout + p.stderr).splitlines():
            try:
                fields = json.loads(raw).get("fields", {})
            except (ValueError, AttributeError):
                continue
            if fields.get("message") == "container ready" and fields.get("user") == user and "ms" in fields:
                found = float(fields["ms"])
        return found

    def tail(self, n: int = 30) -> str:
        if not self.sg_id:
            return "(not started)"
        p = subprocess.run(["docker", "logs", "--tail", str(n), self.sg_id], capture_output=True, text=True,
                           timeout=30)
        return (p.stdout + p.stderr).strip()

    def cleanup(self) -> None:
        if self.cleaned or not self.started:
            return
        self.cleaned = True
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            label = f"label=spawngate.instance={self.project}"
            # Stop spawngate first: it would refill the pool while its containers go.
            self.compose("stop", "-t", "5", check=False)
            ids = docker_lines("ps", "-aq", "--filter", label)
            if ids:
                run(["docker", "rm", "-f", "-v", *ids], check=False, timeout=180)
            self.compose("down", "-v", "--remove-orphans", "-t", "5", check=False)
            nets = docker_lines("network", "ls", "-q", "--no-trunc", "--filter", label)
            if nets:
                run(["docker", "network", "rm", *nets], check=False)
            vols = docker_lines("volume", "ls", "-q", "--filter", label)
            if vols:
                run(["docker", "volume", "rm", "-f", *vols], check=False)
        finally:
            signal.signal(signal.SIGINT, old_int)

    def leftovers(self) -> list[str]:
        if not self.started:
            return []
        left = []
        for label in (f"label=spawngate.instance={self.project}", f"label=com.docker.compose.project={self.project}"):
            left += [f"container {c}" for c in docker_lines("ps", "-aq", "--filter", label)]
            left += [f"volume {v}" for v in docker_lines("volume", "ls", "-q", "--filter", label)]
            left += [f"network {n}" for n in docker_lines("network", "ls", "-q", "--filter", label)]
        left += [f"network {n}" for n in docker_lines("network", "ls", "--format", "{{.Name}}")
                 if n.startswith(self.project)]
        return sorted(set(left))


def section_d(o: argparse.Namespace, run_id: str, tmp: str, stacks: list) -> None:
    if not pool_supported():
        print("d. Warm pool: skipped: pool not supported by this build "
              "(`SPAWNGATE_POOL_SIZE=1 dist/spawngate check`: unknown environment variable SPAWNGATE_POOL_SIZE)")
        print(flush=True)
        return
    n = min(o.runs, 64)
    n_users = o.warmup + o.runs
    cold = Compose(o, run_id, "d0", 0, tmp)
    pool = Compose(o, run_id, "dp", n, tmp)
    sides = [cold, pool]
    stacks.extend(sides)
    for c in sides:
        log(f"d. docker-compose up: project {c.project}, pool size {c.pool_size}, {c.public}")
        c.up()
    users: dict[str, list[tuple[str, str, str]]] = {}
    for c in sides:
        log(f"d. {c.project}: creating and logging in {n_users} users")
        names = [f"bench-pool-{i}" for i in range(n_users)]
        slugs = [c.add_user(nm) for nm in names]
        users[c.project] = [(nm, sl, c.login(nm)) for nm, sl in zip(names, slugs)]
    # Traefik polls the provider every 2 s in docker-compose.yml; until it has the new
    # users' routers, their paths reach the catch-all router instead.
    time.sleep(5)
    interval = o.poll_ms / 1000
    results: dict[str, list[float]] = {c.project: [] for c in sides}
    spawns: dict[str, list[float | None]] = {c.project: [] for c in sides}
    rows = []
    for i in range(n_users):
        warm = i < o.warmup
        label = "warm-up" if warm else f"run {i - o.warmup + 1}"
        row = [label + (" (untimed)" if warm else "")]
        for c in sides:
            c.sg_alive()
            name, slug, cookie = users[c.project][i]
            if c.pool_size:
                log(f"d. {label}: waiting for {c.pool_size} idle pool containers in {c.project}")
                t_wait = time.perf_counter()
                wait_until(f"{c.project}: {c.pool_size} idle pool containers",
                           lambda: len(c.idle_pool()) >= c.pool_size, timeout=180, interval=0.2)
                waited = time.perf_counter() - t_wait
            if c.user_container(slug) is not None:
                raise BenchError(f"{c.project}: {name} has a container before the first request")
            # A pool member is running before it answers; spawngate takes it only then.
            time.sleep(o.settle + (0.5 if c.pool_size else 0))
            log(f"d. {label}: first request, {c.project} (pool size {c.pool_size})")
            p = poll_until_200(c.port, f"/u-{slug}/whoami.json", {"Cookie": cookie}, time.perf_counter(), interval)
            info = c.user_container(slug)
            from_pool = "yes" if info and info[1] == "true" else "no"
            spawn = c.ready_ms(name)
            if not warm:
                results[c.project].append(p.ms)
                spawns[c.project].append(spawn)
            row += [fmt_ms(p.ms), opt_ms(spawn), str(p.attempts), compress(p.statuses)]
            if c.pool_size:
                row += [from_pool, f"{waited:.1f}"]
        rows.append(row)
    print(f"d. Warm pool: first request of a new user through Traefik, docker-compose deployment "
          f"(network mode, a network per user), pool.size 0 vs pool.size {n}")
    print("   [override file, spawngate service: " + " ".join(
        f"{k}={v}" for k, v in cold.override_env.items() if k not in ("SPAWNGATE_POOL_SIZE", "SPAWNGATE_DOCKER_NETWORK"))
        + " SPAWNGATE_DOCKER_NETWORK=<project>-shared SPAWNGATE_POOL_SIZE=<n>]")
    print(table(["", "pool 0 ms", "spawn task", "GETs", "non-200", f"pool {n} ms", "spawn task", "GETs", "non-200",
                 "from pool", "(refill wait s)"], rows))
    print()
    a, b = results[cold.project], results[pool.project]

    def stats(name: str, xs: list[float]) -> list[str]:
        return [name, fmt_ms(median(xs)), fmt_ms(min(xs)), fmt_ms(max(xs))]

    rows = []
    for c, label in ((cold, "pool.size 0 (create + start + ready)"), (pool, f"pool.size {n} (claim a warm container)")):
        rows.append(stats(label, results[c.project]))
        if all(x is not None for x in spawns[c.project]):
            rows.append(stats("  of which spawngate's spawn task", spawns[c.project]))
            rows.append(stats("  rest: HTTP path through Traefik",
                              [t - x for t, x in zip(results[c.project], spawns[c.project])]))
    rows.append(["ratio pool/no pool", ratio(median(b), median(a)), ratio(min(b), min(a)), ratio(max(b), max(a))])
    print(table([f"{o.runs} runs", "median ms", "min ms", "max ms"], rows))
    print("  spawn task = the `ms` of spawngate's \"container ready\" log line (docker logs of the project's")
    print("  spawngate): from the first forwardAuth request's kick to the container answering as the user's.")
    print("  from pool = the user's container carries the label spawngate.pool=true (a claimed member);")
    print(f"  (refill wait s) = untimed: waiting until {n} unclaimed pool containers ran again.")
    print(flush=True)
    for c in sides:
        log(f"d. tearing down {c.project}")
        c.cleanup()


# ---- h. ssh


def section_h(bh: Bench, o: argparse.Namespace, ssh_port: int) -> None:
    keys = tempfile.mkdtemp(prefix=f"sgbench-{bh.run_id}-ssh-")
    try:
        key = os.path.join(keys, "id")
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", key])
        name = "bench-ssh"
        slug = bh.add_user(name)
        bh.cli("user", "ssh-key", "add", name, key + ".pub")
        base = [
            "ssh", "-p", str(ssh_port), "-i", key,
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
        ]
        target = f"{name}@127.0.0.1"
        mux = ["-o", "ControlMaster=auto", "-o", f"ControlPath={keys}/mux", "-o", "ControlPersist=120"]

        def timed(args: list[str]) -> float:
            t0 = time.perf_counter()
            run(args, timeout=120)
            return (time.perf_counter() - t0) * 1000

        log("h. first connection (starts the environment)")
        timed([*base, target, "--", "true"])
        container = f"spawngate-u-{slug}"
        timed([*base, *mux, target, "--", "true"])  # opens the shared connection
        fresh, shared, raw = [], [], []
        for i in range(o.warmup + o.runs):
            row = (timed([*base, target, "--", "true"]),
                   timed([*base, *mux, target, "--", "true"]),
                   timed(["docker", "exec", container, "true"]))
            if i >= o.warmup:
                fresh.append(row[0])
                shared.append(row[1])
                raw.append(row[2])
        run(["ssh", "-o", f"ControlPath={keys}/mux", "-O", "exit", target], check=False, timeout=30)
        # Cold: spawngate after an admin stop, raw: docker stop, then start + exec.
        cid = run(["docker", "run", "-d", "--name", f"sgbench-raw-{bh.run_id}-ssh", "--label", bh.raw_label,
                   SHELL_IMAGE], timeout=120).strip()
        cold_sg, cold_raw = [], []
        for i in range(o.warmup + o.runs):
            bh.admin_stop(name)
            time.sleep(o.settle)
            sg = timed([*base, target, "--", "true"])
            run(["docker", "stop", cid], timeout=120)
            time.sleep(o.settle)
            t0 = time.perf_counter()
            run(["docker", "start", cid], timeout=120)
            run(["docker", "exec", cid, "true"], timeout=120)
            rw = (time.perf_counter() - t0) * 1000
            if i >= o.warmup:
                cold_sg.append(sg)
                cold_raw.append(rw)
        print("h. SSH into a running environment: ssh … -- true against docker exec … true (same container)")
        print(table(
            ["", "median ms", "min ms", "vs docker exec"],
            [
                ["ssh, new connection each time", fmt_ms(median(fresh)), fmt_ms(min(fresh)),
                 ratio(median(fresh), median(raw))],
                ["ssh, one multiplexed connection", fmt_ms(median(shared)), fmt_ms(min(shared)),
                 ratio(median(shared), median(raw))],
                ["docker exec", fmt_ms(median(raw)), fmt_ms(min(raw)), "1.00x"],
            ],
        ))
        print(f"  {o.runs} runs per row, sides alternating; a new connection pays TCP, key exchange and "
              "public-key authentication (the multiplexed row pays only the channel and the exec).")
        print("h. Cold: ssh … -- true after an admin stop, against docker start + docker exec (raw container)")
        print(table(
            ["", "median ms", "min ms", "vs raw"],
            [
                ["ssh (start + ready + exec)", fmt_ms(median(cold_sg)), fmt_ms(min(cold_sg)),
                 ratio(median(cold_sg), median(cold_raw))],
                ["docker start && docker exec", fmt_ms(median(cold_raw)), fmt_ms(min(cold_raw)), "1.00x"],
            ],
        ))
        print("  spawngate's start also waits until the app answers its readiness probe, as for HTTP.")
        print(flush=True)
    finally:
        shutil.rmtree(keys, ignore_errors=True)


# ---- j. jupyter

JUPYTER_CONFIG = f"""
[limits]
environments_per_user = 2
[profiles.jupyter]
display_name = "Jupyter"
image = "{JUPYTER_IMAGE}"
port = {JUPYTER_PORT}
strip_prefix = false
ready_path = "/api"
ready_status = 200
start_timeout_secs = 60
memory = "1g"
volume_path = "/home/jovyan/work"
app_auth = "token"
"""


def section_j(bj: Bench, o: argparse.Namespace) -> None:
    """Jupyter as a profile: each timed user gets a fresh environment `lab` (cold), and
    the first one is then stopped and resumed. The raw side runs the same image with
    the environment spawngate gives it (base path and token), and polls the same path."""
    interval = o.poll_ms / 1000
    n = o.warmup + o.runs
    names = [f"bench-jupyter-{i}" for i in range(n)]
    users = bj.prepare_users(names)
    labs = {}
    for name in names:
        env = bj.api("POST", f"users/{name}/environments", {"name": "lab", "profile": "jupyter"},
                     expect=201)
        labs[name] = env["slug"]
        bj.wait_router(f"u-{env['slug']}")

    def sg_poll(name: str) -> Poll:
        return poll_until_200(bj.web_port, f"/u-{labs[name]}/api", {"Cookie": users[name][1]},
                              time.perf_counter(), interval, timeout=120)

    def raw_run(i: int) -> tuple[str, int, Poll]:
        port = free_port()
        network = ["--network", bj.network] if bj.network_ids() else []
        bj.raw_networks.add(bj.network if network else "bridge")
        args = [
            "docker", "run", "-d", "--name", f"sgbench-raw-{bj.run_id}-jupyter{i}", "--label", bj.raw_label,
            *network, "-p", f"127.0.0.1:{port}:{JUPYTER_PORT}",
            "-e", "SPAWNGATE_BASE_PATH=/u-raw", "-e", f"SPAWNGATE_SECRET={secrets.token_hex(16)}",
            JUPYTER_IMAGE,
        ]
        t0 = time.perf_counter()
        cid = run(args, timeout=120).strip()
        return cid, port, poll_until_200(port, "/u-raw/api", {}, t0, interval, timeout=120)

    cold_sg, cold_raw, cold_spawn, rows = [], [], [], []
    raw_ids: list[tuple[str, int]] = []
    for i, name in enumerate(names):
        warm = i < o.warmup
        label = "warm-up" if warm else f"run {i - o.warmup + 1}"
        log(f"j. {label}: spawngate cold start of {name}'s Jupyter")
        time.sleep(o.settle)
        bj.check_alive()
        offset = bj.log_offset()
        sg = sg_poll(name)
        spawn = bj.ready_ms(name, offset)
        log(f"j. {label}: raw docker run of the Jupyter image")
        time.sleep(o.settle)
        cid, port, raw = raw_run(i)
        raw_ids.append((cid, port))
        if not warm:
            cold_sg.append(sg.ms)
            cold_raw.append(raw.ms)
            cold_spawn.append(spawn)
        rows.append([label + (" (untimed)" if warm else ""), fmt_ms(sg.ms), opt_ms(spawn), str(sg.attempts),
                     compress(sg.statuses), fmt_ms(raw.ms), str(raw.attempts), compress(raw.statuses)])
    print("j. Jupyter, cold first request: spawngate through Traefik (new environment: create + start + ready)")
    print("   vs raw docker run of the same image + poll (both: GET <base path>/api until 200)")
    print(table(["", "spawngate ms", "spawn task", "GETs", "non-200", "raw ms", "GETs", "non-200"], rows))
    print()
    timed_summary(f"{o.runs} runs", cold_sg, cold_raw, "spawngate (Traefik, cold)", "raw docker run + poll",
                  cold_spawn)

    # Resume: one environment and one raw container, stopped and started in turn.
    name = names[0]
    cid, port = raw_ids[0]
    for other, _ in raw_ids[1:]:
        run(["docker", "rm", "-f", other], timeout=120)
    res_sg, res_raw, res_spawn, rows = [], [], [], []
    for i in range(o.warmup + o.runs):
        warm = i < o.warmup
        label = "warm-up" if warm else f"run {i - o.warmup + 1}"
        sg_poll(name)
        bj.api("POST", f"users/{name}/environments/lab/stop")
        if bj.container_states(labs[name]) != ["exited"]:
            raise BenchError(f"{name}'s lab is not stopped after the admin stop: {bj.container_states(labs[name])}")
        log(f"j. {label}: spawngate resume of {name}'s Jupyter")
        time.sleep(o.settle)
        offset = bj.log_offset()
        sg = sg_poll(name)
        spawn = bj.ready_ms(name, offset)
        poll_until_200(port, "/u-raw/api", {}, time.perf_counter(), interval, timeout=120)
        run(["docker", "stop", cid], timeout=120)
        log(f"j. {label}: raw docker start of the Jupyter image")
        time.sleep(o.settle)
        t0 = time.perf_counter()
        run(["docker", "start", cid], timeout=120)
        raw = poll_until_200(port, "/u-raw/api", {}, t0, interval, timeout=120)
        if not warm:
            res_sg.append(sg.ms)
            res_raw.append(raw.ms)
            res_spawn.append(spawn)
        rows.append([label + (" (untimed)" if warm else ""), fmt_ms(sg.ms), opt_ms(spawn), str(sg.attempts),
                     compress(sg.statuses), fmt_ms(raw.ms), str(raw.attempts), compress(raw.statuses)])
    print("j. Jupyter, resume after an admin stop: spawngate through Traefik vs docker stop, docker start + poll")
    print(table(["", "spawngate ms", "spawn task", "GETs", "non-200", "raw ms", "GETs", "non-200"], rows))
    print()
    timed_summary(f"{o.runs} runs", res_sg, res_raw, "spawngate (Traefik, resume)", "raw docker start + poll",
                  res_spawn)
    print(f"  raw containers ran on: {', '.join(sorted(bj.raw_networks))}")
    print(SPAWN_NOTE)
    print(flush=True)


# ---- s. swarm

# SGBENCH_SWARM_SHARED=1: every environment on one shared overlay (no network per
# user), and the raw services on it too; otherwise a network per user and raw
# services on none (host-mode publishing needs no overlay).
SWARM_SHARED = os.environ.get("SGBENCH_SWARM_SHARED") == "1"
SETTINGS_S = {
    "SPAWNGATE_DOCKER_MODE": "swarm",
    "SPAWNGATE_DOCKER_SWARM_PUBLISH": "host",
    "SPAWNGATE_DOCKER_NETWORK_PER_USER": "false" if SWARM_SHARED else "true",
}


def swarm_state() -> str:
    return run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], check=False).strip()


def raw_service_tasks_running(name: str) -> bool:
    return any(s.startswith("Running") for s in docker_lines(
        "service", "ps", "--format", "{{.CurrentState}}", "--filter", "desired-state=running", name))


def raw_service_stopped(name: str) -> bool:
    states = docker_lines("service", "ps", "--format", "{{.CurrentState}}", name)
    return not any(s.split()[0] in ("Running", "Starting", "Preparing", "Assigned", "Pending") for s in states)


def section_s(bs: "Bench", o: argparse.Namespace) -> None:
    interval = o.poll_ms / 1000
    names = [f"swarm-cold-{i}" for i in range(o.warmup + o.runs)]
    users = bs.prepare_users(names)
    cold_rows, cold_sg, cold_raw, cold_spawn = [], [], [], []
    raw_services: list[tuple[str, int]] = []
    for i, name in enumerate(names):
        warm = i < o.warmup
        label = "warm-up" if warm else f"run {i - o.warmup + 1}"
        slug, cookie = users[name]
        log(f"s. {label}: spawngate on Swarm, cold ({name})")
        time.sleep(o.settle)
        bs.check_alive()
        offset = bs.log_offset()
        sg = bs.through_traefik(slug, cookie, time.perf_counter())
        spawn = bs.ready_ms(name, offset)
        log(f"s. {label}: raw docker service create")
        time.sleep(o.settle)
        port = free_port()
        svc = f"sgbench-raw-{bs.run_id}-s{i}"
        network = ["--network", bs.network] if SWARM_SHARED and bs.network_ids() else []
        bs.raw_networks.add(bs.network if network else "(none)")
        t0 = time.perf_counter()
        run(["docker", "service", "create", "-d", "-q", "--name", svc, *network,
             "--label", bs.raw_label, "--container-label", bs.raw_label,
             "--restart-condition", "none",
             "--publish", f"mode=host,target={APP_PORT},published={port}", IMAGE], timeout=120)
        cli_ms = (time.perf_counter() - t0) * 1000
        raw = poll_until_200(port, "/whoami.json", {}, t0, interval)
        raw_services.append((svc, port))
        if not warm:
            cold_sg.append(sg.ms)
            cold_raw.append(raw.ms)
            cold_spawn.append(spawn)
        cold_rows.append([label + (" (untimed)" if warm else ""), fmt_ms(sg.ms), opt_ms(spawn),
                          str(sg.attempts), fmt_ms(raw.ms), fmt_ms(cli_ms), str(raw.attempts)])
    print("s. Swarm backend, cold first request: spawngate through Traefik (a new service, host-mode port)")
    print("   vs raw docker service create -d --publish mode=host + poll")
    print(table(["", "spawngate ms", "spawn task", "GETs", "raw ms", "service create returned", "GETs"], cold_rows))
    print()
    timed_summary(f"{o.runs} runs", cold_sg, cold_raw, "spawngate on Swarm (Traefik, cold)",
                  "raw service create + poll", cold_spawn)
    print(f"  spawngate's services: {'one shared overlay' if SWARM_SHARED else 'an overlay per user'}; "
          f"raw services on: {', '.join(sorted(bs.raw_networks))}")
    print(SPAWN_NOTE)
    print(flush=True)

    # Resume: the first user's service and the first raw service, each stopped and
    # resumed in turn.
    name = names[0]
    slug, cookie = users[name]
    svc, port = raw_services[0]
    rows, sg_ms, raw_ms, spawn_ms = [], [], [], []
    for i in range(o.warmup + o.runs):
        warm = i < o.warmup
        label = "warm-up" if warm else f"run {i - o.warmup + 1}"
        bs.check_alive()
        bs.through_traefik(slug, cookie, time.perf_counter())
        bs.admin_stop(name)
        if bs.container_states(slug) and "running" in bs.container_states(slug):
            raise BenchError(f"{name}'s task still runs after the admin stop")
        log(f"s. {label}: spawngate on Swarm, resume ({name})")
        time.sleep(o.settle)
        offset = bs.log_offset()
        sg = bs.through_traefik(slug, cookie, time.perf_counter())
        spawn = bs.ready_ms(name, offset)
        # raw: scale to 0, wait until Swarm reports the task down, settle, scale to 1.
        poll_until_200(port, "/whoami.json", {}, time.perf_counter(), interval)
        run(["docker", "service", "scale", "-d", f"{svc}=0"], timeout=120)
        wait_until(f"raw service {svc} to stop", lambda: raw_service_stopped(svc), timeout=60)
        log(f"s. {label}: raw docker service update --replicas 1 --force")
        time.sleep(o.settle)
        t0 = time.perf_counter()
        # --force: with restart condition none, a plain `scale 0 -> 1` soon after a
        # stop leaves the service at 0/1 with no task (Docker 20.10); spawngate
        # sends the same forced update.
        run(["docker", "service", "update", "-d", "-q", "--force", "--replicas", "1", svc], timeout=120)
        cli_ms = (time.perf_counter() - t0) * 1000
        raw = poll_until_200(port, "/whoami.json", {}, t0, interval)
        if not warm:
            sg_ms.append(sg.ms)
            raw_ms.append(raw.ms)
            spawn_ms.append(spawn)
        rows.append([label + (" (untimed)" if warm else ""), fmt_ms(sg.ms), opt_ms(spawn), str(sg.attempts),
                     fmt_ms(raw.ms), fmt_ms(cli_ms), str(raw.attempts)])
    print("s. Swarm backend, resume: spawngate (admin stop = scale to 0, then first request through Traefik)")
    print("   vs raw docker service scale 0, then service update --replicas 1 --force + poll")
    print(table(["", "spawngate ms", "spawn task", "GETs", "raw ms", "update returned", "GETs"], rows))
    print()
    timed_summary(f"{o.runs} runs", sg_ms, raw_ms, "spawngate on Swarm (Traefik, resume)",
                  "raw scale 0 -> 1 + poll", spawn_ms)
    print(SPAWN_NOTE)
    print(flush=True)


# ---- r. replicas on PostgreSQL (issue 16)

# The failover figure needs a short idle tier (the culler looks every second).
R_IDLE_SECS = 4


def pg_bin() -> str:
    """PG_BIN, or the newest /usr/lib/postgresql/<version>/bin with a postgres."""
    if os.environ.get("PG_BIN"):
        return os.environ["PG_BIN"]
    found = []
    for v in os.listdir("/usr/lib/postgresql") if os.path.isdir("/usr/lib/postgresql") else []:
        if v.isdigit() and os.access(f"/usr/lib/postgresql/{v}/bin/postgres", os.X_OK):
            found.append((int(v), f"/usr/lib/postgresql/{v}/bin"))
    if not found:
        raise BenchError("r. needs PostgreSQL (apt-get install postgresql, or set PG_BIN)")
    return max(found)[1]


class PgScratch:
    """A throw-away PostgreSQL as the tests make it (tests/it/postgres_setup.rs):
    initdb into a temp dir, trust auth, 127.0.0.1 on a free port, run as `nobody`
    when the bench runs as root (the server refuses root); gone after cleanup()."""

    def __init__(self, run_id: str) -> None:
        self.project = f"postgres {run_id}"
        self.started = False
        self.cleaned = False
        self.bin = pg_bin()
        self.dir = tempfile.mkdtemp(prefix=f"sgbench-{run_id}-pg-")
        self.port = free_port()
        self.as_user = None
        if os.geteuid() == 0:
            import pwd
            nobody = pwd.getpwnam("nobody")
            self.as_user = (nobody.pw_uid, nobody.pw_gid)
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)

    def _run(self, args: list[str], timeout: float = 120) -> str:
        kw = {}
        if self.as_user:
            kw = {"user": self.as_user[0], "group": self.as_user[1], "extra_groups": []}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=self.dir,
                           env=env, stdin=subprocess.DEVNULL, **kw)
        if p.returncode != 0:
            raise BenchError(f"{' '.join(args)} failed: {p.stdout}{p.stderr}")
        return p.stdout

    def start(self) -> None:
        self.started = True
        data = os.path.join(self.dir, "data")
        self._run([f"{self.bin}/initdb", "--pgdata", data, "--username=postgres", "--auth=trust",
                   "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"])
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            # Durable as a deployment would be (fsync on): the store's commits are measured.
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.dir}'\nmax_connections = 200\n")
        self._run([f"{self.bin}/pg_ctl", "--pgdata", data, "start", "-w", "-t", "60",
                   "-l", os.path.join(self.dir, "server.log")])

    def database(self, name: str) -> str:
        self._run([f"{self.bin}/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                   "-d", "postgres", "-c", f"CREATE DATABASE {name}"])
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def tail(self, n: int = 30) -> str:
        try:
            with open(os.path.join(self.dir, "server.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        data = os.path.join(self.dir, "data")
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            try:
                self._run([f"{self.bin}/pg_ctl", "--pgdata", data, "stop", "-m", "immediate", "-w", "-t", "30"])
            except (BenchError, subprocess.SubprocessError) as e:
                log(f"r. stopping PostgreSQL: {e}")
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        return [f"directory {self.dir}"] if os.path.exists(self.dir) else []


class Replicated(Bench):
    """`n` spawngate replicas behind one Traefik, the deployment of docs/ha.md: a
    second Traefik entry point (`internal`) whose router, from the file provider,
    sends everything to a service with every replica as a server (health check on
    /readyz every second, retry on a refused connection); every replica's
    server.internal_url and Traefik's HTTP provider point there. With `store_url`
    None, one spawngate on its embedded store (sled) in the same topology, so /auth
    of sled and PostgreSQL differ only in the store. With `direct`, a third entry
    point for `add_direct_route` (forwardAuth to replica 0 itself)."""

    def __init__(self, opts: argparse.Namespace, run_id: str, tag: str, store_url: str | None, n: int,
                 host_ports: tuple[int, int], extra_env: dict | None = None, direct: bool = False) -> None:
        internal_port = free_port()
        internal = f"http://127.0.0.1:{internal_port}"
        env = {"SPAWNGATE_SERVER_INTERNAL_URL": internal}
        if store_url is not None:
            env["SPAWNGATE_STORE_URL"] = store_url
        super().__init__(opts, run_id=run_id, tag=tag, noop=False, host_ports=host_ports,
                         extra_env={**env, **(extra_env or {})})
        self.internal = internal
        self.internal_port = internal_port
        self.stop_order = ["traefik"] + [self.name_of(i) for i in range(n)]
        self.ports = [self.sg_port]
        self.envs = [self.sg_env]
        for i in range(1, n):
            port = free_port()
            data = os.path.join(self.data_dir, f"replica-{i}")
            os.makedirs(data)
            self.ports.append(port)
            self.envs.append({**self.sg_env, "SPAWNGATE_SERVER_LISTEN": f"127.0.0.1:{port}",
                              "SPAWNGATE_SERVER_DATA_DIR": data})
        self.traefik_args = [a for a in self.traefik_args if not a.startswith("--providers.http.endpoint=")]
        self.dyn_dir = os.path.join(self.data_dir, "traefik-internal")
        os.makedirs(self.dyn_dir)
        servers = "".join(f"          - url: \"http://127.0.0.1:{p}\"\n" for p in self.ports)
        with open(os.path.join(self.dyn_dir, "internal.yml"), "w") as f:
            f.write(
                "http:\n  routers:\n    spawngate-replicas:\n      entryPoints: [\"internal\"]\n"
                "      rule: \"PathPrefix(`/`)\"\n      service: spawngate-replicas\n"
                "      middlewares: [\"spawngate-replicas-retry\"]\n"
                "  middlewares:\n    spawngate-replicas-retry:\n      retry:\n        attempts: 3\n"
                "        initialInterval: \"50ms\"\n"
                "  services:\n    spawngate-replicas:\n      loadBalancer:\n        passHostHeader: true\n"
                f"        servers:\n{servers}"
                "        healthCheck:\n          path: /readyz\n          interval: \"1s\"\n          timeout: \"1s\"\n")
        self.traefik_args += [
            f"--entrypoints.internal.address=127.0.0.1:{internal_port}",
            f"--providers.http.endpoint={internal}/traefik/config",
            f"--providers.file.directory={self.dyn_dir}",
            "--providers.file.watch=true",
        ]
        self.direct_port = free_port() if direct else None
        if direct:
            self.traefik_args.append(f"--entrypoints.direct.address=127.0.0.1:{self.direct_port}")

    def add_direct_route(self, slug: str) -> str:
        """A copy of the user's router on the `direct` entry point, its forwardAuth
        sent to replica 0's own address instead of the internal entry point (every
        other middleware and the service are spawngate's own, referenced from the
        file provider). The URL of the app's /healthz there."""
        status, _, body = http_request(self.sg_port, "/traefik/config")
        if status != 200:
            raise BenchError(f"GET /traefik/config: {status} {body[:200]!r}")
        http = json.loads(body)["http"]
        name = f"u-{slug}"
        router = http["routers"][name]
        auth_name = f"auth-{name}"
        forward_auth = dict(http["middlewares"][auth_name]["forwardAuth"])
        if not forward_auth["address"].startswith(self.internal + "/"):
            raise BenchError(f"forwardAuth address {forward_auth['address']!r} is not under {self.internal}")
        forward_auth["address"] = f"http://127.0.0.1:{self.sg_port}" + forward_auth["address"][len(self.internal):]
        direct_auth = f"direct-auth-{name}"
        chain = [direct_auth if m == auth_name else f"{m}@http" for m in router["middlewares"]]
        doc = {"http": {
            "routers": {f"direct-{name}": {
                "rule": router["rule"], "entryPoints": ["direct"], "middlewares": chain,
                "service": f"{router['service']}@http",
            }},
            "middlewares": {direct_auth: {"forwardAuth": forward_auth}},
        }}
        # JSON is YAML: the file provider reads it by the .yml extension.
        path = os.path.join(self.dyn_dir, "direct.yml")
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(path + ".tmp", path)
        wait_until(
            f"Traefik to load router direct-{name}@file",
            lambda: self.check_alive()
            or http_request(self.api_port, f"/api/http/routers/direct-{name}@file", timeout=2)[0] == 200,
            timeout=30,
        )
        return f"http://127.0.0.1:{self.direct_port}/u-{slug}/healthz"

    def name_of(self, i: int) -> str:
        return "spawngate" if i == 0 else f"spawngate-{i}"

    def spawn_replica(self, i: int) -> None:
        self.spawn(self.name_of(i), [SPAWNGATE, "serve"], env=self.envs[i])
        wait_until(
            f"replica {i} /healthz",
            lambda: self.check_alive() or http_request(self.ports[i], "/healthz", timeout=2)[0] == 200,
            timeout=30,
        )

    def start(self) -> None:
        self.started = True
        for i in range(len(self.ports)):
            self.spawn_replica(i)
        self.spawn("traefik", [TRAEFIK, *self.traefik_args])
        self.wait_router("spawngate")
        self.admin_token = self.cli("token")
        if not self.admin_token:
            raise BenchError("`spawngate token` printed nothing")

    def role(self, i: int) -> str | None:
        status, _, body = http_request(self.ports[i], "/readyz", timeout=3)
        if status != 200:
            return None
        try:
            return json.loads(body).get("role")
        except ValueError:
            return None

    def leader(self, timeout: float = 30) -> int:
        found: list[int] = []

        def one() -> bool:
            self.check_alive()
            found[:] = [i for i in range(len(self.ports)) if self.role(i) == "leader"]
            return len(found) == 1
        wait_until("exactly one replica to lead", one, timeout=timeout)
        return found[0]

    def login_at(self, i: int, name: str) -> str:
        """Signs `name` in at replica i's own port (its CLI mints the link)."""
        return self.login(name, self.ports[i], self.envs[i])


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs, nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def section_r(o: argparse.Namespace, run_id: str, stacks: list) -> None:
    pg = PgScratch(run_id)
    stacks.append(pg)
    log(f"r. starting a throw-away PostgreSQL ({pg.bin}, port {pg.port})")
    pg.start()
    # All three behind the same `internal` entry point: only the store and the number
    # of replicas differ.
    sled = Replicated(o, run_id, "rs", None, 1, (24000, 24999), direct=True)
    one = Replicated(o, run_id, "r1", pg.database(f"sgbench_{run_id}_r1"), 1, (25000, 25999))
    two = Replicated(o, run_id, "r2", pg.database(f"sgbench_{run_id}_r2"), 2, (26000, 26999))
    setups = [("sled x1", sled), ("PostgreSQL x1", one), ("PostgreSQL x2", two)]
    for name, b in setups:
        stacks.append(b)
        log(f"r. starting {name} (instance {b.instance})")
        b.start()

    # -- /auth through Traefik: the app of a signed-in user whose container runs. Its
    # /healthz, not /whoami.json: the latter writes a visit counter to disk per request.
    targets = []
    for name, b in setups:
        slug = b.add_user("bench-warm")
        b.wait_router(f"u-{slug}")
        cookie = b.login("bench-warm")
        b.through_traefik(slug, cookie, time.perf_counter())
        targets.append((name, f"http://127.0.0.1:{b.web_port}/u-{slug}/healthz", [f"Cookie: {cookie}"], b))
        if b is sled:
            targets.append(("sled x1, direct (no internal entry point)", b.add_direct_route(slug),
                            [f"Cookie: {cookie}"], b))
    for name, url, hdrs, _ in targets:
        parts = urllib.parse.urlparse(url)
        cookie = hdrs[0].split(": ", 1)[1]
        status = http_request(parts.port or 80, parts.path, headers={"Cookie": cookie})[0]
        if status != 200:
            raise BenchError(f"r. {name}: GET {url}: {status}")
        log(f"r. warm-up {name} ({o.warmup_duration})")
        wrk(url, o.threads, o.connections, o.warmup_duration, hdrs)
    results: dict[str, list[WrkResult]] = {name: [] for name, *_ in targets}
    for rnd in range(o.rounds):
        # Every round in another order, so no target always follows the same one.
        for name, url, hdrs, b in targets[rnd % len(targets):] + targets[:rnd % len(targets)]:
            b.check_alive()
            log(f"r. round {rnd + 1}/{o.rounds}: {name} ({o.duration})")
            results[name].append(wrk(url, o.threads, o.connections, o.duration, hdrs))
    print(f"r. Replicas on PostgreSQL (issue 16): a signed-in user's app (/healthz) through Traefik (forwardAuth + "
          f"proxy)  [wrk -t{o.threads} -c{o.connections} -d{o.duration} --latency, {o.rounds} rounds alternating]")
    print("  sled x1, PostgreSQL x1 and x2: the same topology, forwardAuth through Traefik's `internal` entry point")
    print("  (file-provider service over the replicas, health check on /readyz, retry; docs/ha.md);")
    print("  `direct`: the same sled spawngate, Traefik and container, forwardAuth to spawngate's own address.")
    rows = []
    for name, rs in results.items():
        for i, w in enumerate(rs):
            rows.append([f"{name}, round {i + 1}", f"{w.rps:,.0f}", f"{w.p50:.3f}", f"{w.p99:.3f}",
                         f"{w.requests:,}", str(w.non2xx), w.socket_errors or "0"])
    print(table(["run", "req/s", "p50 ms", "p99 ms", "requests", "non-2xx", "socket errors"], rows))
    best = {name: max(rs, key=lambda w: w.rps) for name, rs in results.items()}
    med = {name: median([w.rps for w in rs]) for name, rs in results.items()}
    base = best["sled x1"]
    print()
    print(table([f"best of {o.rounds} (by req/s)", "req/s", "p50 ms", "p99 ms", "req/s vs sled x1",
                 "p50 vs sled x1", "p99 vs sled x1", "median req/s", "vs sled x1"],
                [[name, f"{w.rps:,.0f}", f"{w.p50:.3f}", f"{w.p99:.3f}", ratio(w.rps, base.rps),
                  ratio(w.p50, base.p50), ratio(w.p99, base.p99), f"{med[name]:,.0f}",
                  ratio(med[name], med["sled x1"])] for name, w in best.items()]))
    if any(w.non2xx for rs in results.values() for w in rs):
        print("  WARNING: some responses were not 2xx/3xx; the numbers above are not comparable.")
    print(flush=True)

    # -- cold start: a new user's first request through Traefik, sides alternating.
    cold: dict[str, list[float]] = {"sled": [], "PostgreSQL (2 replicas)": []}
    for i in range(o.warmup + o.runs):
        for side, b in (("sled", sled), ("PostgreSQL (2 replicas)", two)):
            name = f"bench-cold-{i}"
            slug = b.add_user(name)
            b.wait_router(f"u-{slug}")
            cookie = b.login(name)
            time.sleep(o.settle)
            b.check_alive()
            log(f"r. cold start {i + 1}/{o.warmup + o.runs}: {side}")
            ms = b.through_traefik(slug, cookie, time.perf_counter()).ms
            if i >= o.warmup:
                cold[side].append(ms)
    print(f"r. Cold first request through Traefik (create + start + ready), {o.runs} runs each, sides alternating"
          " (both through the `internal` entry point)")
    print(table(["", "median ms", "min ms", "max ms"],
                [[side, fmt_ms(median(xs)), fmt_ms(min(xs)), fmt_ms(max(xs))] for side, xs in cold.items()]
                + [["ratio PostgreSQL/sled", ratio(median(cold["PostgreSQL (2 replicas)"]), median(cold["sled"])),
                    ratio(min(cold["PostgreSQL (2 replicas)"]), min(cold["sled"])),
                    ratio(max(cold["PostgreSQL (2 replicas)"]), max(cold["sled"]))]]))
    print(flush=True)

    # -- propagation of a revocation: revoked through A's admin API, B's /auth polled.
    samples = 50
    slug = two.add_user("bench-revoke")
    two.wait_router(f"u-{slug}")
    call_ms: list[float] = []
    seen_ms: list[float] = []
    for i in range(samples):
        cookie = two.login_at(0, "bench-revoke")
        poll_until_200(two.ports[1], f"/auth/u-{slug}", {"Cookie": cookie}, time.perf_counter(), 0.01)
        headers = {"Authorization": f"Bearer {two.admin_token}"}
        t0 = time.perf_counter()
        status, _, body = http_request(two.ports[0], "/_spawngate/api/users/bench-revoke/sessions/revoke",
                                       method="POST", headers=headers)
        t1 = time.perf_counter()
        if status != 200:
            raise BenchError(f"revoke at replica 0: {status} {body[:200]!r}")
        while True:
            status, _, _ = http_request(two.ports[1], f"/auth/u-{slug}", headers={"Cookie": cookie})
            if status == 401:
                break
            if time.perf_counter() - t1 > 30:
                raise BenchError("replica 1 still accepts a session revoked 30 s ago")
        t2 = time.perf_counter()
        call_ms.append((t1 - t0) * 1000)
        seen_ms.append((t2 - t1) * 1000)
    print(f"r. Propagation of a revocation: POST users/<name>/sessions/revoke on replica A, then B's /auth polled "
          f"back to back until 401 ({samples} samples)")
    print(table(["", "p50 ms", "p99 ms", "max ms"], [
        ["revoke call on A (committed)", fmt_ms(pct(call_ms, 0.5)), fmt_ms(pct(call_ms, 0.99)), fmt_ms(max(call_ms))],
        ["then until B refuses", fmt_ms(pct(seen_ms, 0.5)), fmt_ms(pct(seen_ms, 0.99)), fmt_ms(max(seen_ms))],
        ["call + propagation", fmt_ms(pct([a + b for a, b in zip(call_ms, seen_ms)], 0.5)),
         fmt_ms(pct([a + b for a, b in zip(call_ms, seen_ms)], 0.99)),
         fmt_ms(max(a + b for a, b in zip(call_ms, seen_ms)))],
    ]))
    print(flush=True)
    for b in (sled, one):
        b.cleanup()

    # -- failover: the leader SIGKILLed while an overdue container waits to be culled.
    bf = Replicated(o, run_id, "rf", pg.database(f"sgbench_{run_id}_rf"), 2, (27000, 27999),
                    extra_env={"SPAWNGATE_LIFECYCLE_IDLE_TIMEOUT_SECS": str(R_IDLE_SECS)})
    stacks.append(bf)
    log(f"r. starting 2 replicas with lifecycle.idle_timeout_secs = {R_IDLE_SECS} (instance {bf.instance})")
    bf.start()
    rows = []
    for i in range(3):
        leader = bf.leader()
        follower = 1 - leader
        name = f"bench-idle-{i}"
        slug = bf.add_user(name)
        bf.wait_router(f"u-{slug}")
        cookie = bf.login_at(follower, name)
        poll_until_200(bf.ports[follower], f"/auth/u-{slug}", {"Cookie": cookie}, time.perf_counter(), 0.02)
        # Frozen, the leader keeps its lock (its session stays open) but culls nothing:
        # the container becomes overdue while nobody may cull it.
        p = bf.procs[bf.name_of(leader)]
        p.send_signal(signal.SIGSTOP)
        time.sleep(R_IDLE_SECS + 2)
        if bf.container_states(slug) != ["running"]:
            raise BenchError(f"{name}'s container is {bf.container_states(slug)} before the kill")
        t0 = time.perf_counter()
        p.kill()
        p.wait()
        wait_until("the follower to lead", lambda: bf.role(follower) == "leader", timeout=60, interval=0.01)
        led = (time.perf_counter() - t0) * 1000
        wait_until("the new leader to cull the overdue container",
                   lambda: bf.container_states(slug) != ["running"], timeout=60, interval=0.02)
        culled = (time.perf_counter() - t0) * 1000
        rows.append([f"run {i + 1} (killed replica {leader})", fmt_ms(led), fmt_ms(culled)])
        log(f"r. failover {i + 1}: led after {led:.0f} ms, culled after {culled:.0f} ms; restarting replica {leader}")
        bf.spawn_replica(leader)
    print(f"r. Failover: leader SIGKILLed (frozen first, with an idle container overdue) -> the other replica "
          f"reports role=leader -> its first cull (cull interval 1 s, idle_timeout_secs {R_IDLE_SECS})")
    print(table(["", "kill -> leader ms", "kill -> first cull ms"], rows))
    print("  leadership: a session-level advisory lock, released when the killed replica's connection closes;")
    print("  followers retry every second (src/store/leader.rs).")
    print(flush=True)
    bf.cleanup()
    two.cleanup()
    pg.cleanup()


# ---- g. soak


SETTINGS_G = {
    # Short tiers, so the culler really pauses, stops and removes the containers of
    # users the clients leave alone for a few seconds; the next request resumes them.
    "SPAWNGATE_LIFECYCLE_PAUSE_AFTER_SECS": "3",
    "SPAWNGATE_LIFECYCLE_IDLE_TIMEOUT_SECS": "8",
    "SPAWNGATE_LIFECYCLE_REMOVE_AFTER_SECS": "20",
    # Every forwardAuth decision is logged too, so a failed request can be shown next
    # to what spawngate decided and did for that user just before.
    "SPAWNGATE_LOG": "warn,spawngate::lifecycle=info,spawngate::auth=info",
}
# Who the client loops ask: a window of SOAK_HOT users gets most requests and moves
# on by SOAK_STEP users every SOAK_ROTATE_SECS, so every user is busy for a while and
# then idle long enough to be paused, stopped and removed; SOAK_WANDER of the requests
# go to any user at random (idle gaps of a few to tens of seconds: every tier is hit).
SOAK_HOT, SOAK_STEP, SOAK_ROTATE_SECS, SOAK_WANDER = 10, 5, 6.0, 0.05
SOAK_PAUSE = (0.0, 0.1)          # s between two requests of one client loop
SOAK_CHAOS_PAUSE = (1.0, 3.0)    # s between two chaos actions
SOAK_CHAOS_HOT = 0.7             # share of chaos aimed at the busy window
# A request may wait for forwardAuth's hold (10 s) on a resume; well past that is a hang.
SOAK_REQUEST_TIMEOUT = 40.0
SOAK_SAMPLE_SECS = 5.0
SOAK_CAUSE_SECS = 1.0
DOCUMENTED_G = "200 from the user's own container; 503 with JSON code \"starting\" and Retry-After"


@dataclass
class SoakFailure:
    t: float       # s since the soak began
    wall: float    # time.time(), to find spawngate's log lines
    user: str
    label: str
    ms: float
    body: str


@dataclass
class SoakChaos:
    t: float
    wall: float
    user: str
    action: str
    result: str
    ms: float


@dataclass
class SoakSample:
    label: str
    rss: int       # KiB
    hwm: int       # KiB
    threads: int
    fds: int


class Soak:
    """State shared by the client loops, the chaos loop and the sampler."""

    def __init__(self, bg: Bench, users: list[tuple[str, str, str]]) -> None:
        self.b = bg
        self.users = users  # (name, slug, cookie)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.ok_ms: list[float] = []
        self.starting_ms: list[float] = []
        self.failures: list[SoakFailure] = []
        self.chaos: list[SoakChaos] = []
        self.samples: list[SoakSample] = []
        self.t0 = time.monotonic()
        self.pid = bg.procs["spawngate"].pid

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def hot(self) -> list[tuple[str, str, str]]:
        n = len(self.users)
        first = int(self.elapsed() / SOAK_ROTATE_SECS) * SOAK_STEP
        return [self.users[(first + j) % n] for j in range(min(SOAK_HOT, n))]

    def pick(self, rng: random.Random, hot_share: float) -> tuple[str, str, str]:
        return rng.choice(self.hot()) if rng.random() < hot_share else rng.choice(self.users)

    def client(self, i: int) -> None:
        rng = random.Random(f"{self.b.run_id}-client-{i}")
        while not self.stop.is_set():
            name, slug, cookie = self.pick(rng, 1 - SOAK_WANDER)
            t, wall, t_req = self.elapsed(), time.time(), time.perf_counter()
            status, headers, body = http_request(
                self.b.web_port, f"/u-{slug}/whoami.json",
                headers={"Cookie": cookie, "Accept": "application/json"}, timeout=SOAK_REQUEST_TIMEOUT,
            )
            ms = (time.perf_counter() - t_req) * 1000
            label, documented = soak_classify(name, status, headers, body)
            with self.lock:
                self.counts[label] = self.counts.get(label, 0) + 1
                if label == "200":
                    self.ok_ms.append(ms)
                elif documented:
                    self.starting_ms.append(ms)
                else:
                    self.failures.append(SoakFailure(t, wall, name, label, ms,
                                                     body[:160].decode(errors="replace").strip()))
            self.stop.wait(rng.uniform(*SOAK_PAUSE))

    def chaos_loop(self) -> None:
        rng = random.Random(f"{self.b.run_id}-chaos")
        while not self.stop.wait(rng.uniform(*SOAK_CHAOS_PAUSE)):
            name, slug, _ = self.pick(rng, SOAK_CHAOS_HOT)
            action = rng.choice(["admin stop", "docker rm -f"])
            t, wall, t_act = self.elapsed(), time.time(), time.perf_counter()
            if action == "admin stop":
                try:
                    self.b.api("POST", f"users/{name}/container/stop", timeout=60)
                    result = "200"
                except BenchError as e:
                    result = str(e).split(" failed: ", 1)[-1][:80]
            else:
                p = subprocess.run(["docker", "rm", "-f", f"spawngate-u-{slug}"], capture_output=True,
                                   text=True, timeout=60)
                result = "removed" if p.returncode == 0 else (
                    "no container" if "No such container" in p.stderr else p.stderr.strip()[:80])
            with self.lock:
                self.chaos.append(SoakChaos(t, wall, name, action, result, (time.perf_counter() - t_act) * 1000))

    def sample(self, label: str) -> SoakSample:
        rss, hwm, _ = proc_mem(self.pid)
        s = SoakSample(label, rss, hwm, proc_threads(self.pid), proc_fds(self.pid))
        with self.lock:
            self.samples.append(s)
        return s

    def sampler(self) -> None:
        while not self.stop.wait(SOAK_SAMPLE_SECS):
            self.sample(f"t={self.elapsed():.0f} s")


def soak_classify(name: str, status: int | None, headers: dict, body: bytes) -> tuple[str, bool]:
    """(label, documented) of one answer through Traefik to GET /u-<slug>/whoami.json."""
    if status is None:
        return "connection error", False
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status == 200:
        if not isinstance(doc, dict):
            return "200 without the app's JSON", False
        return ("200", True) if doc.get("user") == name else ("200 from another user's container", False)
    if status == 503:
        code = doc.get("error", {}).get("code") if isinstance(doc, dict) and isinstance(doc.get("error"), dict) else None
        if code == "starting":
            return ("503 starting", True) if "retry-after" in headers else ("503 starting without Retry-After", False)
        return f"503 {code or '(not spawngate JSON)'}", False
    return str(status), False


def proc_threads(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(l.split()[1]) for l in f if l.startswith("Threads:")), 0)
    except OSError:
        return 0


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def docker_events(instance: str) -> subprocess.Popen:
    """`docker events` for this instance's containers, until terminated."""
    return subprocess.Popen(
        ["docker", "events", "--filter", "type=container", "--filter", f"label=spawngate.instance={instance}",
         "--format", "{{.Action}}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )


def parse_log(path: str) -> list[tuple[float, str, str, dict]]:
    """spawngate's JSON log lines as (unix time, level, target, fields)."""
    out = []
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    line = json.loads(raw)
                    ts = re.sub(r"(\.\d{6})\d*", r"\1", line["timestamp"])
                    wall = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
                    out.append((wall, line.get("level", "?"), line.get("target", "?"), line.get("fields", {})))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
    except OSError:
        pass
    return out


def section_g(bg: Bench, o: argparse.Namespace) -> int:
    """Soak: steady requests through Traefik while the culler pauses, stops and removes
    containers and a chaos loop stops them (admin API) and removes them (docker rm -f).
    Returns the number of problems: undocumented answers, and containers or volumes
    left after the users are deleted."""
    names = [f"soak{i:02d}" for i in range(o.soak_users)]
    pid = bg.procs["spawngate"].pid
    s0 = SoakSample("started, no users", *proc_mem(pid)[:2], proc_threads(pid), proc_fds(pid))
    log(f"g. creating and logging in {len(names)} users")
    prepared = bg.prepare_users(names)
    users = [(n, *prepared[n]) for n in names]
    log(f"g. first request of each user (starts {len(users)} containers)")
    parallel(lambda u: poll_until_200(bg.web_port, f"/u-{u[1]}/whoami.json", {"Cookie": u[2]},
                                      time.perf_counter(), 0.1, timeout=120), users, 8)
    soak = Soak(bg, users)
    soak.samples.append(s0)
    soak.sample(f"{len(users)} users running, before load")
    events = docker_events(bg.instance)
    log(f"g. soak: {o.soak_clients} client loops + chaos for {o.soak_secs:g} s")
    threads = [threading.Thread(target=soak.client, args=(i,), daemon=True) for i in range(o.soak_clients)]
    threads += [threading.Thread(target=soak.chaos_loop, daemon=True),
                threading.Thread(target=soak.sampler, daemon=True)]
    soak.t0 = time.monotonic()
    wall0 = time.time()
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + o.soak_secs
        while time.monotonic() < deadline:
            bg.check_alive()
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    finally:
        soak.stop.set()
        for t in threads:
            t.join(timeout=SOAK_REQUEST_TIMEOUT + 20)
    load_secs = soak.elapsed()
    end = soak.sample("end of load")
    hung = [t.name for t in threads if t.is_alive()]
    try:
        audit = bg.api("GET", "audit?limit=10000").get("entries", [])
    except BenchError as e:
        log(f"g. cannot read the audit log: {e}")
        audit = []
    culls: dict[str, int] = {}
    for e in audit:
        if e.get("actor") == "system" and e.get("at", 0) >= int(wall0):
            culls[e.get("action", "?")] = culls.get(e.get("action", "?"), 0) + 1

    log(f"g. deleting the {len(users)} users (DELETE /_spawngate/api/users/<name>)")
    t_del = time.perf_counter()
    delete_errors = []
    for name, _, _ in users:
        try:
            bg.api("DELETE", f"users/{name}", timeout=120)
        except BenchError as e:
            delete_errors.append(str(e))
    delete_s = time.perf_counter() - t_del

    def left() -> tuple[list[str], list[str]]:
        label = f"label=spawngate.instance={bg.instance}"
        return (docker_lines("ps", "-aq", "--filter", label),
                docker_lines("volume", "ls", "-q", "--filter", label))

    t_wait = time.perf_counter()
    try:
        wait_until("the deleted users' containers and volumes to go", lambda: left() == ([], []),
                   timeout=30, interval=0.5)
    except BenchError:
        pass
    left_containers, left_volumes = left()
    waited = time.perf_counter() - t_wait
    events.terminate()
    try:
        ev_out, _ = events.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        events.kill()
        ev_out, _ = events.communicate()
    ev_counts: dict[str, int] = {}
    for line in ev_out.split():
        ev_counts[line] = ev_counts.get(line, 0) + 1
    after = soak.sample("after deleting the users")

    # ---- report
    total = sum(soak.counts.values())
    bad = sum(n for k, n in soak.counts.items() if k not in ("200", "503 starting"))
    print(f"g. Soak: {len(users)} users (host mode, {IMAGE}), {o.soak_clients} client loops with session cookies "
          f"through Traefik for {load_secs:.0f} s,")
    print("   culler tiers " + " ".join(f"{k}={v}" for k, v in SETTINGS_G.items() if "LIFECYCLE" in k)
          + f", chaos every {SOAK_CHAOS_PAUSE[0]:g}-{SOAK_CHAOS_PAUSE[1]:g} s (admin stop, docker rm -f)")
    print(f"   [{SOAK_HOT} busy users at a time, moving on by {SOAK_STEP} every {SOAK_ROTATE_SECS:g} s; "
          f"{SOAK_WANDER:.0%} of requests to any user; GET /u-<slug>/whoami.json, new connection each]")
    rows = []
    for label, n in sorted(soak.counts.items(), key=lambda kv: -kv[1]):
        ok = label in ("200", "503 starting")
        rows.append([label, f"{n:,}", f"{n / total:.2%}" if total else "-", "yes" if ok else "NO  <-- FAILURE"])
    rows.append(["total", f"{total:,}", f"{total / load_secs:,.1f}/s", ""])
    print(table(["answer", "requests", "share", "documented"], rows))
    print(f"  documented: {DOCUMENTED_G}")
    if soak.ok_ms:
        q = statistics.quantiles(soak.ok_ms, n=100) if len(soak.ok_ms) > 1 else soak.ok_ms * 99
        print(f"  200 latency ms: p50 {median(soak.ok_ms):.1f}, p99 {q[98]:.1f}, max {max(soak.ok_ms):.1f} "
              f"(includes resumes held in forwardAuth)")
    if soak.starting_ms:
        print(f"  503 starting after ms: median {median(soak.starting_ms):.1f}, max {max(soak.starting_ms):.1f}")
    print()
    rows = []
    for action in ("admin stop", "docker rm -f"):
        acts = [c for c in soak.chaos if c.action == action]
        results: dict[str, int] = {}
        for c in acts:
            results[c.result] = results.get(c.result, 0) + 1
        rows.append([action, str(len(acts)), ", ".join(f"{k} x{v}" for k, v in sorted(results.items())) or "-",
                     f"{median([c.ms for c in acts]):.0f}" if acts else "-"])
    print(table(["chaos", "actions", "results", "median ms"], rows))
    print("  culls (audit log, actor system): "
          + (", ".join(f"{k} x{v}" for k, v in sorted(culls.items())) or "none"))
    print("  docker events of the instance: "
          + (", ".join(f"{k} x{v}" for k, v in sorted(ev_counts.items())) or "none"))
    print()
    samples = soak.samples
    rows = [[s.label, mib(s.rss), mib(s.hwm), str(s.threads), str(s.fds)]
            for s in samples if not s.label.startswith("t=")]
    during = [s for s in samples if s.label.startswith("t=")]
    if during:
        rows.insert(2, [f"during load, max of {len(during)} samples", mib(max(s.rss for s in during)), "-",
                        str(max(s.threads for s in during)), str(max(s.fds for s in during))])
    print(table(["spawngate (/proc/<pid>/status, /proc/<pid>/fd)", "VmRSS MiB", "VmHWM MiB", "threads",
                 "open fds"], rows))
    print(f"  VmRSS end of load / before load: {ratio(end.rss, samples[1].rss)}; "
          f"open fds after deleting / before load: {after.fds} / {samples[1].fds}")
    print("  tokio tasks: not measurable (spawngate exposes no runtime metrics); threads and open fds instead")
    print(f"  after deleting the users ({delete_s:.1f} s for {len(users)} DELETEs, then up to {waited:.1f} s): "
          f"{len(left_containers)} containers, {len(left_volumes)} volumes left with label "
          f"spawngate.instance={bg.instance}")
    for e in delete_errors[:5]:
        print(f"  DELETE FAILED: {e}")

    lines = parse_log(bg.logs["spawngate"])
    problems = [l for l in lines if l[1] in ("WARN", "ERROR") and l[0] >= wall0]
    if problems:
        by_msg: dict[str, int] = {}
        for _, level, target, f in problems:
            key = f"{level} {target}: {f.get('message', '?')}" + (f" ({f['error']})" if "error" in f else "")
            key = re.sub(r"u-[a-z0-9]+|[0-9a-f]{12,}", "<…>", key)[:160]
            by_msg[key] = by_msg.get(key, 0) + 1
        print(f"  spawngate warnings/errors during the soak: {len(problems)}")
        for k, n in sorted(by_msg.items(), key=lambda kv: -kv[1])[:10]:
            print(f"    {n:5d}  {k}")

    if soak.failures:
        # Which chaos action (on the same user, started up to SOAK_CAUSE_SECS before the
        # answer) each failure followed: still failures, but the pattern shows at once.
        causes: dict[str, int] = {}
        for f in soak.failures:
            prior = [c for c in soak.chaos if c.user == f.user and 0 <= f.t + f.ms / 1000 - c.t <= SOAK_CAUSE_SECS]
            cause = f"{f.label} within {SOAK_CAUSE_SECS:g} s of a {prior[-1].action}" if prior else \
                f"{f.label} with no chaos action on that user within {SOAK_CAUSE_SECS:g} s"
            causes[cause] = causes.get(cause, 0) + 1
        print()
        print("  failures by what preceded them:")
        for k, n in sorted(causes.items(), key=lambda kv: -kv[1]):
            print(f"    {n:5d}  {k}")
        print(f"  FAILURES: {len(soak.failures)} undocumented answers; the first {min(10, len(soak.failures))}, "
              "with the last chaos action on that user and spawngate's log lines for it just before:")
        slugs = {n: s for n, s, _ in users}
        for f in soak.failures[:10]:
            print(f"  - t={f.t:.2f} s  {f.user} (u-{slugs[f.user]})  {f.label}  after {f.ms:.0f} ms  "
                  f"body {f.body[:100]!r}")
            prior = [c for c in soak.chaos if c.user == f.user and c.t <= f.t + f.ms / 1000]
            if prior:
                c = prior[-1]
                print(f"      last chaos: {c.action} at t={c.t:.2f} s ({f.t - c.t:+.2f} s before the request), "
                      f"result {c.result}, took {c.ms:.0f} ms")
            mine = [l for l in lines if (l[3].get("user") == f.user or l[3].get("slug") in (f"u-{slugs[f.user]}",))
                    and f.wall - 3 <= l[0] <= f.wall + f.ms / 1000 + 0.5]
            for wall, level, target, fl in mine[-8:]:
                extra = " ".join(f"{k}={v}" for k, v in fl.items() if k not in ("message", "user", "slug"))
                print(f"      {wall - f.wall:+7.3f} s  {level} {target}: {fl.get('message', '?')} {extra}"[:200])
    problems_n = bad + len(left_containers) + len(left_volumes) + len(delete_errors) + len(hung)
    if hung:
        print(f"  HUNG: {len(hung)} loops did not finish within {SOAK_REQUEST_TIMEOUT + 20:g} s of the end")
    print()
    print("  verdict: " + ("OK: only documented answers, nothing left behind" if problems_n == 0 else
                          f"FAILED: {bad} undocumented answers, {len(left_containers)} containers and "
                          f"{len(left_volumes)} volumes left, {len(delete_errors)} failed deletes"))
    print(flush=True)
    return problems_n


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5,
                   help="timed runs per side in b., c., d., e. and j.; also d.'s pool size (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed warm-up runs per side in b., c., d. and e. (default 1)")
    p.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    p.add_argument("--connections", type=int, default=16, help="wrk -c (default 16)")
    p.add_argument("--duration", default="10s", help="wrk -d per round (default 10s)")
    p.add_argument("--warmup-duration", default="2s", help="wrk -d of the warm-up per target (default 2s)")
    p.add_argument("--rounds", type=int, default=2, help="wrk rounds per target in a. and f. (default 2)")
    p.add_argument("--poll-ms", type=float, default=10, help="pause between failed GETs in b./c. (default 10)")
    p.add_argument("--settle", type=float, default=0.5, help="seconds idle before each timed run (default 0.5)")
    p.add_argument("--scale-users", type=int, default=1000, help="users in f. (default 1000)")
    p.add_argument("--scale-running", type=int, default=50, help="running containers in f. (default 50)")
    p.add_argument("--scale-create-workers", type=int, default=1,
                   help="concurrent POST /_spawngate/api/users in f. (default 1: with 8, spawngate's store "
                        "(sled 0.34.7) deadlocked in 3 of 8 tries here: a user-creating transaction waits for the "
                        "write lock while a flush_async holds a read lock and waits for the log flusher, "
                        "which queues behind the writer)")
    p.add_argument("--soak-secs", type=float, default=180, help="length of the soak load in g. (default 180)")
    p.add_argument("--soak-users", type=int, default=50, help="users in g. (default 50)")
    p.add_argument("--soak-clients", type=int, default=6, help="client loops in g. (default 6)")
    p.add_argument("--many-users", default="1000,10000,50000", help="steps of i. (default 1000,10000,50000)")
    p.add_argument("--many-workers", type=int, default=4, help="concurrent user creations in i. (default 4)")
    p.add_argument("--many-singles", type=int, default=200, help="single adds timed at each step of i. (default 200)")
    p.add_argument("--many-wrk", default="5s", help="wrk -d per /auth round in i. (default 5s)")
    p.add_argument("--many-budget-secs", type=float, default=900,
                   help="i. starts no new step after this many seconds (default 900)")
    p.add_argument("--only", default="abcdefghj",
                   help="sections to run, e.g. 'a' or 'ef' (default abcdefghj; i., r. and s. only when named)")
    o = p.parse_args()
    if o.runs < 1 or o.rounds < 1 or o.warmup < 0:
        p.error("--runs and --rounds must be >= 1, --warmup >= 0")
    if not 1 <= o.scale_running <= o.scale_users <= 4000:
        p.error("need 1 <= --scale-running <= --scale-users <= 4000")
    if o.scale_create_workers < 1:
        p.error("--scale-create-workers must be >= 1")
    if not (o.soak_secs > 0 and 1 <= o.soak_users <= 500 and 1 <= o.soak_clients <= 64):
        p.error("need --soak-secs > 0, 1 <= --soak-users <= 500, 1 <= --soak-clients <= 64")
    if set(o.only) - set("abcdefghijrs"):
        p.error("--only takes letters from 'abcdefghijrs'")
    try:
        steps = [int(x) for x in o.many_users.split(",") if x.strip()]
    except ValueError:
        steps = []
    if not steps or min(steps) < 2 or max(steps) > 53000 or o.many_workers < 1 or o.many_singles < 1:
        p.error("need --many-users like 1000,10000 (each 2..53000), --many-workers >= 1, --many-singles >= 1")
    return o


def preflight(o: argparse.Namespace) -> None:
    needed = [SPAWNGATE, TRAEFIK] + ([NOOP] if set(o.only) & set("abc") else [])
    missing = [p for p in needed if not os.access(p, os.X_OK)]
    if "d" in o.only and shutil.which("docker-compose") is None:
        raise BenchError("section d needs docker-compose (v1, as in the README); leave it out with --only abcef")
    if missing:
        raise BenchError(f"missing {', '.join(missing)}: run bench/run (it runs scripts/setup and builds the no-op example)")
    if "r" in o.only:
        pg_bin()
    if set(o.only) & set("afir") and shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: run bench/run, or apt-get install -y wrk")
    for image in ([IMAGE] + (["spawngate:local", "spawngate-traefik:local"] if "d" in o.only else [])
                  + ([SHELL_IMAGE] if "h" in o.only else []) + ([JUPYTER_IMAGE] if "j" in o.only else [])):
        if not docker_lines("image", "ls", "-q", image):
            raise BenchError(f"image {image} is missing: run scripts/setup")


def on_sigterm(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    o = parse_args()
    # Ctrl-C (even when started with SIGINT ignored, as background jobs are) and
    # SIGTERM unwind through the clean-up below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        preflight(o)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    b = Bench(o)
    # Everything that may need cleaning up, in the order it was made.
    stacks: list = [b]
    tmp = tempfile.mkdtemp(prefix=f"sgbench-{b.run_id}-compose-")
    started = time.perf_counter()
    left: list[str] = []
    soak_problems = 0
    # s. made the swarm: leave it once everything is cleaned up.
    made_swarm = [False]
    try:
        header(b, o)
        a_best = None
        small = None
        if set(o.only) & set("abc"):
            log(f"starting spawngate (instance {b.instance}), the no-op server and Traefik")
            b.start()
            n_cold = o.warmup + o.runs if "b" in o.only else 0
            names = ["bench-warm"] + [f"bench-cold-{i}" for i in range(n_cold)]
            log(f"creating and logging in {len(names)} users")
            users = b.prepare_users(names)
            warm = ("bench-warm", *users["bench-warm"])
            # The warm user's container is started first in every case, so Docker's one-off
            # costs (the network) are paid before anything is timed.
            poll_until_200(b.sg_port, f"/auth/u-{warm[1]}", {"Cookie": warm[2]}, time.perf_counter(), 0.05)
            if "a" in o.only:
                a_best = section_a(b, o, users["bench-warm"])
                section_a_traefik(b, o, users["bench-warm"])
            if "b" in o.only:
                section_b(b, o, [(n, *users[n]) for n in names[1:]])
            if "c" in o.only:
                section_c(b, o, warm)
            # The next sections start pairs of their own; f. compares /auth with this
            # one side by side, so it stays up (idle) until then.
            small = (b, warm[1], warm[2])
            if not set(o.only) & set("fi"):
                b.cleanup()
        if "d" in o.only:
            section_d(o, b.run_id, tmp, stacks)
        if "e" in o.only:
            be = Bench(o, run_id=b.run_id, tag="e", noop=False, host_ports=(24000, 24999), extra_env=SETTINGS_E)
            stacks.append(be)
            log(f"e. starting a second spawngate + Traefik pair (instance {be.instance})")
            be.start()
            section_e(be, o)
            log("e. cleaning up its pair")
            be.cleanup()
        if "f" in o.only:
            bf = Bench(o, run_id=b.run_id, tag="f", noop=False, host_ports=(25000, 29999))
            stacks.append(bf)
            log(f"f. starting a fresh spawngate + Traefik pair (instance {bf.instance})")
            bf.start()
            section_f(bf, o, a_best, small)
            log(f"f. cleaning up its pair ({o.scale_running} containers and their volumes)")
            bf.cleanup()
        if "i" in o.only:
            section_i(o, b.run_id, small, stacks)
            for s in stacks:
                if isinstance(s, Bench) and s.tag in ("i", "is"):
                    s.cleanup()
        if "g" in o.only:
            # e.'s port range: e. is over by now, and its containers are gone.
            bg = Bench(o, run_id=b.run_id, tag="g", noop=False, host_ports=(24000, 24999),
                       extra_env=SETTINGS_G)
            stacks.append(bg)
            log(f"g. starting a fresh spawngate + Traefik pair (instance {bg.instance})")
            bg.start()
            soak_problems = section_g(bg, o)
            log("g. cleaning up its pair")
            bg.cleanup()
        if "s" in o.only:
            if swarm_state() == "inactive":
                log("s. docker swarm init --advertise-addr 127.0.0.1 (left again at the end)")
                run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], timeout=60)
                made_swarm[0] = True
            elif swarm_state() != "active":
                raise BenchError(f"s. needs a swarm manager; the engine's swarm is {swarm_state()!r}")
            bs = Bench(o, run_id=b.run_id, tag="s", noop=False, host_ports=(26000, 26999), extra_env=SETTINGS_S)
            stacks.append(bs)
            log(f"s. starting a spawngate (swarm mode) + Traefik pair (instance {bs.instance})")
            bs.start()
            section_s(bs, o)
            log("s. cleaning up its pair")
            bs.cleanup()
        if "r" in o.only:
            section_r(o, b.run_id, stacks)
        if "h" in o.only:
            ssh_port = free_port()
            bh = Bench(o, run_id=b.run_id, tag="h", noop=False, host_ports=(24000, 24999), extra_env={
                "SPAWNGATE_SSH_ENABLED": "true",
                "SPAWNGATE_SSH_LISTEN": f"127.0.0.1:{ssh_port}",
                "SPAWNGATE_DOCKER_IMAGE": SHELL_IMAGE,
            })
            stacks.append(bh)
            log(f"h. starting a fresh spawngate + Traefik pair with SSH (instance {bh.instance})")
            bh.start()
            section_h(bh, o, ssh_port)
            log("h. cleaning up its pair")
            bh.cleanup()
        if "j" in o.only:
            config = os.path.join(tmp, "jupyter.toml")
            with open(config, "w") as f:
                f.write(JUPYTER_CONFIG)
            bj = Bench(o, run_id=b.run_id, tag="j", noop=False, host_ports=(24000, 24999),
                       extra_env={"SPAWNGATE_CONFIG": config})
            stacks.append(bj)
            log(f"j. starting a fresh spawngate + Traefik pair with a Jupyter profile (instance {bj.instance})")
            bj.start()
            section_j(bj, o)
            log("j. cleaning up its pair")
            bj.cleanup()
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    except (BenchError, subprocess.SubprocessError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        for s in stacks:
            if isinstance(s, Bench):
                for name in s.procs:
                    print(f"--- last lines of {name}{s.tag and ' (' + s.tag + ')'}'s log:\n{s.tail(name)}",
                          file=sys.stderr)
            elif s.started:
                print(f"--- last lines of {s.project}'s spawngate log:\n{s.tail()}", file=sys.stderr)
        return 1
    finally:
        log("cleaning up")
        for s in reversed(stacks):
            s.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
        left = [x for s in stacks for x in s.leftovers()]
        if made_swarm[0]:
            run(["docker", "swarm", "leave", "--force"], check=False, timeout=60)
        if left:
            print(f"WARNING: left behind: {', '.join(left)}", file=sys.stderr)
    names = ", ".join(s.instance if isinstance(s, Bench) else s.project for s in stacks if s.started)
    print(f"Clean-up: removed the containers, volumes and networks of this run "
          f"(instances / compose projects: {names or 'none'}; label sgbench.run={b.run_id}*): "
          + ("nothing left behind." if not left else f"LEFT BEHIND: {', '.join(left)}"))
    print(f"Total time: {time.perf_counter() - started:.0f} s; load average at the end (1/5/15 min): "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    if soak_problems:
        print(f"Soak (g.): {soak_problems} problems (undocumented answers or leftovers, see above): exit status 1")
    return 0 if not left and not soak_problems else 1


if __name__ == "__main__":
    sys.exit(main())
