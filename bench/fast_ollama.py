#!/usr/bin/env python3
"""A fast, canned Ollama API server for benchmarks only (Python 3 stdlib).

The test stand-in (tests/fixtures/ollama_standin.py) is a thread per
connection with per-request logging and knobs; its own latency and jitter
would hide what the bench measures: the time sovmeshd adds. This one is a
single-threaded epoll loop over raw sockets that answers as the stand-in
does (reply "echo: " + the last user message or the prompt, one word per
streamed chunk, hashed-trigram embeddings) with nothing else to do.

  fast_ollama.py --listen 127.0.0.1:0 [--models a,b] [--embed-dim N]

The first line on stdout is "LISTENING host:port"; SIGTERM/SIGINT stop it.
Endpoints: POST /api/chat, /api/generate (streaming NDJSON or
"stream": false), /api/embed, /api/embeddings, /api/show; GET /api/tags,
/api/ps, /api/version, /. No control endpoint, no delays, no failures.
"""
import argparse
import json
import os
import selectors
import signal
import socket
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "fixtures"))
from ollama_standin import canonical, embed, model_entry, words  # noqa: E402

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
CREATED = "2026-01-01T00:00:00Z"


class BadRequest(Exception):
    pass


def response(status, obj, reason="OK", ctype="application/json; charset=utf-8"):
    body = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, reason.encode(), ctype.encode(), len(body))) + body


def error(status, message):
    reasons = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
    return response(status, {"error": message}, reasons.get(status, "Error"))


