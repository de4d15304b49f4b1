"""Acceptance of preference tuning on users' ratings: a scripted rater rates the answers of a
running ragtune server for their citation markers, kto and dpo train on that feedback, and the
eval gate compares each tuned adapter with today's generator on the Debian FAQ en questions.

Phases (each one's output is kept under ``--data-dir``; a rerun skips what is done):

1. questions: extractive questions synthesised from the indexed Debian documents
   (``tuner.synth.extractive_pairs``), each with the chunk it came from; any question that is
   also a Debian FAQ question (normalised) is dropped, so the eval never asks what the rater did.
2. rate: ``ragtune serve`` on loopback; every question is asked through ``POST /v1/query``
   (mode rag, k 3, 64 tokens) ``--samples`` times (greedy, then sampled at temperature 0.8), and
   each answer is rated through ``POST /v1/feedback``: up when it carries a ``[n]`` marker and
   every passage it marks supports it (the question's source chunk, or at least half the
   answer's content words are in it), down otherwise. ``--correct-share`` of the down-rated
   answers get a correction: the answer as written, its markers removed and the right one (the
   source chunk's passage, else the passage that best supports the answer) at the end of its
   first sentence or line. The rater knows only what the server shows (answer, citations)
   and its own question.
3. tune: ``ragtune tune --recipe configs/kto-feedback.yaml`` and ``configs/dpo-feedback.yaml``
   on that feedback (the answer log's ratings, prompts rebuilt as served), timed.
4. gate: ``ragtune eval --gate <adapter>`` on the Debian FAQ en (147 questions): today's
   generator (rag on the base model) against the adapter (hybrid: the same passages, the
   adapter's weights), paired bootstrap per answer metric, and the held-out reward accuracy.

Reports, per method: the share of answers with a valid marker (a ``[n]`` naming a passage in
the prompt), citation precision, token F1 with its paired interval, data sizes, training time,
and the gate's verdict. Writes benchmarks/results/feedback_acceptance.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/feedback_acceptance.py \\
        --data-dir data/bench17 --seed-from data/bench16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.answers import cited, groundedness  # noqa: E402

RAGTUNE = str(Path(sys.executable).parent / "ragtune")
SUPPORT = 0.5  # share of an answer's content words a passage must hold to support it
MARKER = re.compile(r" ?\[\d{1,2}\]")
NUMBER = re.compile(r"\[(\d{1,3})\]")
PARTIAL = re.compile(r"\s*\[\d{0,2}$")  # a marker the token limit cut in half
FIRST_END = re.compile(r"[.!?](?=\s|$)|\n")  # the end of the first sentence, or line


def env(args: argparse.Namespace, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAGTUNE_DATA_DIR": str(args.data_dir),
        "RAGTUNE_AUTH_DISABLED": "1",
        "RAGTUNE_LIMITS__RATE_LIMIT_PER_MINUTE": "0",
        **extra,
    }


# ---- 1. questions ---------------------------------------------------------------------------
def seed_data_dir(args: argparse.Namespace) -> None:
    if (args.data_dir / "index").is_dir():
        return
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.seed_from and (args.seed_from / "index").is_dir():
        shutil.copytree(args.seed_from / "index", args.data_dir / "index")
        models = args.seed_from / "models"
        if models.is_dir() and not (args.data_dir / "models").exists():
            (args.data_dir / "models").symlink_to(models.resolve())
        (args.data_dir / "index" / "index.lock").unlink(missing_ok=True)
        return
    docs = args.faq / "documents"
    subprocess.run([RAGTUNE, "ingest", str(docs)], env=env(args), check=True)


def questions(args: argparse.Namespace) -> list[dict[str, Any]]:
    path = args.data_dir / "rater-questions.jsonl"
    if path.is_file():
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    os.environ["RAGTUNE_DATA_DIR"] = str(args.data_dir)
    from service.loading import open_retriever
    from service.settings import Settings
    from tuner import synth

    faq = {
        synth.normalize(json.loads(line)["text"])
        for line in (args.faq / "queries.jsonl").read_text().splitlines()
        if line.strip()
    }
    retriever = open_retriever(Settings())
    try:
        chunks = synth.index_chunks(retriever)
    finally:
        retriever.close()
    pairs = synth.extractive_pairs(chunks, args.questions * 2, seed=args.seed)
    kept = [p for p in pairs if synth.normalize(p.question) not in faq][: args.questions]
    rows = [
        {"question": p.question, "doc_id": p.doc_id, "chunk_id": p.chunk_id, "answer": p.answer}
        for p in kept
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"questions: {len(rows)} synthesised ({len(pairs) - len(kept)} dropped or spare)")
    return rows


# ---- 2. rate ----------------------------------------------------------------------------------
def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (args.data_dir / "rater-server.log").open("ab")
    proc = subprocess.Popen(
        [RAGTUNE, "serve", "--port", str(port)],
        env=env(args, RAGTUNE_LOG_LEVEL="warning"),
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server exited during startup (rater-server.log)")
        time.sleep(1)
    proc.terminate()
    raise SystemExit("the server did not become ready")


def supports(answer: str, passage: dict[str, Any], q: dict[str, Any]) -> bool:
    if passage.get("chunk_id") == q["chunk_id"] and passage.get("doc_id") == q["doc_id"]:
        return True
    g = groundedness(answer, [passage["text"]])
    return g is not None and g >= SUPPORT


def rate(answer: str, citations: list[dict[str, Any]], q: dict[str, Any]) -> str:
    """Up when the answer marks passages, every marked passage supports it and no marker names
    a passage that was not shown."""
    marks = cited(answer, len(citations))
    named = {int(m) for m in NUMBER.findall(answer)}
    ok = bool(marks) and named <= set(marks)
    ok = ok and all(supports(answer, citations[n - 1], q) for n in marks)
    return "up" if ok else "down"


def correct(answer: str, citations: list[dict[str, Any]], q: dict[str, Any]) -> str | None:
    """The answer, as written, with its markers removed and the right one put at the end of its
    first sentence (or line); None when no passage supports it."""
    text = PARTIAL.sub("", MARKER.sub("", answer)).strip()
    if not text:
        return None
    right = next(
        (
            i
            for i, c in enumerate(citations, 1)
            if c.get("chunk_id") == q["chunk_id"] and c.get("doc_id") == q["doc_id"]
        ),
        None,
    )
    if right is None:
        scored = [(groundedness(text, [c["text"]]) or 0.0, i) for i, c in enumerate(citations, 1)]
        best = max(scored, default=(0.0, 0))
        right = best[1] if best[0] >= SUPPORT else None
    if right is None:
        return None
    end = FIRST_END.search(text)
    if end is None:  # one unfinished sentence: the marker goes after it
        return f"{text} [{right}]"
    at = end.start()
    return f"{text[:at]} [{right}]{text[at:]}"


def ratings_path(args: argparse.Namespace) -> Path:
    suffix = f"-r2-{args.round2}" if args.round2 else ""
    return args.data_dir / f"rater-ratings{suffix}.jsonl"


def rate_all(args: argparse.Namespace, qs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rate today's generator (rag on the base model), or with ``--round2`` the answers of the
    adapter a first round trained (hybrid: the same retrieval, the adapter's weights)."""
    path = ratings_path(args)
    since = path.with_suffix(".since")
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {**summarise_ratings(rows, reused=True), "since": float(since.read_text())}
    since.write_text(repr(time.time()))
    proc, url = start_server(args)
    rng = random.Random(args.seed)
    jobs = [(i, s) for i in range(len(qs)) for s in range(args.samples)]
    fix = {j: rng.random() < args.correct_share for j in jobs}
    started = time.perf_counter()

    model = args.round2 or httpx.get(f"{url}/v1/models", timeout=30).json()["data"][0]["id"]
    tuned = {"mode": "hybrid", "adapter": args.round2} if args.round2 else {"mode": "rag"}

    def ask(client: httpx.Client, q: dict[str, Any], i: int, s: int) -> dict[str, Any]:
        """Sample 0 greedy through /v1/query; the others sampled through the chat API."""
        if not s:
            body = {
                "question": q["question"],
                **tuned,
                "k": args.k,
                "max_new_tokens": args.max_new_tokens,
            }
            r = client.post(f"{url}/v1/query", json=body)
            r.raise_for_status()
            return dict(r.json())
        body = {
            "model": model,
            "messages": [{"role": "user", "content": q["question"]}],
            "max_tokens": args.max_new_tokens,
            "temperature": 0.8,
            "seed": args.seed * 1000 + i * 10 + s,
            "retrieval": {"k": args.k},
        }
        r = client.post(f"{url}/v1/chat/completions", json=body)
        r.raise_for_status()
        out = r.json()
        text = out["choices"][0]["message"]["content"]
        return {"id": out["id"], "answer": text, "citations": out["citations"]}

    def one(job: tuple[int, int]) -> dict[str, Any]:
        i, s = job
        q = qs[i]
        with httpx.Client(timeout=600) as client:
            out = ask(client, q, i, s)
            rating = rate(out["answer"], out["citations"], q)
            correction = None
            if rating == "down" and fix[job]:
                correction = correct(out["answer"], out["citations"], q)
            feedback = {"answer_id": out["id"], "rating": rating}
            if correction:
                feedback["correction"] = correction
            f = client.post(f"{url}/v1/feedback", json=feedback)
            f.raise_for_status()
        return {
            "question": i,
            "sample": s,
            "answer_id": out["id"],
            "answer": out["answer"],
            "rating": rating,
            "correction": correction,
        }

    try:
        with ThreadPoolExecutor(args.clients) as pool:
            rows = []
            for n, row in enumerate(pool.map(one, jobs), 1):
                rows.append(row)
                if n % 50 == 0:
                    print(
                        f"rated {n}/{len(jobs)} ({time.perf_counter() - started:.0f} s)", flush=True
                    )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = summarise_ratings(rows)
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["since"] = float(since.read_text())
    return out


