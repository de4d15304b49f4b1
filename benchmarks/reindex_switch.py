"""Query availability and latency while the live index is re-embedded and switched.

Ingests the English Debian FAQ dataset (FAQ answers plus Debian Reference sections) with the
default embedder into an index kept under ``--cache`` (so the dataset is embedded once, not per
run) and copies that into a fresh temporary index. Then ``--threads`` query threads (hybrid, k=10,
cycling over the FAQ questions, ``--qps`` each; 0 for back to back) and one writer thread (a new
one-chunk document every ~0.2 s, a delete every fifth tick, alternately of a bench document and
of an original one) run through three phases: ``before`` (``--before-s`` seconds), ``during``
(``Retriever.reindex`` into a shadow space, ending with its switch) and ``after`` (``--after-s``
seconds).

The target embedder is the same all-MiniLM-L6-v2 weights behind a wrapper whose ``identity``
carries ``"adapter": "bench-shadow"``, so it names another vector space and every chunk is
re-embedded at exactly the cost of a fine-tuned MiniLM (fully tuned, or a LoRA merged into the
weights; an unmerged LoRA adds a little per forward pass).

Per phase it reports queries served and failed, availability, latency percentiles, the longest
gap between two consecutive query completions (the worst pause a client saw) and the writes; for
the switch, its duration and how long it held the lock that blocks searches. After the switch it
checks that every live document written during the run is the top dense hit for its own text and
that every deleted document is gone. Prints a table, writes
benchmarks/results/reindex_switch.json and a latency-over-time plot reindex_switch.png.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/reindex_switch.py --threads 2 --qps 4

On a shared 2-core machine the run is CPU-bound: the re-embedding, the searches and the writer
all encode with the same model, so "during" latencies rise with the load and the reindex takes
longer than the same work alone; the load average at the start is recorded in the settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from retriever.embedder import Embedder, load_embedder
from retriever.index import DocumentIn, Retriever

log = logging.getLogger("reindex_switch")
PHASES = ("before", "during", "after")
K = 10
MODE = "hybrid"
WRITE_EVERY_S = 0.2  # the writer's cadence
DELETE_EVERY = 5  # one delete per this many writer ticks
RESULTS = Path(__file__).parent / "results"


# ---- data and models ------------------------------------------------------------------------
def load_dataset(data_root: Path, lang: str = "en") -> Path:
    out = data_root / f"debian-faq-{lang}"
    if not (out / "queries.jsonl").exists():
        log.info("building %s", out)
        subprocess.run(
            [sys.executable, "-m", "eval", "data", "debian-faq", "--lang", lang, "--out", str(out)],
            check=True,
        )
    return out


def read_jsonl(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.open()]


class ShadowEmbedder:
    """The same weights under another identity: a new vector space at a fine-tuned model's cost."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.languages = inner.languages
        self._identity = {**inner.identity, "adapter": "bench-shadow"}

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def identity(self) -> dict[str, Any]:
        return self._identity

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.inner.encode(texts)  # (len(texts), dim)


def fresh_texts(docs: list[dict[str, Any]], seed: int) -> Iterator[str]:
    """Endless distinct one-chunk texts of corpus words, so each is its own nearest neighbour."""
    words = sorted({w.lower() for d in docs for w in re.findall(r"[A-Za-z]{4,12}", d["text"])})
    rng = random.Random(seed)
    n = 0
    while True:
        yield f"Bench note {n}: " + " ".join(rng.sample(words, 30)) + "."
        n += 1


@dataclass
class Bench:
    """An ingested index, the embedder to switch to, and the load to run against it."""

    retriever: Retriever
    target: ShadowEmbedder
    questions: list[str]
    originals: dict[str, str]  # id -> text of the ingested documents (deletion candidates)
    new_texts: Iterator[str]
    ingest_s: float


# ---- one timed run --------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    kind: str  # query | upsert | delete
    phase: str  # the phase when it started
    start: float  # seconds since the run began
    latency: float  # seconds
    error: str | None = None

    @property
    def end(self) -> float:
        return self.start + self.latency


