"""Test builders: a tiny random Llama with a real tokenizer saved like a hub model, a tiny
BERT and sentence-transformers model, a random LoRA, and clients of the real app over them.
Fixtures live in the conftest files; this module only builds things."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = [
    "the",
    "a",
    "is",
    "of",
    "and",
    "to",
    "in",
    "what",
    "how",
    "why",
    "who",
    "debian",
    "package",
    "apt",
    "install",
    "system",
    "linux",
    "kernel",
    "answer",
    "question",
    "paris",
    "france",
    "capital",
    "user",
    "assistant",
    "file",
    "files",
    "document",
    "passage",
]


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Save a random 2-layer Llama (hidden 32) and a word-level tokenizer to ``folder``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + list("?.,!:\n"))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|im_end|>"],
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_loader(tiny_llama: Path, tmp: Path, index: str = "index", adapters: Path | None = None):
    """An app loader with the fake embedder, the tiny Llama, its engine and a fresh index."""
    from retriever.index import Retriever
    from service.adapters import AdapterSet
    from service.generation.engine import GenerationEngine
    from tests.fakes import FakeEmbedder
    from tuner.models import load_generator

    def loader(state) -> None:  # noqa: ANN001 - service.app.AppState
        state.embedder = FakeEmbedder()
        state.generator = load_generator(str(tiny_llama), cache_dir=tmp / "m")
        if adapters is not None:
            state.adapters = AdapterSet(
                state.generator, adapters, max_loaded=state.settings.limits.max_loaded_adapters
            )
        state.engine = GenerationEngine(
            state.generator, metrics=state.metrics, adapters=state.adapters
        )
        state.retriever = Retriever(tmp / index, state.embedder)

    return loader


@contextmanager
def app_clients(tiny_llama: Path, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Yield ``make(settings, setup=None)``: an entered ``TestClient`` of the real app with
    ``tiny_loader``'s models (a fresh index folder per client), then ``setup(state)`` for what a
    test adds (a job runner, an eval runner). Every client made is closed on exit."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    clients: list[TestClient] = []

    def make(settings: Any, setup: Callable[[Any], None] | None = None) -> TestClient:
        index = f"index{len(clients)}" if clients else "index"
        base = tiny_loader(tiny_llama, tmp_path, index=index)

        def loader(state) -> None:  # noqa: ANN001 - service.app.AppState
            base(state)
            if setup is not None:
                setup(state)

        client = TestClient(create_app(settings, loader=loader), base_url="http://127.0.0.1")
        client.__enter__()
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.__exit__(None, None, None)


def serve_on_loopback(app) -> tuple[str, object]:  # noqa: ANN001 - a FastAPI app
    """Run ``app`` under uvicorn on a free 127.0.0.1 port; return (base URL, server)."""
    return serve_on(app, "127.0.0.1")


def serve_on(app, host: str) -> tuple[str, object]:  # noqa: ANN001 - a FastAPI app
    """Run ``app`` under uvicorn bound to ``host`` (``0.0.0.0``: every address) on a free port;
    return (the base URL on 127.0.0.1, the server)."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return base, server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def build_tiny_bert(folder: Path, words: list[str], head: str = "none", **config: int) -> Path:
    """Save a random 1-layer BERT (hidden 16) with a word-level vocabulary to ``folder``;
    ``head`` "classifier" adds a one-label sequence-classification head (a cross-encoder)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n"
    )
    # transformers 5 ignores vocab_file=: every token would be [UNK]
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    settings = {
        "vocab_size": len(words) + 5,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        **config,
    }
    if head == "classifier":
        BertForSequenceClassification(BertConfig(num_labels=1, **settings)).save_pretrained(folder)
    else:
        BertModel(BertConfig(**settings)).save_pretrained(folder)
    return folder


# the tiny sentence-transformers model's vocabulary (embedder and retriever-tuning tests)
ST_WORDS = [
    "apt",
    "grub",
    "kernel",
    "bash",
    "dpkg",
    "mirror",
    "shell",
    "boot",
    "archive",
    "menu",
    "package",
    "install",
    "login",
    "disk",
    "file",
    "user",
]


def tiny_st_model(folder: Path):
    """A sentence-transformers model over a random tiny BERT (``ST_WORDS``, mean pooling); its
    BERT is saved under ``folder``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    word = Transformer(str(build_tiny_bert(folder, ST_WORDS, max_position_embeddings=32)))
    return SentenceTransformer(
        modules=[word, Pooling(word.get_embedding_dimension())], device="cpu"
    )


def make_lora(base: Path, out: Path, seed: int) -> Path:
    """A LoRA with random (non-zero) weights, so it changes what the model says."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=4,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
    )
    get_peft_model(model, config).save_pretrained(out, safe_serialization=True)
    return out


def poll_state(client, url: str, state: str, timeout: float) -> dict:  # noqa: ANN001 - TestClient
    """GET ``url`` until the body's ``state`` is ``state``; after ``timeout`` seconds fail with
    the last body."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(url).json()
        if body["state"] == state:
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"{url} never {state}: {body}")


PROMPTS = [  # what the engine tests batch: short and long, sharing no prompt head
    "what is debian ?",
    "how to install a package with apt on debian ?",
    "kernel",
    "who is the user of the system and what is the file ?",
]


def chat_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """A chat-format JSONL training file of (question, answer) pairs at ``path``."""
    with path.open("w") as f:
        for q, a in pairs:
            turns = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": turns}) + "\n")
    return path


def msgs(q: str) -> list[dict[str, str]]:
    """``q`` as a one-message chat."""
    return [{"role": "user", "content": q}]


def plant_row(index: Path, doc_id: str, metadata_text: str, new_id: str | None = None) -> None:
    """Overwrite a stored document row straight in SQLite, past every check of the write path
    (metadata as raw text, optionally a new id): what an older version may have stored."""
    import sqlite3

    from retriever.index import DB_NAME

    db = sqlite3.connect(index / DB_NAME)
    with db:
        db.execute("PRAGMA foreign_keys=OFF")
        db.execute("UPDATE documents SET metadata=? WHERE id=?", (metadata_text, doc_id))
        if new_id is not None:
            db.execute("UPDATE documents SET id=? WHERE id=?", (new_id, doc_id))
            db.execute("UPDATE chunks SET doc_id=? WHERE doc_id=?", (new_id, doc_id))
    db.close()


def wait_ready(base: str, proc: Any, timeout: float) -> bool:
    """Whether the server at ``base`` (the process ``proc``) answered ``/readyz`` 200 within
    ``timeout`` seconds; False as soon as the process has exited."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    return False