def all_ratings(args: argparse.Namespace) -> dict[str, Any]:
    """Every round's ratings, as kept by earlier runs: what an ``--all-rounds`` adapter trains on
    (the answer log holds them all; its recipe has no ``since``)."""
    rounds = {}
    for path in sorted(args.data_dir.glob("rater-ratings*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rounds[path.stem] = summarise_ratings(rows, reused=True)
    if not rounds:
        raise SystemExit("--all-rounds: no ratings yet; run a first round")
    return {"rounds": rounds}


def summarise_ratings(rows: list[dict[str, Any]], reused: bool = False) -> dict[str, Any]:
    up = sum(r["rating"] == "up" for r in rows)
    return {
        "answers": len(rows),
        "up": up,
        "down": len(rows) - up,
        "corrections": sum(bool(r["correction"]) for r in rows),
        "reused": reused,
    }


# ---- 3. tune, 4. gate ---------------------------------------------------------------------------
def run(cmd: list[str], args: argparse.Namespace, log: Path) -> float:
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, env=env(args), stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[1:3])} failed; see {log}")
    return time.perf_counter() - started


def round2_recipe(args: argparse.Namespace, method: str, since: float) -> Path:
    """The method's feedback recipe continuing the first round's adapter, on the ratings of its
    own answers only (those given since the second round began)."""
    import yaml

    recipe = yaml.safe_load((ROOT / "configs" / f"{method}-feedback.yaml").read_text())
    recipe["parent"] = args.round2
    recipe["datasets"] = [{"feedback": {"corrections": True, "since": since}}]
    path = args.data_dir / f"{method}-feedback-r2.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def round_tag(args: argparse.Namespace) -> str:
    return "r2" if args.round2 else "all" if args.all_rounds else ""


