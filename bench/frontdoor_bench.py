#!/usr/bin/env python3
"""What sovmeshd's Ollama-compatible front door and the peer hop cost.

One run starts a backend (bench/fast_ollama.py, or the test stand-in with
--backend standin), daemon "alpha" whose local backend is that server, and
daemon "bravo" with no local backend (inference.backend = "") paired with
alpha, so every answer bravo gives takes the peer hop (mutual TLS 1.3 +
HPKE). It then measures three paths:

  direct   client -> backend
  front    client -> alpha's front door -> backend
  peer     client -> bravo's front door -> alpha (peer port) -> backend

  * latency of non-streaming POST /api/chat, one keep-alive connection per
    path, the paths taken in turn so all see the same machine state;
  * time to the first chunk of a streaming /api/chat, likewise;
  * throughput (requests/s) with --clients concurrent client processes,
    each on its own keep-alive connection, for --seconds per path.

The peer path gets fewer requests than the others (--peer-n, and a fixed
--peer-tput-requests for throughput): alpha remembers every sealed request
for 120 s to refuse replays, at most 4096 of them, and refuses further peer
requests ("503 too many recent requests") while that cache is full. The
bench keeps the peer path's total under that and spreads its samples evenly
over the run.

Added latency is path minus direct at p50 and p99; the targets are the
front door adding < 0.5 ms at p50, and the peer hop adding < 3 ms at p50 on
top of the front door. Every answer is checked (status, text, and the
X-Sovmesh-Source header); every message is unique, so no cache can answer.

  python3 bench/frontdoor_bench.py --build build-rel [--n 2000] [--json]

Python 3 stdlib only. Loopback only. Exit status 0 when the run completed
(targets met or not; --strict makes a MISS exit 1), 1 on failed requests
or a daemon that would not start, 2 on bad arguments.
"""
import argparse
import http.client
import json
import math
import multiprocessing
import os
import platform
import queue
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_ROOT = os.path.dirname(HERE)
MODEL = "llama3.2"
PATHS = ("direct", "front", "peer")
SOURCE_OF = {"direct": None, "front": "local", "peer": "peer"}
# alpha's replay cache (core/sealed_message.h: SEALED_REPLAY_CAPACITY per
# SEALED_REPLAY_WINDOW_SECS), less a margin.
PEER_BUDGET = 4096 - 96
PEER_WARMUP = 50
TPUT_WARMUP = 5
TARGETS = (  # name, path, baseline path, limit on (path - baseline) at p50, ms
    ("front door adds < 0.5 ms", "front", "direct", 0.5),
    ("peer hop adds < 3 ms on top of the front door", "peer", "front", 3.0),
)


