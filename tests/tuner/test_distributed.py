"""Two processes under ``accelerate launch`` train one adapter together: on CPU (gloo, loopback)
it is the adapter one process trains with the same global batch (the generator accumulating two
micro-batches; the embedder at twice the batch, its loss gathering both processes' embeddings),
only the main process writes, and both processes exit cleanly."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ST_WORDS, build_tiny_bert
from tests.tuner.test_train import TOY, _toy_file
from tuner.config import Recipe
from tuner.pairs import Pair, write_pairs
from tuner.prepare import prepare, prepare_pairs
from tuner.registry import Registry
from tuner.train import train

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _recipe(tiny: Path, data: Path, grad_accum: int) -> Recipe:
    return Recipe(
        name="toy-ddp",
        method="lora",
        base_model=str(tiny),
        datasets=[{"path": str(data)}],
        hyperparameters={
            "learning_rate": 3e-2,
            "batch_size": 4,  # per process
            "grad_accum": grad_accum,
            "epochs": 12,  # 8 examples = 8 per update: 12 updates with either layout
            "val_fraction": 0.0,
            "dropout": 0.0,
            "checkpoint_every": 5,
            "seed": 1,
        },
        probe=False,
        min_examples=4,
    )


def _job(recipe: Recipe, job: Path, tiny: Path) -> Path:
    from transformers import AutoTokenizer

    prepare(recipe, job, files_dir=job / "files", tokenizer=AutoTokenizer.from_pretrained(tiny))
    (job / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    return job


def _accelerate() -> str:
    beside = Path(sys.executable).parent / "accelerate"
    found = str(beside) if beside.is_file() else shutil.which("accelerate")
    if found is None:
        pytest.skip("the accelerate command is not installed")
    return found


def _launch(job: Path, data_dir: Path, tmp_path: Path) -> str:
    """``accelerate launch`` two CPU processes of ``python -m tuner.train`` on ``job``; returns
    their output after checking both ran under MULTI_CPU and exited 0."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),  # no accelerate config file: the flags say it all
        "CUDA_VISIBLE_DEVICES": "",  # no GPU: accelerate must fall back to CPU and gloo
        "MASTER_ADDR": "127.0.0.1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        _accelerate(),
        "launch",
        "--multi_gpu",  # the torchrun launcher: the only one that starts N local processes
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "--main_process_ip=127.0.0.1",
        f"--main_process_port={_free_port()}",
        "-m",
        "tuner.train",
        "--job-dir",
        str(job),
        "--data-dir",
        str(data_dir),
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "process 1 of 2 (MULTI_CPU) done" in out, out[-6000:]
    assert "process 1 of 2 (MULTI_CPU) done: registered" not in out
    return out