def stream(objs):
    """Chunked NDJSON, every chunk in one buffer: one send per answer."""
    out = [b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"]
    for o in objs:
        line = json.dumps(o, separators=(",", ":")).encode() + b"\n"
        out.append(b"%x\r\n%s\r\n" % (len(line), line))
    out.append(b"0\r\n\r\n")
    return b"".join(out)


class Server:
    def __init__(self, models, embed_dim):
        self.models = {canonical(m): model_entry(canonical(m)) for m in models}
        for e in self.models.values():
            e.pop("_adapters", None)
        self.embed_dim = embed_dim

    # ---- answers --------------------------------------------------------

    def answer(self, method, path, body):
        if method == "GET" and path == "/":
            return response(200, b"Ollama is running", ctype="text/plain; charset=utf-8")
        if method == "GET" and path == "/api/version":
            return response(200, {"version": "0.5.7"})
        if method == "GET" and path == "/api/tags":
            return response(200, {"models": list(self.models.values())})
        if method == "GET" and path == "/api/ps":
            return response(200, {"models": []})
        if method != "POST" or path not in ("/api/chat", "/api/generate", "/api/embed",
                                            "/api/embeddings", "/api/show"):
            return response(404, b"404 page not found", "Not Found",
                            "text/plain; charset=utf-8")
        try:
            req = json.loads(body) if body else None
        except ValueError as e:
            return error(400, "invalid character in request body: %s" % e)
        if not isinstance(req, dict):
            return error(400, "missing request body")
        model = req.get("model") or req.get("name")
        if not isinstance(model, str) or not model:
            return error(400, "model is required")
        if canonical(model) not in self.models:
            return error(404, 'model "%s" not found, try pulling it first' % model)
        if path == "/api/show":
            return response(200, {"modelfile": "FROM %s\n" % model, "parameters": "",
                                  "template": "{{ .Prompt }}",
                                  "details": self.models[canonical(model)]["details"],
                                  "capabilities": ["completion", "embedding"]})
        if path == "/api/embed":
            inp = req.get("input", [])
            inp = [inp] if isinstance(inp, str) else inp
            if not isinstance(inp, list) or not all(isinstance(x, str) for x in inp):
                return error(400, "invalid input type")
            return response(200, {"model": model,
                                  "embeddings": [embed(x, self.embed_dim) for x in inp]})
        if path == "/api/embeddings":
            p = req.get("prompt", "")
            return response(200, {"embedding": embed(p, self.embed_dim) if p else []})
        return self.generate(req, model, path == "/api/chat")

    def generate(self, req, model, chat):
        if chat:
            last = ""
            for m in req.get("messages") or []:
                if isinstance(m, dict) and m.get("role") == "user":
                    last = m.get("content") if isinstance(m.get("content"), str) else last
        else:
            last = req.get("prompt") if isinstance(req.get("prompt"), str) else ""
        pieces = words("echo: " + last)

        def shape(text, done):
            o = {"model": model, "created_at": CREATED}
            if chat:
                o["message"] = {"role": "assistant", "content": text}
            else:
                o["response"] = text
            o["done"] = done
            return o

        stats = {"done_reason": "stop", "total_duration": 1000, "load_duration": 1,
                 "prompt_eval_count": 1, "prompt_eval_duration": 1,
                 "eval_count": len(pieces), "eval_duration": 1}
        if req.get("stream", True) is False:
            whole = shape("".join(pieces), True)
            whole.update(stats)
            return response(200, whole)
        final = shape("", True)
        final.update(stats)
        return stream([shape(p, False) for p in pieces] + [final])

    # ---- HTTP/1.1 over raw sockets ---------------------------------------

    @staticmethod
    def parse(buf):
        """One complete request from buf: (method, path, body, rest, close)
        or None if more bytes are needed."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise BadRequest("header too large")
            return None
        lines = buf[:end].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise BadRequest("bad request line")
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            k, sep, v = line.partition(":")
            if not sep:
                raise BadRequest("bad header line")
            headers[k.strip().lower()] = v.strip()
        close = (headers.get("connection", "").lower() == "close"
                 or version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive")
        pos = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(buf[pos:eol].split(b";")[0] or b"0", 16)
                if size == 0:  # then trailers, if any, and an empty line
                    trailer_end = buf.find(b"\r\n\r\n", eol)
                    if trailer_end < 0:
                        return None
                    pos = trailer_end + 4
                    break
                if len(buf) < eol + 2 + size + 2:
                    return None
                body += buf[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
                if len(body) > MAX_BODY:
                    raise BadRequest("body too large")
        else:
            n = int(headers.get("content-length") or 0)
            if n > MAX_BODY:
                raise BadRequest("body too large")
            if len(buf) < pos + n:
                return None
            body = buf[pos:pos + n]
            pos += n
        return method, target.split("?", 1)[0], body, buf[pos:], close

    def serve(self, listener):
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, None)
        conns = {}  # socket -> [inbuf, outbuf, close_after]
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        while not stop:
            for key, ev in sel.select(0.5):
                s = key.fileobj
                if s is listener:
                    try:
                        c, _ = listener.accept()
                    except OSError:
                        continue
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[c] = [b"", b"", False]
                    sel.register(c, selectors.EVENT_READ, None)
                    continue
                st = conns[s]
                if ev & selectors.EVENT_READ:
                    try:
                        data = s.recv(262144)
                    except (BlockingIOError, InterruptedError):
                        data = None
                    except OSError:
                        data = b""
                    if data == b"":
                        self.drop(sel, conns, s)
                        continue
                    if data:
                        st[0] += data
                        self.handle(st)
                if ev & selectors.EVENT_WRITE or st[1]:
                    if not self.flush(sel, conns, s, st):
                        continue
        for s in list(conns):
            self.drop(sel, conns, s)

    def handle(self, st):
        while not st[2]:
            try:
                got = self.parse(st[0])
            except (BadRequest, ValueError) as e:
                st[1] += error(400, str(e))
                st[0], st[2] = b"", True
                return
            if got is None:
                return
            method, path, body, st[0], close = got
            st[1] += self.answer(method, path, body)
            st[2] = close

    def flush(self, sel, conns, s, st):
        """Write what is pending; False if the connection was dropped."""
        try:
            n = s.send(st[1])
            st[1] = st[1][n:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.drop(sel, conns, s)
            return False
        if not st[1] and st[2]:
            self.drop(sel, conns, s)
            return False
        sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if st[1] else 0), None)
        return True

    @staticmethod
    def drop(sel, conns, s):
        sel.unregister(s)
        conns.pop(s, None)
        s.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="Fast canned Ollama API server (benchmarks).")
    p.add_argument("--listen", default="127.0.0.1:0", help="host:port; port 0 picks one")
    p.add_argument("--models", default="llama3.2", help="comma-separated model names")
    p.add_argument("--embed-dim", type=int, default=768)
    a = p.parse_args(argv)
    host, sep, port = a.listen.rpartition(":")
    if not sep or not port.isdigit():
        p.error("--listen wants host:port, got %r" % a.listen)
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        ls.bind((host, int(port)))
    except OSError as e:
        sys.stderr.write("fast_ollama: cannot listen on %s: %s\n" % (a.listen, e))
        return 1
    ls.listen(512)
    ls.setblocking(False)
    bound = ls.getsockname()[1]
    sys.stdout.write("LISTENING %s\n" % (("[%s]:%d" if ":" in host else "%s:%d") % (host, bound)))
    sys.stdout.flush()
    Server([m for m in a.models.split(",") if m], a.embed_dim).serve(ls)
    ls.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