def say(*args):
    print(*args, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---- processes ------------------------------------------------------------

def start_listener(cmd, what, timeout=30):
    """Start a server that prints "LISTENING host:port" first; return
    (process, "host:port")."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    r, _, _ = select.select([p.stdout], [], [], timeout)
    line = p.stdout.readline() if r else ""
    if not line.startswith("LISTENING "):
        p.kill()
        p.wait()
        raise BenchError("%s did not start (first line %r)" % (what, line))
    return p, line.split()[1]


def stop_process(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Node:
    """One sovmeshd on 127.0.0.1 with its own state dir and log file."""

    def __init__(self, build, workdir, name, backend_url, log_level):
        self.build, self.name = build, name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.state = os.path.join(self.dir, "state")
        self.sock = os.path.join(self.state, "control.sock")
        self.log_path = os.path.join(self.dir, "sovmeshd.log")
        if backend_url:
            # Slots and peer capacity beyond what the clients use: the
            # bench measures overhead, not queueing.
            inference = ('plugin_settings = { backend-ollama = { url = "%s"; parallel = 64; }; };'
                         % backend_url)
        else:
            inference = 'inference = { backend = ""; };'
        conf = os.path.join(self.dir, "sovmeshd.conf")
        with open(conf, "w") as f:
            f.write("""
node = { name = "%s"; state_dir = "%s"; log_level = "%s"; plugin_path = ["%s"]; };
mesh = { peer_listen = "127.0.0.1:0"; max_concurrent_peer_requests = 64; };
api = { listen = "127.0.0.1:0"; };
pairing = { listen = "127.0.0.1:0"; };
federated_learning = { enabled = false; };
%s
""" % (name, self.state, log_level, os.path.join(build, "plugins"), inference))
        env = dict(os.environ)
        env.pop("SOVMESH_PLUGIN_PATH", None)
        # Never announce on the machine's real network (no system bus).
        env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent/sovmesh-bench-bus"
        self.env = env
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([os.path.join(build, "core", "sovmeshd"), "-c", conf],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._socket_ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError("sovmeshd %s did not start:\n%s" % (name, self.log_text()))
            time.sleep(0.05)

    def _socket_ready(self):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(self.sock)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def log_text(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def cli(self, *args):
        r = subprocess.run([os.path.join(self.build, "core", "sovmesh"), "--socket", self.sock]
                           + list(args), env=self.env, capture_output=True, text=True,
                           timeout=90)
        if r.returncode != 0:
            raise BenchError("sovmesh %s on %s failed: %s" % (" ".join(args), self.name,
                                                               r.stderr.strip()))
        return r.stdout

    def cli_json(self, *args):
        return json.loads(self.cli("--json", *args))

    def api(self):
        return self.cli_json("status")["inference"]["api"]

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def pair(alpha, bravo):
    """bravo joins alpha by pairing code, then waits until it sees alpha
    connected with its models."""
    offer = alpha.cli_json("pair", "code", "--no-wait")
    bravo.cli("pair", "join", offer["code"], "--addr", offer["addresses"][0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        peers = {p["name"]: p for p in bravo.cli_json("peers")["peers"]}
        a = peers.get(alpha.name, {})
        if a.get("status") == "connected" and a.get("models"):
            return
        time.sleep(0.1)
    raise BenchError("bravo never saw alpha connected:\n%s" % bravo.log_text())


# ---- one request ------------------------------------------------------------

def connect(hostport):
    host, port = hostport.rsplit(":", 1)
    c = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=60)
    c.connect()  # sets TCP_NODELAY
    return c


def chat_body(text, stream):
    return json.dumps({"model": MODEL, "stream": stream,
                       "messages": [{"role": "user", "content": text}]}).encode()


HEADERS = {"Content-Type": "application/json"}


def check(path, status, source, text, want):
    if status != 200:
        raise BenchError("%s: HTTP %d: %s" % (path, status, text[:200]))
    if source != SOURCE_OF[path]:
        raise BenchError("%s: answered by %r, expected %r" % (path, source, SOURCE_OF[path]))
    if text != want:
        raise BenchError("%s: answer %r, expected %r" % (path, text, want))


def timed_chat(conn, path, text):
    """Non-streaming chat; returns seconds from send to the whole body."""
    body = chat_body(text, False)
    t0 = time.perf_counter()
    conn.request("POST", "/api/chat", body, HEADERS)
    resp = conn.getresponse()
    data = resp.read()
    t1 = time.perf_counter()
    try:
        got = json.loads(data)["message"]["content"]
    except (ValueError, KeyError, TypeError):
        got = data.decode("utf-8", "replace")
    check(path, resp.status, resp.getheader("X-Sovmesh-Source"), got, "echo: " + text)
    return t1 - t0


def timed_first_chunk(conn, path, text):
    """Streaming chat; returns seconds from send to the first body bytes."""
    body = chat_body(text, True)
    t0 = time.perf_counter()
    conn.request("POST", "/api/chat", body, HEADERS)
    resp = conn.getresponse()
    first = resp.read1(65536)
    t1 = time.perf_counter()
    data = first + resp.read()
    got, done = "", False
    for line in data.splitlines():
        obj = json.loads(line)
        got += obj.get("message", {}).get("content", "")
        done = done or obj.get("done") is True
    if resp.status == 200 and not done:
        got += " [no done:true line]"
    if not first and resp.status == 200:
        got += " [empty first read]"
    check(path, resp.status, resp.getheader("X-Sovmesh-Source"), got, "echo: " + text)
    return t1 - t0


# ---- phases -----------------------------------------------------------------

def latency_phase(addrs, n, peer_n, warmup, fn, label):
    """n requests per path, peer_n for "peer", spread evenly over the n
    rounds; the paths take turns."""
    conns = {p: connect(a) for p, a in addrs.items()}
    try:
        for i in range(warmup):
            for p in addrs:
                if p != "peer" or i < PEER_WARMUP:
                    fn(conns[p], p, "warm-up %s %d" % (label, i))
        samples = {p: [] for p in addrs}
        step = max(n // 10, 1)
        for i in range(n):
            for p in addrs:
                if p == "peer" and (i * peer_n) // n == ((i + 1) * peer_n) // n:
                    continue
                samples[p].append(fn(conns[p], p, "%s %s number %d" % (label, p, i)))
            if (i + 1) % step == 0:
                say("  %s: %d/%d" % (label, i + 1, n))
        return samples
    finally:
        for c in conns.values():
            c.close()


def tput_worker(hostport, path, seconds, count_max, idx, barrier, results):
    """Chat in a loop for `seconds`, or `count_max` times if not None;
    report (idx, requests, elapsed seconds, error)."""
    try:
        conn = connect(hostport)
        for i in range(TPUT_WARMUP):
            timed_chat(conn, path, "tput warm-up %d %d" % (idx, i))
        barrier.wait(60)
        t0 = time.perf_counter()
        end = t0 + (seconds if count_max is None else 1e9)
        count = 0
        while time.perf_counter() < end and (count_max is None or count < count_max):
            timed_chat(conn, path, "tput %s %d %d" % (path, idx, count))
            count += 1
        elapsed = time.perf_counter() - t0
        conn.close()
        results.put((idx, count, elapsed, None))
    except Exception as e:  # noqa: BLE001 - reported by the parent
        results.put((idx, 0, 0.0, "%s: %s" % (type(e).__name__, e)))


def throughput_phase(path, hostport, clients, seconds, total=None):
    """Requests/s of `clients` concurrent clients: for `seconds`, or until
    they have made `total` requests between them."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    share = None if total is None else [total // clients + (i < total % clients)
                                        for i in range(clients)]
    procs = [ctx.Process(target=tput_worker,
                         args=(hostport, path, seconds, share and share[i], i, barrier, results))
             for i in range(clients)]
    for p in procs:
        p.start()
    try:
        barrier.wait(120)
    except Exception:  # noqa: BLE001 - a worker failed before the start
        pass
    try:
        got = [results.get(timeout=seconds + 300) for _ in procs]
    except queue.Empty:
        for p in procs:
            p.kill()
        raise BenchError("throughput %s: a client never finished" % path)
    for p in procs:
        p.join(30)
    errors = [e for _, _, _, e in got if e]
    if errors:
        raise BenchError("throughput %s: %s" % (path, errors[0]))
    return sum(c for _, c, _, _ in got) / max(el for _, _, el, _ in got)


