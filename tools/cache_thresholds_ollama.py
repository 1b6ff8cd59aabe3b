#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Pick cache-semantic similarity thresholds for an Ollama embedding model.

tools/cache_thresholds does this for the cache's built-in embedding; this
does the same for `cache.embedding_model`: it embeds every question of a
labelled pair file (default tests/data/paraphrase_pairs.tsv) with the
model through Ollama's /api/embed, computes each pair's cosine similarity,
sweeps the threshold from 0.00 to 1.00 in steps of 0.01 ("same question"
when similarity >= threshold) and picks, by the same rules:

  hit        the lowest threshold with precision >= --min-precision (0.95)
             -> cache.model_hit_similarity
  near miss  below the hit threshold, the highest threshold whose F1 is
             within 0.01 of the best F1 there
             -> cache.model_near_miss_similarity

Python 3 standard library only.  docs/cache-thresholds.md explains it.

    tools/cache_thresholds_ollama.py --model nomic-embed-text
    tools/cache_thresholds_ollama.py --url http://127.0.0.1:11434 --model all-minilm --json
"""
import argparse
import json
import math
import os
import sys
import urllib.error
import urllib.request

PROG = "cache_thresholds_ollama"
STEPS = 100
F1_TOLERANCE = 0.01
DEFAULT_PAIRS = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                              "tests", "data", "paraphrase_pairs.tsv"))


class Failure(Exception):
    """A one-line error for the user; .code is the exit status."""

    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code


def read_pairs(path):
    """[(label, q1, q2)] from the TSV; Failure(code 2) names file and line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise Failure("%s: cannot open: %s" % (path, e.strerror or e), 2)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Failure("%s: not UTF-8 (byte %d)" % (path, e.start), 2)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise Failure('%s:1: empty file (expected the header "label<TAB>q1<TAB>q2")' % path, 2)
    pairs = []
    for no, line in enumerate(lines, 1):
        line = line[:-1] if line.endswith("\r") else line
        if no == 1:
            if line != "label\tq1\tq2":
                raise Failure('%s:1: the header must be "label<TAB>q1<TAB>q2"' % path, 2)
            continue
        if line == "":
            continue
        f = line.split("\t")
        if len(f) != 3:
            raise Failure("%s:%d: expected 3 tab-separated fields: label, q1, q2" % (path, no), 2)
        if f[0] not in ("0", "1"):
            raise Failure("%s:%d: the label must be 0 or 1" % (path, no), 2)
        if not f[1] or not f[2]:
            raise Failure("%s:%d: empty question" % (path, no), 2)
        pairs.append((int(f[0]), f[1], f[2]))
    npos = sum(p[0] for p in pairs)
    if npos == 0 or npos == len(pairs):
        raise Failure("%s: needs pairs labelled 1 and pairs labelled 0" % path, 2)
    return pairs


