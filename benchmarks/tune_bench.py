"""Trainer overhead: step time and tokens/s of ragtune's training loop (``tuner.train.train``)
against a plain transformers ``Trainer`` + peft LoRA script, same model, data, batch and LoRA.

Both sides get the same 64 synthetic chat examples, every one exactly ``--length`` tokens with
the model's chat template (so batch composition cannot change the work per step), encoded by
``tuner.data.encode`` and padded by ``tuner.data.collate``; batch size 4, the same LoRA config
(``tuner.methods.peft_config``), AdamW at the same learning rate, linear schedule, gradient
clipping at 1.0. The extras are off on both sides: no probe, no validation, no checkpoints
(ragtune); no eval, saving, logging, dataloader workers or reporting (Trainer).

The two alternate within one run, in rounds (A B, B A, A B, ...), so drift in machine speed (2
shared cores) hits both: each round starts a fresh run of each with ``--warmup`` untimed
updates, then times ``--steps`` more. A step's time is the gap between consecutive per-update
timestamps: ragtune's ``hooks.progress`` and a ``TrainerCallback.on_step_end``. Reports the
median step time and tokens/s of each and the ratio ragtune/Trainer (goal <= 1.05), and writes
benchmarks/results/tune_bench.json.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tune_bench.py            # SmolLM2-135M
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/tune_bench.py --tiny     # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.helpers import WORDS, build_tiny_llama  # noqa: E402
from tuner import data as tdata  # noqa: E402
from tuner import methods  # noqa: E402
from tuner.config import DataSpec, Hyperparameters, Recipe  # noqa: E402
from tuner.models import load_generator  # noqa: E402
from tuner.train import train  # noqa: E402

TEXT_WORDS = [
    "the",
    "system",
    "package",
    "install",
    "file",
    "kernel",
    "user",
    "answer",
    "question",
    "document",
    "network",
    "server",
    "service",
    "update",
    "version",
    "release",
    "security",
    "mirror",
    "archive",
    "source",
    "binary",
    "library",
    "module",
    "driver",
    "boot",
    "disk",
    "memory",
    "process",
    "thread",
    "command",
    "option",
    "setting",
    "default",
    "manual",
    "page",
]


def synthetic(tok: Any, n: int, length: int, seed: int, tiny: bool) -> list[tdata.Example]:
    """``n`` chat examples of exactly ``length`` tokens each with the chat template."""
    rng = random.Random(seed)
    vocab = [w for w in WORDS if w.isalpha()] if tiny else TEXT_WORDS
    filler = "a"  # one token on its own after a space, in both tokenizers
    out: list[tdata.Example] = []
    while len(out) < n:
        question = " ".join(rng.choice(vocab) for _ in range(8)) + " ?"
        pool = [rng.choice(vocab) for _ in range(length)]

        def size(ws: list[str], q: str = question) -> int:
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": " ".join(ws)}]
            return len(tdata.encode(tdata.Example(msgs, {}), tok, 10**6)["input_ids"])

        lo, hi = 0, len(pool)  # the most words of the pool that stay within length - 4 tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if size(pool[:mid]) <= length - 4 else (lo, mid - 1)
        words = pool[:lo]
        while size(words) < length:
            words.append(filler)
        if size(words) != length:
            continue  # overshot by a multi-token step: draw another
        msgs = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": " ".join(words)},
        ]
        out.append(tdata.Example(msgs, {"line": len(out) + 1}))
    return out


class _Clock:
    """Per-update timestamps (ragtune's progress hook)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def progress(self, step: int, total: int, loss: float, val_loss: float | None) -> None:
        self.stamps.append(time.perf_counter())

    def should_stop(self) -> bool:
        return False


def run_ragtune(
    weights: Path, examples: list[tdata.Example], hp: Hyperparameters, work: Path, device: str
) -> list[float]:
    job = Path(tempfile.mkdtemp(dir=work, prefix="job-"))
    (job / "data").mkdir()
    tdata.write_jsonl(examples, job / "data" / "train.jsonl")
    (job / "data" / "val.jsonl").write_text("")
    recipe = Recipe(
        name="bench",
        method="lora",
        base_model=str(weights),
        datasets=[DataSpec(path=str(job / "data" / "train.jsonl"))],
        hyperparameters=hp,
        probe=False,
    )
    clock = _Clock()
    train(recipe, job, data_dir=work / "data", hooks=clock, device=device, models_dir=work)
    return clock.stamps


def run_trainer(
    weights: Path, examples: list[tdata.Example], hp: Hyperparameters, work: Path, device: str
) -> list[float]:
    import peft
    from transformers import Trainer, TrainerCallback, TrainingArguments

    gen = load_generator(str(weights), cache_dir=work, device=device)
    model = gen.model
    model.config.use_cache = False
    model = peft.get_peft_model(model, methods.peft_config("lora", hp))
    model.train()
    encoded = [tdata.encode(e, gen.tokenizer, hp.max_length) for e in examples]
    pad = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else 0
    stamps: list[float] = []

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp(dir=work, prefix="hf-"))),
        per_device_train_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.grad_accum,
        max_steps=hp.max_steps or 1,
        learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=hp.max_grad_norm,
        optim="adamw_torch",
        seed=hp.seed,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        remove_unused_columns=False,
        use_cpu=device == "cpu",
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded,  # type: ignore[arg-type]
        data_collator=partial(tdata.collate, pad_id=pad),
        callbacks=[Clock()],
    )
    trainer.train()
    return stamps