@dataclass
class Written:
    doc_id: str
    text: str
    phase: str
    deleted: bool = False


class Run:
    """What the threads share: the clock, the current phase, a stop flag and every event."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.phase = "before"
        self.stop = threading.Event()
        self.events: list[Event] = []  # list.append is atomic: no lock needed

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def timed(self, kind: str, fn: Callable[[], object]) -> bool:
        """Run ``fn``, record it, and say whether it succeeded (an exception is a failure)."""
        phase, start = self.phase, self.now()
        error = None
        try:
            fn()
        except Exception as exc:  # the benchmark counts failures; it must not stop on one
            error = f"{type(exc).__name__}: {exc}"
        self.events.append(Event(kind, phase, start, self.now() - start, error))
        return error is None


class Watch:
    """Times, on one retriever instance, the switch, its snapshot and every hold of the lock
    that blocks searches (``Retriever._lock.write``), by wrapping them."""

    def __init__(self, run: Run, retriever: Retriever) -> None:
        self.run = run
        self.switch: tuple[float, float] | None = None
        self.snapshots: list[tuple[float, float]] = []
        self.holds: list[tuple[float, float, float]] = []  # (asked, got, released)
        retriever._switch = self._wrap(retriever._switch, self._on_switch)  # type: ignore[method-assign]
        retriever.snapshot = self._wrap(retriever.snapshot, self.snapshots.append)  # type: ignore[method-assign]
        inner = retriever._lock.write

        @contextmanager
        def write() -> Iterator[None]:
            asked = run.now()
            with inner():
                got = run.now()
                try:
                    yield
                finally:
                    self.holds.append((asked, got, run.now()))

        retriever._lock.write = write  # type: ignore[method-assign]

    def _on_switch(self, span: tuple[float, float]) -> None:
        self.switch = span

    def _wrap(
        self, fn: Callable[..., Any], record: Callable[[tuple[float, float]], None]
    ) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.run.now()
            try:
                return fn(*args, **kwargs)
            finally:
                record((start, self.run.now()))

        return timed


def query_worker(
    run: Run, retriever: Retriever, questions: list[str], offset: int, qps: float
) -> None:
    """One client: a search every 1/qps seconds (back to back if qps is 0 or it falls behind)."""
    i, due = offset, run.now()
    while not run.stop.is_set():
        run.timed("query", partial(retriever.search, questions[i % len(questions)], K, MODE))
        i += 1
        due = max(due + (1 / qps if qps else 0.0), run.now())
        run.stop.wait(due - run.now())


@dataclass
class WriteLog:
    """What the writer did: bench documents written, and (id, text) of documents deleted."""

    written: list[Written] = field(default_factory=list)
    deleted: list[tuple[str, str]] = field(default_factory=list)


def writer(
    run: Run, retriever: Retriever, texts: Iterator[str], originals: dict[str, str], out: WriteLog
) -> None:
    """Upsert a new document every WRITE_EVERY_S; every DELETE_EVERY ticks delete one, in turn
    an earlier bench document or an original one."""
    rng = random.Random(1)
    pool = sorted(originals)
    tick, due = 0, run.now()
    while not run.stop.is_set():
        doc = Written(f"bench-write-{tick:05d}", next(texts), run.phase)
        upsert = partial(retriever.upsert, DocumentIn(doc.text, doc.doc_id, {"kind": "bench"}))
        if run.timed("upsert", upsert):
            out.written.append(doc)
        tick += 1
        if tick % DELETE_EVERY == 0:
            mine = [w for w in out.written[:-1] if not w.deleted]
            victim = rng.choice(mine) if tick % (2 * DELETE_EVERY) == 0 and mine else None
            doc_id = victim.doc_id if victim else pool.pop(rng.randrange(len(pool)))
            if run.timed("delete", partial(retriever.delete, [doc_id])):
                out.deleted.append((doc_id, victim.text if victim else originals[doc_id]))
                if victim:
                    victim.deleted = True
        due = max(due + WRITE_EVERY_S, run.now())  # fell behind: go on, no burst
        run.stop.wait(due - run.now())


def timed_run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Start the load, walk through the three phases, stop, and return what happened."""
    run, writes, retriever = Run(), WriteLog(), bench.retriever
    watch = Watch(run, retriever)
    threads = [
        threading.Thread(
            target=query_worker, args=(run, retriever, bench.questions, i * 37, args.qps)
        )
        for i in range(args.threads)
    ]
    threads.append(
        threading.Thread(
            target=writer, args=(run, retriever, bench.new_texts, bench.originals, writes)
        )
    )
    for t in threads:
        t.start()
    log.info("phase before: %.0f s", args.before_s)
    run.stop.wait(args.before_s)
    run.phase, reindex_start = "during", run.now()
    log.info("phase during: reindex into the shadow space, batch %d", args.batch)
    outcome = retriever.reindex(bench.target, batch=args.batch, progress=progress_logger())
    run.phase, reindex_end = "after", run.now()
    log.info("reindex done in %.1f s: %s", reindex_end - reindex_start, outcome)
    log.info("phase after: %.0f s", args.after_s)
    run.stop.wait(args.after_s)
    run.stop.set()
    for t in threads:
        t.join()
    return {
        "run": run,
        "watch": watch,
        "writes": writes,
        "outcome": outcome,
        "reindex": (reindex_start, reindex_end),
    }


