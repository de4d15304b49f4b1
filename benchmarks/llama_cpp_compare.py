"""ragtune against llama.cpp on the same GGUF, the same machine and the same client, in one run.

Serves the packaged SmolLM2-135M-Instruct Q4_1 GGUF with llama.cpp's ``llama-server`` and with
``ragtune serve`` (fp32, int4, int4 with a LoRA adapter active, and both int4 runs again with
``SPIN_ENV``, the generation-first thread setting), one server at a time, and
drives each with the identical client: streamed OpenAI chat completions over loopback, greedy,
``--max-tokens`` new tokens, first 1 client, then 16 concurrent clients; then time to first token
for RAG prompts of about 800 tokens (the Debian FAQ's own chunks in ragtune's grounded
template: k=6 of its 600-character chunks make ~800 tokens, k=4 ~550), each prompt different
so neither server's prompt cache holds more than the shared template head. Reports tokens/s
(completion tokens over wall time), latency p50/p95 and time to first token p50 per server and
level, and the ratios the goals name. Writes benchmarks/results/llama_cpp_compare.json.

llama.cpp is found (``--llama-server``, ``PATH``, or an earlier build under
``data/llama.cpp``) or built: the source distribution of ``llama-cpp-python`` (from the package
index, or ``--sdist``) carries llama.cpp, compiled with cmake and the C++ compiler (15-40
minutes on 2 cores). Without a compiler the benchmark says so in one line and exits.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/llama_cpp_compare.py \\
        --data-dir data/bench16 --adapter raft-hybrid-v1

``--data-dir`` holds an ingested Debian FAQ (``ragtune ingest data/debian-faq-en/documents``),
whose index gives the RAG prompts, and the adapter's registry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from serve_bench import QUESTIONS  # the same questions as ragtune's own serving benchmark

# The environment as the user's shell gave it, before ragtune's modules set their own defaults
# in this process (OMP_WAIT_POLICY=PASSIVE, which makes llama.cpp's OpenMP threads sleep between
# graph nodes: 31 tokens/s instead of 80-90 at one client). Each server starts from it.
SHELL_ENV = dict(os.environ)
ROOT = Path(__file__).resolve().parent.parent
LLAMA_DIR = ROOT / "data" / "llama.cpp"
SDIST = "llama-cpp-python==0.3.36"


# ---- llama.cpp ---------------------------------------------------------------------------------
def find_llama_server(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    on_path = shutil.which("llama-server")
    if on_path:
        return Path(on_path)
    built = LLAMA_DIR / "src" / "build" / "bin" / "llama-server"
    return built if built.is_file() else None


def build_llama_server(sdist: Path | None, jobs: int) -> Path:
    """Compile llama-server from llama-cpp-python's source distribution under data/llama.cpp."""
    LLAMA_DIR.mkdir(parents=True, exist_ok=True)
    if sdist is None:
        print(f"fetching the {SDIST} source distribution", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                SDIST,
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(LLAMA_DIR),
            ],
            check=True,
        )
        sdist = next(LLAMA_DIR.glob("llama_cpp_python-*.tar.gz"))
    src = LLAMA_DIR / "src"
    if not (src / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory(dir=LLAMA_DIR) as tmp, tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
            vendored = next(Path(tmp).glob("llama_cpp_python-*/vendor/llama.cpp"))
            shutil.rmtree(src, ignore_errors=True)
            vendored.rename(src)
    flags = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DGGML_NATIVE=ON",
    ]
    print("building llama-server (15-40 minutes on 2 cores)", flush=True)
    subprocess.run(["cmake", "-S", str(src), "-B", str(src / "build"), *flags], check=True)
    subprocess.run(
        ["cmake", "--build", str(src / "build"), "--target", "llama-server", f"-j{jobs}"],
        check=True,
    )
    return src / "build" / "bin" / "llama-server"


def compiler_missing() -> str | None:
    if shutil.which("cmake") is None:
        return "cmake"
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "a C++ compiler (g++ or clang++)"
    return None


# ---- servers -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server not ready after {timeout:.0f}s: {url}")