# ---- numbers ----------------------------------------------------------------

def pct(xs, p):
    s = sorted(xs)
    return s[max(math.ceil(p / 100.0 * len(s)) - 1, 0)]


def summary(xs):
    ms = [x * 1000.0 for x in xs]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
            "mean_ms": sum(ms) / len(ms), "min_ms": min(ms), "max_ms": max(ms)}


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version()}


def build_options(build):
    try:
        with open(os.path.join(build, "meson-info", "intro-buildoptions.json")) as f:
            opts = {o["name"]: o["value"] for o in json.load(f)}
        return {k: opts.get(k) for k in ("buildtype", "optimization", "debug", "werror",
                                          "b_sanitize")}
    except (OSError, ValueError, KeyError):
        return {}


def report(res, out):
    w = out.write
    m, b = res["machine"], res["build"]
    w("sovmesh front door bench, %s\n" % res["date"])
    w("machine: %d cpus, %s, Linux %s\n" % (m["cpus"], m["cpu_model"] or "?", m["kernel"]))
    w("build %s (%s); backend %s; daemons' log level %s\n"
      % (res["build_dir"], ", ".join("%s=%s" % kv for kv in b.items()), res["backend"],
         res["log_level"]))
    w("requests per path: latency %d, first chunk %d (peer path: %d and %d)\n\n"
      % (res["n"], res["stream_n"], res["peer_n"], res["peer_stream_n"]))
    for key, title in (("latency", "non-streaming /api/chat, send to whole answer"),
                       ("first_chunk", "streaming /api/chat, send to first chunk")):
        w("%s (ms)\n" % title)
        w("  %-7s %8s %8s %8s %8s   %12s %12s\n"
          % ("path", "p50", "p99", "mean", "min", "added p50", "added p99"))
        d = res[key]["direct"]
        for p in PATHS:
            s = res[key][p]
            add = ("" if p == "direct" else "%+12.3f %+12.3f"
                   % (s["p50_ms"] - d["p50_ms"], s["p99_ms"] - d["p99_ms"]))
            w("  %-7s %8.3f %8.3f %8.3f %8.3f   %s\n"
              % (p, s["p50_ms"], s["p99_ms"], s["mean_ms"], s["min_ms"], add))
        f, pe = res[key]["front"], res[key]["peer"]
        w("  peer hop on top of the front door: %+.3f ms at p50, %+.3f ms at p99\n\n"
          % (pe["p50_ms"] - f["p50_ms"], pe["p99_ms"] - f["p99_ms"]))
    w("throughput, %d concurrent clients, %g s per path (peer path: %d requests), "
      "requests/s\n" % (res["clients"], res["seconds"], res["peer_tput_requests"]))
    for p, rps in res["throughput"].items():
        w("  %-7s %10.0f\n" % (p, rps))
    w("\n")
    for t in res["targets"]:
        w("%s: %s: added %.3f ms at p50 (limit %.1f ms) %s\n"
          % ("PASS" if t["pass"] else "MISS", t["name"], t["added_p50_ms"], t["limit_ms"],
             "[%s]" % t["measure"]))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Latency and throughput of sovmeshd's front "
                                 "door and peer hop against a direct backend.")
    ap.add_argument("--build", default="build", help="meson build dir (default %(default)s)")
    ap.add_argument("--n", type=int, default=2000, help="latency iterations per path "
                    "(default %(default)s)")
    ap.add_argument("--stream-n", type=int, default=None,
                    help="first-chunk iterations per path (default: --n)")
    ap.add_argument("--peer-n", type=int, default=1400,
                    help="latency and first-chunk iterations on the peer path, at most "
                    "--n (default %(default)s; see the replay-cache note above)")
    ap.add_argument("--peer-tput-requests", type=int, default=800,
                    help="requests for the peer path's throughput (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=200, help="requests per path before "
                    "timing (default %(default)s)")
    ap.add_argument("--clients", type=int, default=4,
                    help="concurrent clients for throughput (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=5.0,
                    help="throughput run per path (default %(default)s)")
    ap.add_argument("--tput-paths", default="direct,front,peer",
                    help="paths for the throughput run (default %(default)s)")
    ap.add_argument("--backend", choices=("fast", "standin"), default="fast",
                    help="fast: bench/fast_ollama.py (default); standin: "
                    "tests/fixtures/ollama_standin.py")
    ap.add_argument("--log-level", default="info", help="daemons' node.log_level "
                    "(default %(default)s, the daemon's default)")
    ap.add_argument("--json", action="store_true",
                    help="print the results as JSON on stdout (the table goes to stderr)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    a = ap.parse_args(argv)
    if a.n < 1 or a.warmup < 0 or a.clients < 1 or a.seconds <= 0:
        ap.error("--n and --clients must be >= 1, --warmup >= 0, --seconds > 0")
    tput_paths = [p for p in a.tput_paths.split(",") if p]
    if any(p not in PATHS for p in tput_paths):
        ap.error("--tput-paths wants some of %s" % ",".join(PATHS))
    stream_n = a.stream_n if a.stream_n is not None else a.n
    if stream_n < 1:
        ap.error("--stream-n must be >= 1")
    peer_n = min(a.peer_n, a.n)
    peer_stream_n = min(a.peer_n, stream_n)
    if peer_n < 1 or a.peer_tput_requests < a.clients:
        ap.error("--peer-n must be >= 1 and --peer-tput-requests >= --clients")
    peer_total = (2 * min(a.warmup, PEER_WARMUP) + peer_n + peer_stream_n
                  + ((a.peer_tput_requests + TPUT_WARMUP * a.clients)
                     if "peer" in tput_paths else 0))
    if peer_total > PEER_BUDGET:
        ap.error("the peer path would take %d requests; alpha accepts about %d in 120 s "
                 "(lower --peer-n or --peer-tput-requests)" % (peer_total, PEER_BUDGET))
    build = os.path.abspath(a.build)
    for f in ("core/sovmeshd", "core/sovmesh", "plugins/backend-ollama.so"):
        if not os.path.exists(os.path.join(build, f)):
            ap.error("%s not found: build first (meson setup %s -Dbuildtype=release && "
                     "meson compile -C %s)" % (os.path.join(build, f), a.build, a.build))

    workdir = tempfile.mkdtemp(prefix="sovmesh-bench-")
    backend = None
    started = []
    try:
        if a.backend == "fast":
            cmd = [sys.executable, os.path.join(HERE, "fast_ollama.py"), "--listen",
                   "127.0.0.1:0", "--models", MODEL]
        else:
            cmd = [sys.executable, os.path.join(SOURCE_ROOT, "tests", "fixtures",
                                                "ollama_standin.py"),
                   "--listen", "127.0.0.1:0", "--quiet", "--models", MODEL]
        backend, direct = start_listener(cmd, a.backend + " backend")
        say("backend (%s) on %s" % (a.backend, direct))
        alpha = Node(build, workdir, "alpha", "http://" + direct, a.log_level)
        started.append(alpha)
        bravo = Node(build, workdir, "bravo", None, a.log_level)
        started.append(bravo)
        pair(alpha, bravo)
        addrs = {"direct": direct, "front": alpha.api(), "peer": bravo.api()}
        say("front door %s, peer path via %s; paired" % (addrs["front"], addrs["peer"]))

        res = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
               "build_dir": a.build, "build": build_options(build), "backend": a.backend,
               "log_level": a.log_level, "n": a.n, "stream_n": stream_n,
               "peer_n": peer_n, "peer_stream_n": peer_stream_n,
               "peer_tput_requests": a.peer_tput_requests,
               "warmup": a.warmup, "clients": a.clients, "seconds": a.seconds}
        say("latency, %d per path (peer %d)" % (a.n, peer_n))
        lat = latency_phase(addrs, a.n, peer_n, a.warmup, timed_chat, "latency")
        say("first chunk, %d per path (peer %d)" % (stream_n, peer_stream_n))
        ttfc = latency_phase(addrs, stream_n, peer_stream_n, a.warmup, timed_first_chunk,
                             "first-chunk")
        res["latency"] = {p: summary(lat[p]) for p in PATHS}
        res["first_chunk"] = {p: summary(ttfc[p]) for p in PATHS}
        res["throughput"] = {}
        for p in tput_paths:
            total = a.peer_tput_requests if p == "peer" else None
            say("throughput %s, %d clients, %s" % (p, a.clients, "%d requests" % total
                                                    if total else "%g s" % a.seconds))
            res["throughput"][p] = throughput_phase(p, addrs[p], a.clients, a.seconds, total)
        res["targets"] = []
        for name, plus, minus, limit in TARGETS:
            for measure in ("latency", "first_chunk"):
                added = res[measure][plus]["p50_ms"] - res[measure][minus]["p50_ms"]
                res["targets"].append({"name": name, "measure": measure, "limit_ms": limit,
                                       "added_p50_ms": added, "pass": added < limit})
    except BenchError as e:
        say("frontdoor_bench: %s" % e)
        for n in started:
            say("---- end of %s's log ----\n%s" % (n.name, n.log_text()[-2000:]))
        return 1
    finally:
        for n in started:
            n.stop()
        if backend is not None:
            stop_process(backend)
        shutil.rmtree(workdir, ignore_errors=True)
    report(res, sys.stderr if a.json else sys.stdout)
    if a.json:
        json.dump(res, sys.stdout, indent=1)
        sys.stdout.write("\n")
    missed = [t for t in res["targets"] if not t["pass"]]
    return 1 if a.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