def progress_logger() -> Callable[[int, int], None]:
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - last[0] > 5 or done >= total:
            last[0] = time.perf_counter()
            log.info("  re-embedded %d/%d chunks", done, total)

    return progress


# ---- stats and checks -----------------------------------------------------------------------
def ms(seconds: float) -> float:
    return round(1e3 * seconds, 1)


def latency_stats(events: list[Event]) -> dict[str, float]:
    lat = np.array([e.latency for e in events if e.error is None])
    if not len(lat):
        return {}
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return {"p50_ms": ms(p50), "p95_ms": ms(p95), "p99_ms": ms(p99), "max_ms": ms(lat.max())}


def completion_gaps(queries: list[Event]) -> dict[str, dict[str, float]]:
    """The longest wait between two consecutive query completions, and when it ended, by the
    phase of the query that ended it (a pause that straddles a phase boundary counts there)."""
    done = sorted(queries, key=lambda e: e.end)
    worst = {p: (0.0, 0.0) for p in PHASES}  # phase -> (gap, end)
    for prev, cur in zip(done, done[1:], strict=False):
        worst[cur.phase] = max(worst[cur.phase], (cur.end - prev.end, cur.end))
    return {
        p: {"longest_gap_ms": ms(g), "longest_gap_end_s": round(t, 2)}
        for p, (g, t) in worst.items()
    }


def phase_stats(
    events: list[Event], phase: str, gap: dict[str, float], span: float
) -> dict[str, Any]:
    queries = [e for e in events if e.kind == "query" and e.phase == phase]
    writes = [e for e in events if e.kind != "query" and e.phase == phase]
    served = sum(e.error is None for e in queries)
    failed = len(queries) - served
    return {
        "seconds": round(span, 2),
        "queries_served": served,
        "queries_failed": failed,
        "availability": served / (served + failed) if queries else None,
        "queries_per_s": round(served / span, 1) if span > 0 else None,
        **latency_stats(queries),
        **gap,
        "errors": sorted({e.error for e in queries if e.error})[:5],
        "writes": {
            "count": len(writes),
            "failed": sum(e.error is not None for e in writes),
            **latency_stats(writes),
        },
    }