def tune(args: argparse.Namespace, method: str, since: float | None = None) -> dict[str, Any]:
    from tuner.registry import Registry

    registry = Registry(args.data_dir / "adapters")
    name = f"bench-{method}-{round_tag(args)}" if round_tag(args) else f"bench-{method}"
    found = [r for r in registry.list() if r.name == name]
    if found and not args.again:
        record = max(found, key=lambda r: r.version)
        seconds = None
    else:
        recipe = ROOT / "configs" / f"{method}-feedback.yaml"
        if args.round2:
            assert since is not None
            recipe = round2_recipe(args, method, since)
        log = args.data_dir / f"tune-{name}.log"
        seconds = run(
            [
                RAGTUNE,
                "tune",
                "--recipe",
                str(recipe),
                "--fresh",
                "--set",
                f"name={name}",
                *sum((["--set", s] for s in args.set), []),
            ],
            args,
            log,
        )
        record = max((r for r in registry.list() if r.name == name), key=lambda r: r.version)
    manifest_path = args.data_dir / "jobs" / f"cli-{name}" / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    m = record.metrics
    return {
        "adapter": record.id,
        "parent": record.parent,
        "rows": {
            "train": manifest.get("train"),
            "val": manifest.get("val"),
            "held_out": manifest.get("test"),
        },
        "feedback_ids": len(record.feedback_ids),
        "skipped": manifest.get("skipped"),
        "updates": m.get("updates"),
        "train_seconds": m.get("seconds"),
        "wall_seconds": round(seconds, 1) if seconds else None,
        "reward_accuracy": (m.get("reward") or {}).get("accuracy"),
        "probe": {k: v for k, v in (m.get("probe") or {}).items() if k not in ("before", "after")},
    }


def gate(args: argparse.Namespace, adapter: str) -> dict[str, Any]:
    out = args.data_dir / "evals" / f"gate-{adapter}"
    if not (out / "gate.json").is_file() or args.again:
        run(
            [
                RAGTUNE,
                "eval",
                "--dataset",
                str(args.faq),
                "--gate",
                adapter,
                "--out",
                str(out),
                "--no-probes",
            ],
            args,
            args.data_dir / f"gate-{adapter}.log",
        )
    result = json.loads((out / "gate.json").read_text())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    result["measured"] = {mode: measures(rows, mode) for mode in sorted({r["mode"] for r in rows})}
    return result


