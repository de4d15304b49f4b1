"""Test builders: a tiny random Llama with a real tokenizer, saved like a hub model."""

from __future__ import annotations

from pathlib import Path

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
            state.adapters = AdapterSet(state.generator, adapters)
        state.engine = GenerationEngine(
            state.generator, metrics=state.metrics, adapters=state.adapters
        )
        state.retriever = Retriever(tmp / index, state.embedder)

    return loader


def serve_on_loopback(app) -> tuple[str, object]:  # noqa: ANN001 - a FastAPI app
    """Run ``app`` under uvicorn on a free 127.0.0.1 port; return (base URL, server)."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
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