def switch_stats(out: dict[str, Any]) -> dict[str, Any]:
    """The switch: its length; the search lock inside it, held (got to released) and blocking
    new searches (asked to released: a waiting writer lets no new reader in while the searches
    in flight drain); the snapshot it writes; the rest blocks writers only (catch-up embed,
    FAISS rebuild)."""
    watch: Watch = out["watch"]
    if watch.switch is None:
        return {}
    lo, hi = watch.switch
    holds = [(a, g, r) for a, g, r in watch.holds if lo <= a <= hi]
    held = sum(r - g for _, g, r in holds)
    blocking = sum(r - a for a, _, r in holds)
    snaps = [e - s for s, e in watch.snapshots if lo <= s <= hi]
    queries = [e for e in out["run"].events if e.kind == "query" and e.start < hi and e.end > lo]
    writes = [e for e in out["run"].events if e.kind != "query" and e.start < hi and e.end > lo]
    return {
        "start_s": round(lo, 3),
        "switch_ms": ms(hi - lo),
        "search_lock_held_ms": ms(held),
        "search_lock_blocking_ms": ms(blocking),
        "search_lock_longest_blocking_ms": ms(max((r - a for a, _, r in holds), default=0.0)),
        "snapshot_ms": ms(sum(snaps)),
        "writers_only_ms": ms(hi - lo - blocking),
        "queries_overlapping": len(queries),
        "queries_overlapping_max_ms": ms(max((e.latency for e in queries), default=0.0)),
        "writes_overlapping_max_ms": ms(max((e.latency for e in writes), default=0.0)),
    }


def lock_stats(watch: Watch, lo: float, hi: float) -> dict[str, dict[str, float]]:
    """Per phase, how often the search lock was taken for writing and the longest time it held
    back new searches (asked to released)."""
    by_phase: dict[str, list[float]] = {p: [] for p in PHASES}
    for asked, _, released in watch.holds:
        phase = "before" if asked < lo else "during" if asked <= hi else "after"
        by_phase[phase].append(released - asked)
    return {
        p: {"holds": len(v), "longest_blocking_ms": ms(max(v, default=0.0))}
        for p, v in by_phase.items()
    }


def own_text_top1(retriever: Retriever, text: str) -> str | None:
    hits = retriever.search(text, k=1, mode="dense")
    return hits[0].doc_id if hits else None


def check_writes(retriever: Retriever, writes: WriteLog) -> dict[str, Any]:
    """Live bench documents must be their own top dense hit; deleted ones must be gone."""
    out: dict[str, Any] = {}
    log.info(
        "checking %d written and %d deleted documents", len(writes.written), len(writes.deleted)
    )
    for phase in PHASES:
        live = [w for w in writes.written if w.phase == phase and not w.deleted]
        found = sum(own_text_top1(retriever, w.text) == w.doc_id for w in live)
        out[f"written_{phase}"] = {"live": len(live), "found_top1": found}
    still = 0
    for doc_id, text in writes.deleted:
        hits = retriever.search(text, k=K, mode="dense")
        in_store = retriever.store.document(doc_id) is not None
        still += in_store or any(h.doc_id == doc_id for h in hits)
    out["deleted"] = {"count": len(writes.deleted), "still_found": still}
    out["index_matches_store"] = bool(
        np.array_equal(np.sort(retriever.index_ids()), retriever.store.live_ids())
    )
    return out


# ---- report ---------------------------------------------------------------------------------
def summarise(out: dict[str, Any], retriever: Retriever) -> dict[str, Any]:
    run: Run = out["run"]
    lo, hi = out["reindex"]
    end = max(e.end for e in run.events)
    spans = {"before": lo, "during": hi - lo, "after": end - hi}
    gaps = completion_gaps([e for e in run.events if e.kind == "query"])
    phases = {p: phase_stats(run.events, p, gaps[p], spans[p]) for p in PHASES}
    for phase, lock in lock_stats(out["watch"], lo, hi).items():
        phases[phase]["search_lock"] = lock
    return {
        "reindex_s": round(hi - lo, 2),
        "reindex_result": out["outcome"],
        "switch": switch_stats(out),
        "phases": phases,
        "write_checks": check_writes(retriever, out["writes"]),
    }