def start_llama(
    binary: Path, gguf: Path, threads: int, slots: int, extra: list[str]
) -> tuple[Any, str]:
    """``llama-server`` with ``slots`` parallel sequences of 1,024 tokens each. ``extra`` goes
    on its command line: by default ``--no-repack``, because on this project's machines ggml's
    AMX weight repacking (compiled in by -march=native on a CPU with AMX) dies with SIGSEGV in
    ``ggml_backend_amx_mul_mat``; Q4_1 has no other repacked CPU layout to lose."""
    port = free_port()
    where = ["--host", "127.0.0.1", "--port", str(port)]
    cmd = [str(binary), "-m", str(gguf), "-t", str(threads), "-np", str(slots)]
    cmd += ["-c", str(slots * 1024), *where, *extra]
    with (LLAMA_DIR / "llama-server.log").open("w") as log:  # its own log, for a crash's reason
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=SHELL_ENV)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/health")
    return proc, url


# "@spin": torch's OpenMP workers spin 20,000 rounds before they sleep (GOMP_SPINCOUNT wins over
# ragtune's OMP_WAIT_POLICY=PASSIVE) and a query's encode runs on one thread, so the engine's
# thread holds the process's only OpenMP pool: its decode steps pay for two threads again.
SPIN_ENV = {"GOMP_SPINCOUNT": "20000", "RAGTUNE_QUERY_THREADS": "1"}