def against_base(args: argparse.Namespace, adapter: str) -> dict[str, Any]:
    """A second round's adapter (hybrid) against today's generator (rag on the base model, as
    the first round's gate measured it): the paired bootstrap of the gate, per answer metric."""
    from eval import stats

    def rows(path: Path, mode: str) -> dict[str, dict[str, Any]]:
        got = [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]
        return {r["query_id"]: r for r in got if r["mode"] == mode}

    gates = sorted((args.data_dir / "evals").glob("gate-*"))
    base = next((got for g in gates if (got := rows(g, "rag"))), {})  # a first round's gate
    tuned = rows(args.data_dir / "evals" / f"gate-{adapter}", "hybrid")
    ids = sorted(set(base) & set(tuned))
    draws = stats.resample_indices(len(ids), 10_000, args.seed)
    out = {}
    for metric in ("token_f1", "rouge_l", "groundedness", "citation_precision", "valid_marker"):
        a = [base[i]["metrics"].get(metric) for i in ids]
        b = [tuned[i]["metrics"].get(metric) for i in ids]
        out[metric] = stats.paired(a, b, draws)
    return out


def measures(rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    mine = [r for r in rows if r["mode"] == mode]

    def mean(key: str) -> float | None:
        vals = [r["metrics"][key] for r in mine if r["metrics"].get(key) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    return {
        "questions": len(mine),
        "valid_marker": mean("valid_marker"),
        "citation_precision": mean("citation_precision"),
        "token_f1": mean("token_f1"),
        "rouge_l": mean("rouge_l"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "bench17")
    parser.add_argument("--seed-from", type=Path, help="a data dir whose index and models to copy")
    parser.add_argument("--faq", type=Path, default=ROOT / "data" / "debian-faq-en")
    parser.add_argument("--questions", type=int, default=300, help="rater questions")
    parser.add_argument("--samples", type=int, default=2, help="answers asked per question")
    parser.add_argument("--correct-share", type=float, default=0.6)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--methods", default="dpo,kto")
    parser.add_argument("--set", action="append", default=[], help="recipe override (both)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--again", action="store_true", help="retrain and re-gate")
    parser.add_argument("--stop-after", choices=("questions", "rate", "tune"))
    parser.add_argument(
        "--round2",
        metavar="ADAPTER",
        help="a second round: rate this first-round adapter's answers, tune on those from it",
    )
    parser.add_argument(
        "--all-rounds",
        action="store_true",
        help="tune one adapter from the base model on every round's ratings (no rating)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "feedback_acceptance.json"
    )
    args = parser.parse_args()
    if args.round2 and args.all_rounds:
        parser.error("--round2 and --all-rounds are two different runs")
    args.data_dir = args.data_dir.resolve()
    seed_data_dir(args)
    qs = questions(args)
    report: dict[str, Any] = {
        "questions": len(qs),
        "samples": args.samples,
        "correct_share": args.correct_share,
    }
    if args.stop_after == "questions":
        return
    report["ratings"] = all_ratings(args) if args.all_rounds else rate_all(args, qs)
    print("ratings:", report["ratings"], flush=True)
    if args.stop_after == "rate":
        return
    report["methods"] = {}
    for method in args.methods.split(","):
        key = {"r2": f"{method}-round2", "all": f"{method}-all-rounds"}.get(round_tag(args), method)
        since = report["ratings"].get("since")
        report["methods"][key] = tuned = tune(args, method, since)
        print(method, json.dumps(tuned), flush=True)
        if args.stop_after == "tune":
            continue
        tuned["gate"] = gate(args, tuned["adapter"])
        print(method, "gate:", json.dumps(tuned["gate"]["measured"]), flush=True)
        if args.all_rounds:
            tuned["all_ratings"] = report["ratings"]
        if args.round2:
            tuned["against_base"] = against_base(args, tuned["adapter"])
            tuned["round2_ratings"] = report["ratings"]
            print(method, "against base:", json.dumps(tuned["against_base"]), flush=True)
    if (args.round2 or args.all_rounds) and args.out.is_file():  # the first round's stay
        report["ratings"] = json.loads(args.out.read_text()).get("ratings", report["ratings"])
    if args.out.is_file():  # methods run in separate invocations share one results file
        before = json.loads(args.out.read_text())
        report["methods"] = {**before.get("methods", {}), **report["methods"]}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