def plot(out: dict[str, Any], path: Path) -> None:
    """Latency by request start over the whole run, and zoomed in on the switch."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the plot needs matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (whole, zoom) = plt.subplots(
        1, 2, figsize=(14, 5), sharey=True, gridspec_kw={"width_ratios": [3, 1]}
    )
    for ax in (whole, zoom):
        draw_events(ax, out)
    whole.set_title("Search and write latency while the index is re-embedded and switched")
    whole.set_ylabel("latency (ms)")
    zoom.legend(loc="upper right", markerscale=3, fontsize=8)
    if out["watch"].switch:
        s0, s1 = out["watch"].switch
        zoom.set_xlim(s0 - 3, s1 + 3)
        zoom.set_title(f"around the switch ({1e3 * (s1 - s0):.0f} ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_events(ax: Any, out: dict[str, Any]) -> None:
    events: list[Event] = out["run"].events
    for kind, colour in (("query", "tab:blue"), ("upsert", "tab:green"), ("delete", "tab:olive")):
        ok = [e for e in events if e.kind == kind and e.error is None]
        ax.scatter([e.start for e in ok], [1e3 * e.latency for e in ok], s=4, c=colour, label=kind)
    failed = [e for e in events if e.error is not None]
    if failed:
        x, y = [e.start for e in failed], [1e3 * e.latency for e in failed]
        ax.scatter(x, y, marker="x", c="red", label="failed")
    lo, hi = out["reindex"]
    ax.axvline(lo, color="black", linestyle="--", label="reindex start")
    if out["watch"].switch:
        s0, s1 = out["watch"].switch
        ax.axvspan(s0, max(s1, s0 + 0.02), color="red", alpha=0.3, label="switch")
    ax.axvline(hi, color="black", linestyle=":", label="reindex returns")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the load started (request start)")


def print_table(report: dict[str, Any]) -> None:
    cols = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "longest_gap_ms")
    print(
        f"\n{'phase':7} {'secs':>6} {'served':>7} {'failed':>6} {'avail':>8} {'p50':>7} "
        f"{'p95':>7} {'p99':>7} {'max':>7} {'gap':>7} {'writes':>6} {'w p50':>7} {'w max':>7}"
    )
    for phase, s in report["phases"].items():
        w = s["writes"]
        lat = " ".join(f"{s.get(c, float('nan')):7.1f}" for c in cols)
        print(
            f"{phase:7} {s['seconds']:6.1f} {s['queries_served']:7d} {s['queries_failed']:6d} "
            f"{s['availability'] or 0.0:8.2%} {lat} {w['count']:6d} "
            f"{w.get('p50_ms', float('nan')):7.1f} {w.get('max_ms', float('nan')):7.1f}"
        )
    print("(ms; gap = longest wait between two consecutive query completions)")
    lock = {p: s["search_lock"]["longest_blocking_ms"] for p, s in report["phases"].items()}
    print("longest time new searches waited on a writer, by phase (ms):", lock)
    sw = report["switch"]
    print(
        f"\nreindex of {report['dataset']['chunks']} chunks: {report['reindex_s']:.1f} s; "
        f"switch {sw['switch_ms']:.0f} ms: new searches held back "
        f"{sw['search_lock_blocking_ms']:.0f} ms (lock held {sw['search_lock_held_ms']:.0f} ms; "
        f"snapshot {sw['snapshot_ms']:.0f} ms), "
        f"writers only {sw['writers_only_ms']:.0f} ms"
    )
    during = report["phases"]["during"]
    print(
        f"longest gap during the reindex ended at {during['longest_gap_end_s']:.1f} s; "
        f"the switch began at {sw['start_s']:.1f} s; queries in flight across it: "
        f"{sw['queries_overlapping']}, slowest {sw['queries_overlapping_max_ms']:.0f} ms"
    )
    checks = report["write_checks"]
    for phase in PHASES:
        c = checks[f"written_{phase}"]
        print(f"written {phase:6}: {c['found_top1']}/{c['live']} live found as own top-1 hit")
    d = checks["deleted"]
    print(
        f"deleted: {d['still_found']}/{d['count']} still found; "
        f"index matches store: {checks['index_matches_store']}"
    )


# ---- main -----------------------------------------------------------------------------------
def ingest(cache: Path, embedder: Embedder, docs: list[dict[str, Any]]) -> float:
    """Bring the cached index up to date with ``docs`` (unchanged ones cost a hash check)."""
    retriever = Retriever(cache, embedder)
    t0 = time.perf_counter()
    try:
        for i in range(0, len(docs), 64):
            part = docs[i : i + 64]
            retriever.upsert_many([DocumentIn(d["text"], d["id"], d["metadata"]) for d in part])
            log.info("ingested %d/%d documents", i + len(part), len(docs))
    finally:
        retriever.close()
    return time.perf_counter() - t0


def build(args: argparse.Namespace, folder: Path) -> Bench:
    """Ingest into the cache, copy it to ``folder`` and open the copy: each run starts from a
    fresh index holding exactly the dataset, without re-embedding it every time."""
    dataset = load_dataset(args.data)
    docs = read_jsonl(sorted((dataset / "documents").glob("*.jsonl")))
    questions = [q["text"] for q in read_jsonl([dataset / "queries.jsonl"])]
    embedder = load_embedder()
    ingest_s = ingest(args.cache, embedder, docs)
    shutil.copytree(args.cache, folder, ignore=shutil.ignore_patterns("index.lock"))
    return Bench(
        Retriever(folder, embedder),
        ShadowEmbedder(embedder),
        questions,
        {d["id"]: d["text"] for d in docs},
        fresh_texts(docs, args.seed),
        ingest_s,
    )


def settings(args: argparse.Namespace, retriever: Retriever) -> dict[str, Any]:
    import torch

    return {
        "threads": args.threads,
        "qps_per_thread": args.qps,
        "before_s": args.before_s,
        "after_s": args.after_s,
        "batch": args.batch,
        "k": K,
        "mode": MODE,
        "write_every_s": WRITE_EVERY_S,
        "delete_every": DELETE_EVERY,
        "embedder": retriever.embedder.identity["name"],
        "config": retriever.config.__dict__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],  # a shared machine?
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="query threads")
    parser.add_argument(
        "--qps", type=float, default=4.0, help="searches per second per thread; 0: back to back"
    )
    parser.add_argument("--before-s", type=float, default=10.0, help="seconds of load before")
    parser.add_argument("--after-s", type=float, default=10.0, help="seconds of load after")
    parser.add_argument("--batch", type=int, default=256, help="chunks per re-embedding batch")
    parser.add_argument("--data", type=Path, default=Path("data"), help="dataset root")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("data/index-reindex-en"),
        help="index kept between runs so the dataset is embedded once; each run copies it",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "reindex_switch.json")
    args = parser.parse_args()
    if args.threads < 1 or args.batch < 1 or min(args.qps, args.before_s, args.after_s) < 0:
        parser.error("--threads and --batch must be >= 1; --qps, --before-s, --after-s >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    import bm25s  # it sets its logger to DEBUG on import: import it now to quiet it

    logging.getLogger(bm25s.__name__).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragtune-reindex-") as tmp:
        bench = build(args, Path(tmp) / "index")
        retriever = bench.retriever
        report: dict[str, Any] = {"settings": settings(args, retriever)}
        report["dataset"] = {
            "documents": len(bench.originals),
            "chunks": retriever.chunk_count,
            "ingest_or_check_s": round(bench.ingest_s, 1),  # ~0 when the cache is current
        }
        out = timed_run(bench, args)
        report.update(summarise(out, retriever))
        retriever.close()
    report["total_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(out, args.out.with_suffix(".png"))
    print_table(report)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png').name} ({report['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
