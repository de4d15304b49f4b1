"""Serving throughput: 1, 4 and 16 concurrent clients against a running ragtune server, and in
the same run a naive baseline (one ``model.generate`` per request, sequentially).

Starts ``ragtune serve`` on a free loopback port with the default models (or uses ``--url``),
asks base-mode questions with a fixed token budget, and reports answers/s, tokens/s and latency
p50/p95 per concurrency. Goals: aggregate tokens/s at 16 clients >= 6x the single-stream figure;
single-stream within 1.1x of raw ``generate``. Writes benchmarks/results/serve_bench.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

QUESTIONS = [
    "What is Debian?",
    "How do I install a package?",
    "What is a kernel?",
    "How do I update my system?",
    "What is a mirror?",
    "Who maintains Debian?",
    "What is the difference between stable and testing?",
    "How do I remove a package?",
]


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RAGTUNE_AUTH_DISABLED": "1",
        "RAGTUNE_DATA_DIR": str(data_dir),
        "RAGTUNE_LIMITS__RATE_LIMIT_PER_MINUTE": "0",
        "RAGTUNE_LOG_LEVEL": "warning",
    }
    exe = str(Path(sys.executable).parent / "ragtune")
    proc = subprocess.Popen([exe, "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server exited during startup")
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("the server did not become ready")


def batch_counts(url: str) -> tuple[float, float]:
    """(requests decoded, batches) so far, from the server's batch-size histogram."""
    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ragtune_generation_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("ragtune_generation_batch_size_count"):
            count = float(line.split()[-1])
    return total, count


def run_clients(url: str, clients: int, per_client: int, max_new: int) -> dict:
    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(n: int) -> None:
        with httpx.Client(timeout=600) as http:
            for i in range(per_client):
                q = QUESTIONS[(n + i) % len(QUESTIONS)]
                t0 = time.perf_counter()
                r = http.post(
                    f"{url}/v1/query",
                    json={"question": q, "mode": "base", "max_new_tokens": max_new},
                )
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    tokens[0] += r.json()["usage"]["completion_tokens"]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    decoded, batches = batch_counts(url)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    decoded_after, batches_after = batch_counts(url)
    lat = sorted(latencies)
    return {
        "clients": clients,
        "answers": len(lat),
        "tokens": tokens[0],
        "wall_s": wall,
        "answers_per_s": len(lat) / wall,
        "tokens_per_s": tokens[0] / wall,
        "p50_s": lat[len(lat) // 2],
        "p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
        "mean_batch": (decoded_after - decoded) / max(1.0, batches_after - batches),
    }


def raw_generate(gen, i: int, max_new: int) -> tuple[int, float]:
    """What a plain transformers user does: one ``generate`` for one request."""
    import torch

    tok, model = gen.tokenizer, gen.model
    msgs = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return int(out.shape[1] - enc["input_ids"].shape[1]), time.perf_counter() - t0


def _summary(lat: list[float], tokens: int, clients: int | str) -> dict:
    s = sorted(lat)
    return {
        "clients": clients,
        "answers": len(s),
        "tokens": tokens,
        "wall_s": sum(s),
        "answers_per_s": len(s) / sum(s),
        "tokens_per_s": tokens / sum(s),
        "p50_s": s[len(s) // 2],
        "p95_s": s[min(len(s) - 1, int(0.95 * len(s)))],
    }


def single_vs_raw(url: str, gen, pairs: int, max_new: int) -> tuple[dict, dict]:
    """Alternate one server request (a single client) and one raw ``generate`` in this process,
    so that machine speed drifts hit both alike; the server is idle while ``generate`` runs."""
    server_lat: list[float] = []
    raw_lat: list[float] = []
    server_tok = raw_tok = 0
    with httpx.Client(timeout=600) as http:
        for i in range(pairs):
            t0 = time.perf_counter()
            r = http.post(
                f"{url}/v1/query",
                json={
                    "question": QUESTIONS[i % len(QUESTIONS)],
                    "mode": "base",
                    "max_new_tokens": max_new,
                },
            )
            r.raise_for_status()
            server_lat.append(time.perf_counter() - t0)
            server_tok += r.json()["usage"]["completion_tokens"]
            n, dt = raw_generate(gen, i, max_new)
            raw_lat.append(dt)
            raw_tok += n
    return _summary(server_lat, server_tok, 1), _summary(raw_lat, raw_tok, "naive")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an already running server (else one is started)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=32, help="answers per concurrency level")
    parser.add_argument("--pairs", type=int, default=6, help="single-stream vs raw pairs")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "serve_bench.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        url = args.url
        if url is None:
            proc, url = start_server(Path(tmp) / "data")
        try:
            from tuner.models import load_generator

            gen = load_generator(cache_dir=Path(tmp) / "data" / "models", offline=True)
            run_clients(url, 2, 1, 4)  # warm-up
            raw_generate(gen, 0, 4)
            single, baseline = single_vs_raw(url, gen, args.pairs, args.max_new_tokens)
            levels = [single] + [
                run_clients(url, c, max(1, args.requests // c), args.max_new_tokens)
                for c in (4, 16)
            ]
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    single, sixteen = levels[0]["tokens_per_s"], levels[2]["tokens_per_s"]
    result = {
        "max_new_tokens": args.max_new_tokens,
        "levels": levels,
        "naive_baseline": baseline,
        "ratios": {
            "tokens_per_s_16_vs_1": sixteen / single,
            "single_stream_vs_raw_generate": baseline["tokens_per_s"] / single,
        },
    }
    print(
        f"\n{'clients':>8} {'answers/s':>10} {'tokens/s':>10} {'p50 s':>8} {'p95 s':>8}"
        f" {'batch':>6}"
    )
    for lv in levels:
        print(
            f"{lv['clients']:>8} {lv['answers_per_s']:10.2f} {lv['tokens_per_s']:10.1f} "
            f"{lv['p50_s']:8.2f} {lv['p95_s']:8.2f} {lv.get('mean_batch', 1.0):6.1f}"
        )
    print(
        f"{'naive':>8} {baseline['answers_per_s']:10.2f} {baseline['tokens_per_s']:10.1f} "
        f"{baseline['p50_s']:8.2f} {baseline['p95_s']:8.2f}   (one generate per request)"
    )
    r = result["ratios"]
    print(f"\ntokens/s at 16 clients vs 1: {r['tokens_per_s_16_vs_1']:.2f}x (goal >= 6)")
    print(
        f"raw generate vs single stream: {r['single_stream_vs_raw_generate']:.2f}x "
        "(goal <= 1.1: single stream no slower than 1.1x raw)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