@pytest.mark.slow
def test_two_processes_train_the_adapter_one_process_trains(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = _toy_file(tmp_path)
    two = _recipe(tiny_llama, data, grad_accum=1)
    job = _job(two, tmp_path / "job", tiny_llama)
    out = _launch(job, tmp_path / "d2", tmp_path)
    assert "process 0 of 2 (MULTI_CPU) done: registered toy-ddp-v1" in out, out[-6000:]

    registry = Registry(tmp_path / "d2" / "adapters")
    assert [r.id for r in registry.list()] == ["toy-ddp-v1"]
    assert not [p.name for p in registry.root.iterdir() if p.name.startswith(".tmp")]
    assert not (job / "checkpoints").exists()  # written at 5 and 10 by rank 0, then removed
    ddp = registry.get("toy-ddp-v1").metrics
    assert ddp["updates"] == ddp["planned_updates"] == 12  # 8 examples / (4 x 2 processes)
    curve = [loss for _, loss in ddp["loss_curve"]]
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, curve

    # One process, same global batch (2 micro-batches of 4 accumulated): the same adapter.
    one = _recipe(tiny_llama, data, grad_accum=2)
    single = train(one, _job(one, tmp_path / "job1", tiny_llama), data_dir=tmp_path / "d1")
    assert single.metrics["response_tokens"] == ddp["response_tokens"]  # both ranks counted
    for (_, a), (_, b) in zip(single.metrics["loss_curve"], ddp["loss_curve"], strict=True):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    a = load_file(str(tmp_path / "d1" / "adapters" / single.id / "adapter_model.safetensors"))
    b = load_file(str(registry.folder("toy-ddp-v1") / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3)

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": TOY[0][0]}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.inference_mode():
        before = base(input_ids=ids).logits[0, -1].clone()
        tuned = PeftModel.from_pretrained(base, str(registry.folder("toy-ddp-v1")))
        after = tuned(input_ids=ids).logits[0, -1]
    assert not torch.allclose(after, before, atol=1e-4)


def _tiny_embedder(folder: Path) -> Path:
    """The tiny sentence-transformers model without dropout, so that both layouts see the same
    forward pass."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    no_dropout = {"hidden_dropout_prob": 0, "attention_probs_dropout_prob": 0}
    bert = build_tiny_bert(folder / "bert", ST_WORDS, max_position_embeddings=32, **no_dropout)
    word = Transformer(str(bert))
    model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension())])
    model.save(str(folder / "st"))
    return folder / "st"


def _pairs_file(tmp_path: Path) -> Path:
    """20 pairs of the tiny model's words: a two-word query, a positive that holds both words
    and a negative that holds neither."""
    w = ST_WORDS
    pairs = [
        Pair(f"{a} {b}", f"{b} {w[(i + j) % 16]} {a}", [f"{w[(i + 3) % 16]} {w[(j + 5) % 16]}"])
        for i, j in itertools.islice(itertools.combinations(range(16), 2), 0, 120, 6)
        for a, b in [(w[i], w[j])]
    ]
    write_pairs(pairs, tmp_path / "pairs.jsonl")
    return tmp_path / "pairs.jsonl"


def _retriever_job(base: Path, pairs: Path, job: Path, batch_size: int) -> tuple[Recipe, Path]:
    recipe = Recipe(
        name="emb-ddp",
        component="retriever",
        method="full",
        base_model=str(base),
        datasets=[{"path": str(pairs)}],
        hyperparameters={
            "learning_rate": 5e-3,
            "batch_size": batch_size,  # per process
            "max_steps": 20,  # 16 training pairs = 2 global batches of 8: 10 epochs
            "val_fraction": 0.2,
            "seed": 1,
        },
        min_examples=4,
    )
    prepare_pairs(recipe, job, files_dir=pairs.parent)
    (job / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    return recipe, job


@pytest.mark.slow
def test_two_processes_train_the_embedder_one_process_trains_at_twice_the_batch(
    tmp_path: Path,
) -> None:
    from safetensors.torch import load_file

    base, pairs = _tiny_embedder(tmp_path / "tiny"), _pairs_file(tmp_path)
    _, job = _retriever_job(base, pairs, tmp_path / "job", batch_size=4)
    out = _launch(job, tmp_path / "d2", tmp_path)
    assert "process 0 of 2 (MULTI_CPU) done: registered emb-ddp-v1" in out, out[-6000:]

    registry = Registry(tmp_path / "d2" / "adapters")
    assert [r.id for r in registry.list()] == ["emb-ddp-v1"]
    assert registry.get("emb-ddp-v1").component == "retriever"
    assert not [p.name for p in registry.root.iterdir() if p.name.startswith(".tmp")]
    assert not (job / "trainer").exists() and not list(job.rglob("checkpoint-*"))
    ddp = registry.get("emb-ddp-v1").metrics
    assert ddp["updates"] == 20 and ddp["recall@10_after"] is not None  # the main one scored
    assert ddp["train_loss"] < ddp["first_loss"], ddp  # means of updates 11-20 and 1-10

    # One process at batch 8 (the global batch of two processes at 4): the same embedder.
    single = train(*_retriever_job(base, pairs, tmp_path / "job1", 8), data_dir=tmp_path / "d1")
    for key in ("first_loss", "train_loss", "recall@10_before", "recall@10_after"):
        assert single.metrics[key] == pytest.approx(ddp[key], rel=1e-3, abs=1e-4), key
    folders = tmp_path / "d1" / "adapters" / single.id, registry.folder("emb-ddp-v1")
    a, b = (load_file(str(f / "model.safetensors")) for f in folders)
    untrained = load_file(str(base / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-4, rtol=1e-3)
    assert any(not torch.allclose(a[n], untrained[n], atol=1e-4) for n in a)


def test_the_command_line_refuses_a_job_without_a_recipe(tmp_path: Path) -> None:
    from tuner.train import main

    with pytest.raises(SystemExit) as exc:
        main(["--job-dir", str(tmp_path), "--data-dir", str(tmp_path / "d")])
    assert exc.value.code == 2