def start_ragtune(data_dir: Path, precision: str, spin: bool) -> tuple[Any, str]:
    port = free_port()
    env = {
        **SHELL_ENV,
        **(SPIN_ENV if spin else {}),
        "RAGTUNE_AUTH_DISABLED": "1",
        "RAGTUNE_DATA_DIR": str(data_dir),
        "RAGTUNE_GENERATOR_PRECISION": precision,
        "RAGTUNE_LIMITS__RATE_LIMIT_PER_MINUTE": "0",
        "RAGTUNE_LOG_LEVEL": "warning",
        "RAGTUNE_RETRIEVAL__REEMBED_OLD_INDEX": "false",
    }
    exe = str(Path(sys.executable).parent / "ragtune")
    proc = subprocess.Popen([exe, "serve", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    wait_ready(proc, f"{url}/readyz")
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- the client --------------------------------------------------------------------------------
def ask(client: httpx.Client, url: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    """One streamed chat completion: seconds to the first text, in all, and completion tokens.
    A connection the server closed before answering (llama-server does so now and then after a
    pause) is retried once on a new one, and counted."""
    try:
        return stream_one(client, url, model, messages, max_tokens)
    except httpx.RemoteProtocolError:
        with httpx.Client() as fresh:
            return {**stream_one(fresh, url, model, messages, max_tokens), "retried": 1}


def stream_one(
    client: httpx.Client, url: str, model: str, messages: list[dict], max_tokens: int
) -> dict:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "retrieval": False,  # ragtune's chat searches the index by default; llama.cpp ignores it
    }
    started = time.perf_counter()
    first, pieces, usage = None, 0, None
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise SystemExit(f"{url} answered {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    pieces += 1
                    first = first if first is not None else time.perf_counter() - started
            usage = chunk.get("usage") or usage
    tokens = int(usage["completion_tokens"]) if usage else pieces
    return {"ttft_s": first, "latency_s": time.perf_counter() - started, "tokens": tokens}


def level(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    chats = [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(requests)]
    lock, results = threading.Lock(), []

    def worker(batch: list[list[dict]]) -> None:
        with httpx.Client() as client:
            for messages in batch:
                out = ask(client, url, model, messages, max_tokens)
                with lock:
                    results.append(out)

    shares = [chats[i::clients] for i in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, shares))
    return summary(results, time.perf_counter() - started, clients)


def summary(results: list[dict], wall: float, clients: int) -> dict:
    latencies = sorted(r["latency_s"] for r in results)
    ttfts = sorted(r["ttft_s"] for r in results if r["ttft_s"] is not None)
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
        "ttft_p50_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "retried": sum(r.get("retried", 0) for r in results),
    }


def rag_prompts(data_dir: Path, n: int, k: int) -> tuple[list[list[dict]], list[int]]:
    """``n`` grounded chats (ragtune's template, ``k`` passages each) from the Debian FAQ index
    in ``data_dir``, and their templated token counts."""
    from service.loading import generator_from_settings, index_embedder, open_retriever
    from service.settings import Settings
    from tuner.prompts import rag_messages

    settings = Settings(data_dir=data_dir, auth_disabled=True)
    questions = [
        json.loads(line)["text"]
        for line in (ROOT / "data" / "debian-faq-en" / "queries.jsonl").read_text().splitlines()
    ][:n]
    retriever = open_retriever(settings, index_embedder(settings))
    try:
        chats = [rag_messages(q, retriever.search(q, k=k)) for q in questions]
    finally:
        retriever.close()
    tok = generator_from_settings(settings).tokenizer
    lengths = [
        len(token_ids(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True)))
        for c in chats
    ]
    return chats, lengths


def token_ids(encoded: Any) -> list[int]:
    """``apply_chat_template(tokenize=True)``: a list, or a mapping holding one (transformers 5)."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def prefill(url: str, model: str, chats: list[list[dict]]) -> dict:
    with httpx.Client() as client:
        ttfts = [ask(client, url, model, chat, 1)["ttft_s"] for chat in chats]
    ttfts = sorted(t for t in ttfts if t is not None)
    return {
        "prompts": len(chats),
        "ttft_p50_s": round(statistics.median(ttfts), 3),
        "ttft_max_s": round(ttfts[-1], 3),
    }


def measure(url: str, model: str, args: argparse.Namespace, chats: list[list[dict]]) -> dict:
    level(url, model, 1, 2, args.max_tokens)  # warm-up
    return {
        "1": level(url, model, 1, args.single_requests, args.max_tokens),
        "16": level(url, model, 16, args.batch_requests, args.max_tokens),
        "rag_prefill": prefill(url, model, chats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--adapter", help="registry id of a generator adapter for one run")
    parser.add_argument(
        "--ragtune",
        nargs="+",
        default=["fp32", "int4", "int4+adapter", "int4@spin", "int4+adapter@spin"],
        help="runs: fp32|int4, +adapter for the --adapter, @spin for SPIN_ENV",
    )
    parser.add_argument("--llama-server", type=Path)
    parser.add_argument("--llama-args", default="--no-repack", help="more llama-server flags")
    parser.add_argument("--sdist", type=Path, help="a downloaded llama-cpp-python sdist")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--single-requests", type=int, default=8)
    parser.add_argument("--batch-requests", type=int, default=48)
    parser.add_argument("--rag-prompts", type=int, default=6)
    parser.add_argument(
        "--rag-k", type=int, default=6, help="passages per RAG prompt (6: ~800 tokens here)"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "llama_cpp_compare.json"
    )
    args = parser.parse_args()

    binary = find_llama_server(args.llama_server)
    if binary is None:
        missing = compiler_missing()
        if missing:
            print(f"llama_cpp_compare: skipped: no llama-server and no {missing} to build it")
            return
        binary = build_llama_server(args.sdist, args.threads)
    from tuner.models import resolve_generator

    gguf = resolve_generator(offline=True).path
    chats, lengths = rag_prompts(args.data_dir, args.rag_prompts, args.rag_k)
    print(f"RAG prompts: {statistics.median(lengths):.0f} tokens (median)", flush=True)
    report: dict[str, Any] = {
        "model": gguf.name,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "rag_k": args.rag_k,
        "rag_prompt_tokens": lengths,
        "llama_cpp": SDIST,
        "llama_server_args": args.llama_args,
        "servers": {},
    }
    proc, url = start_llama(binary, gguf, args.threads, 16, args.llama_args.split())
    try:
        report["servers"]["llama.cpp"] = measure(url, "default", args, chats)
    finally:
        stop(proc)
    print("llama.cpp", json.dumps(report["servers"]["llama.cpp"]), flush=True)
    for run in args.ragtune:
        named, _, waiting = run.partition("@")
        precision, _, extra = named.partition("+")
        if extra and not args.adapter:
            print(f"{run}: skipped (no --adapter)")
            continue
        proc, url = start_ragtune(args.data_dir, precision, spin=waiting == "spin")
        try:
            model = args.adapter if extra else "SmolLM2-135M-Instruct"
            report["servers"][f"ragtune {run}"] = measure(url, model, args, chats)
        finally:
            stop(proc)
        print(f"ragtune {run}", json.dumps(report["servers"][f"ragtune {run}"]), flush=True)
    llama = report["servers"]["llama.cpp"]
    report["vs_llama_cpp"] = {
        name: {
            "single_stream": round(r["1"]["tokens_per_s"] / llama["1"]["tokens_per_s"], 2),
            "16_clients": round(r["16"]["tokens_per_s"] / llama["16"]["tokens_per_s"], 2),
            "rag_ttft": round(
                r["rag_prefill"]["ttft_p50_s"] / llama["rag_prefill"]["ttft_p50_s"], 2
            ),
        }
        for name, r in report["servers"].items()
        if name != "llama.cpp"
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["vs_llama_cpp"], indent=1))


if __name__ == "__main__":
    main()