def _gaps(stamps: list[float], warmup: int) -> list[float]:
    """Seconds per update after ``warmup`` updates (the gap from the previous update)."""
    return [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]


def _write(
    args: Any,
    times: dict[str, list[float]],
    rounds: list[dict[str, Any]],
    model_name: str,
    hp: Hyperparameters,
) -> dict[str, Any]:
    sides = list(times)
    tokens_per_step = args.batch_size * args.length
    summary: dict[str, Any] = {}
    for name in sides:
        med = statistics.median(times[name])
        summary[name] = {
            "median_step_s": round(med, 5),
            "mean_step_s": round(statistics.fmean(times[name]), 5),
            "tokens_per_s": round(tokens_per_step / med, 1),
            "step_s": [round(t, 5) for t in times[name]],
        }
    ratio = summary["ragtune"]["median_step_s"] / summary["trainer"]["median_step_s"]
    result = {
        "model": model_name,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "examples": args.examples,
        "tokens_per_example": args.length,
        "batch_size": args.batch_size,
        "tokens_per_step": tokens_per_step,
        "lora": {"rank": hp.rank, "alpha": hp.alpha, "dropout": hp.dropout},
        "rounds": args.rounds,
        "rounds_completed": len(rounds),
        "warmup_updates_per_run": args.warmup,
        "timed_updates_per_run": args.steps,
        "per_round_median_step_s": rounds,
        "ragtune": summary["ragtune"],
        "trainer": summary["trainer"],
        "ratio_ragtune_over_trainer": round(ratio, 4),
        "goal_ratio_at_most": 1.05,
        "goal_met": ratio <= 1.05,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random Llama of the tests")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates per run")
    parser.add_argument("--steps", type=int, default=5, help="timed updates per run")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--length", type=int, default=128, help="tokens per example")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/rtmodels"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "tune_bench.json"
    )
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="tune-bench-"))
    if args.tiny:
        weights = build_tiny_llama(work / "tiny")
        model_name = "tiny random Llama (tests/helpers.py)"
    else:
        gen = load_generator(cache_dir=args.models_dir, offline=True)
        weights, model_name = gen.weights_dir, gen.resolved.name
        del gen
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(weights)
    examples = synthetic(tok, args.examples, args.length, seed=0, tiny=args.tiny)
    hp = Hyperparameters(
        batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        max_length=args.length,
        val_fraction=0.0,
        checkpoint_every=10**6,
        eval_every=10**6,
        warmup_ratio=0.0,
        scheduler="linear",
    )
    sides = {"ragtune": run_ragtune, "trainer": run_trainer}
    times: dict[str, list[float]] = {name: [] for name in sides}
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        medians = {}
        for name in order:
            stamps = sides[name](weights, examples, hp, work, args.device)
            assert len(stamps) == hp.max_steps, (name, len(stamps))
            gaps = _gaps(stamps, args.warmup)
            times[name] += gaps
            medians[name] = statistics.median(gaps)
        rounds.append({"order": "".join(n[0] for n in order), **medians})  # type: ignore[dict-item]
        _write(args, times, rounds, model_name, hp)  # partial results survive an interrupt
        print(
            f"round {r + 1}/{args.rounds} ({' then '.join(order)}): "
            + ", ".join(f"{n} {medians[n] * 1000:.1f} ms" for n in sides),
            flush=True,
        )
    result = _write(args, times, rounds, model_name, hp)
    summary, ratio = result, result["ratio_ragtune_over_trainer"]
    print(f"\n{'trainer':<10} {'median step':>12} {'tokens/s':>10}")
    for name in sides:
        s = summary[name]
        print(f"{name:<10} {s['median_step_s'] * 1000:>9.1f} ms {s['tokens_per_s']:>10.1f}")
    print(f"ratio ragtune/Trainer (median step time): {ratio:.3f}  (goal <= 1.05)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