def embed_all(url, model, texts, batch, timeout, prefix):
    """{text: unit vector} from POST {url}/api/embed, `batch` texts a call."""
    out = {}
    dim = None
    endpoint = url.rstrip("/") + "/api/embed"
    for i in range(0, len(texts), batch):
        chunk = texts[i:i + batch]
        body = json.dumps({"model": model, "input": [prefix + t for t in chunk]}).encode()
        req = urllib.request.Request(endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as e:
            msg = e.read().decode("utf-8", "replace").strip()
            try:
                msg = json.loads(msg).get("error", msg)
            except (ValueError, AttributeError):
                pass
            raise Failure("%s: HTTP %d: %s" % (endpoint, e.code, msg or e.reason))
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Failure("cannot reach Ollama at %s: %s" % (url, reason))
        except ValueError:
            raise Failure("%s: the reply is not JSON" % endpoint)
        vecs = reply.get("embeddings") if isinstance(reply, dict) else None
        if not isinstance(vecs, list) or len(vecs) != len(chunk):
            raise Failure("%s: expected %d embeddings in the reply, got %s" %
                          (endpoint, len(chunk), len(vecs) if isinstance(vecs, list) else "none"))
        for t, v in zip(chunk, vecs):
            if (not isinstance(v, list) or not v or
                    not all(isinstance(x, (int, float)) for x in v)):
                raise Failure("%s: an embedding is not a list of numbers" % endpoint)
            if dim is None:
                dim = len(v)
            elif len(v) != dim:
                raise Failure("%s: embeddings of different lengths (%d, %d)" %
                              (endpoint, dim, len(v)))
            n = math.sqrt(sum(x * x for x in v))
            out[t] = [x / n for x in v] if n > 0 else [0.0] * len(v)
    return out, dim


def sweep(pairs, sims):
    rows = []
    for t in range(STEPS + 1):
        thr = t / STEPS
        tp = fp = fn = tn = 0
        for (label, _, _), s in zip(pairs, sims):
            pred = s >= thr
            if pred and label:
                tp += 1
            elif pred:
                fp += 1
            elif label:
                fn += 1
            else:
                tn += 1
        rows.append({
            "threshold": round(thr, 2), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        })
    return rows


def pick(rows, min_precision):
    """(hit index or None, near-miss index or None), the rules above."""
    hit = next((t for t, r in enumerate(rows)
                if r["precision"] is not None and r["precision"] >= min_precision), None)
    if hit is None or hit == 0:
        return hit, None
    best = max(rows[t]["f1"] for t in range(hit))
    near = max(t for t in range(hit) if rows[t]["f1"] >= best - F1_TOLERANCE - 1e-12)
    return hit, near


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog=PROG, description="Sweep cache-semantic similarity thresholds for an Ollama "
        "embedding model over labelled question pairs.")
    ap.add_argument("--url", default="http://127.0.0.1:11434",
                    help="Ollama's base URL (default %(default)s)")
    ap.add_argument("--model", required=True, help="embedding model, e.g. nomic-embed-text")
    ap.add_argument("--pairs", default=DEFAULT_PAIRS,
                    help="TSV of label, q1, q2 with a header line (default: the project's "
                    "tests/data/paraphrase_pairs.tsv)")
    ap.add_argument("--min-precision", type=float, default=0.95,
                    help="precision the hit threshold needs (default %(default)s)")
    ap.add_argument("--prefix", default="",
                    help="text put before every question, if the model wants a task prefix; "
                    "use what the cache sends (it sends none)")
    ap.add_argument("--batch", type=int, default=32, help="questions per request")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--scores", action="store_true",
                    help="also list every pair's similarity, highest first")
    a = ap.parse_args(argv)
    try:
        if not 0.0 < a.min_precision <= 1.0:
            raise Failure("--min-precision must be in (0, 1], not %s" % a.min_precision, 2)
        if a.batch < 1 or a.timeout <= 0:
            raise Failure("--batch and --timeout must be positive", 2)
        pairs = read_pairs(a.pairs)
        texts = list(dict.fromkeys(q for _, q1, q2 in pairs for q in (q1, q2)))
        vecs, dim = embed_all(a.url, a.model, texts, a.batch, a.timeout, a.prefix)
        sims = [sum(x * y for x, y in zip(vecs[q1], vecs[q2])) for _, q1, q2 in pairs]
    except Failure as e:
        print("%s: %s" % (PROG, e), file=sys.stderr)
        return e.code

    rows = sweep(pairs, sims)
    hit, near = pick(rows, a.min_precision)
    npos = sum(p[0] for p in pairs)
    hit_rule = "lowest threshold with precision >= %.2f" % a.min_precision
    near_rule = ("highest below the hit threshold with F1 within %.2f of the best there"
                 % F1_TOLERANCE)

    def pick_obj(t, rule):
        if t is None:
            return None
        r = rows[t]
        return {"threshold": r["threshold"], "precision": round(r["precision"], 4),
                "recall": round(r["recall"], 4), "f1": round(r["f1"], 4), "rule": rule}

    if a.json:
        out = {
            "embedding": "ollama", "url": a.url, "model": a.model, "dim": dim,
            "pairs": len(pairs), "positives": npos, "negatives": len(pairs) - npos,
            "min_precision": a.min_precision,
            "sweep": [dict(r, precision=None if r["precision"] is None else round(r["precision"], 4),
                           recall=round(r["recall"], 4), f1=round(r["f1"], 4)) for r in rows],
            "hit": pick_obj(hit, hit_rule),
            "near_miss": pick_obj(near, near_rule),
        }
        print(json.dumps(out, indent=2))
    else:
        print("%s at %s (dim %d): %d pairs (%d paraphrases, %d not) from %s\n" %
              (a.model, a.url, dim, len(pairs), npos, len(pairs) - npos, a.pairs))
        print("threshold    tp    fp    fn    tn  precision  recall     F1")
        for r in rows:
            p = "%9.3f" % r["precision"] if r["precision"] is not None else "        -"
            print("     %.2f  %4d  %4d  %4d  %4d  %s  %6.3f  %5.3f" %
                  (r["threshold"], r["tp"], r["fp"], r["fn"], r["tn"], p, r["recall"], r["f1"]))
        print()
        for name, t, rule in (("hit threshold:", hit, hit_rule),
                              ("near-miss threshold:", near, near_rule)):
            if t is None:
                print("%-21s none (%s)" % (name, rule))
            else:
                r = rows[t]
                print("%-21s %.2f  precision %.3f, recall %.3f, F1 %.3f  (%s)" %
                      (name, r["threshold"], r["precision"], r["recall"], r["f1"], rule))
        if a.scores:
            print("\nsimilarity  label  q1 | q2")
            for (label, q1, q2), s in sorted(zip(pairs, sims), key=lambda x: -x[1]):
                print("    %.4f      %d  %s | %s" % (s, label, q1, q2))
    if hit is None:
        print("%s: no threshold reaches precision %.2f on %s" % (PROG, a.min_precision, a.pairs),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
