"""The in-context modes: demonstrations never hold an asked question, they take only the room
the question and the passages leave, the training split is read, the CLI's options fail in one
line, the diagnosis recommends prompting when it matches fine-tuning, and a run on tiny models
reports icl and rag-icl beside the other modes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from eval import diagnose
from eval.config import EvalOptions, demonstrates, needs_adapter, retrieves, serving_mode
from eval.index_cache import Retrieved
from eval.shots import Shot, ShotError, choose, exclude
from eval.systems import Decoder, System
from retriever.index import Hit
from tuner.synth import normalize

ASKED = ["What does apt do?", "Which shell is the login shell?"]
POOL = [
    Shot("what does APT do", "it installs packages", "train:t1"),  # an asked question, recased
    Shot("Which shell is the login shell", "bash", "train:t2"),  # asked, without its mark
    Shot("What unpacks a package file?", "dpkg", "train:t3"),
    Shot("What shows the boot menu?", "grub", "train:t4"),
    Shot("What holds the archive?", "the mirror", "train:t5"),
    Shot("what holds the archive", "the mirror again", "train:t6"),  # a repeat of t5
]


def bag_of_words(texts: list[str]) -> np.ndarray:
    """A deterministic stand-in embedder: hashed word counts."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in normalize(text).split():
            out[i, sum(map(ord, word)) % 64] += 1.0
    return out


# ---- choosing -----------------------------------------------------------------------------
def test_no_demonstration_is_an_asked_question_however_it_is_written() -> None:
    kept = exclude(POOL, ASKED)
    assert [s.source for s in kept] == ["train:t3", "train:t4", "train:t5"]
    asked = {normalize(q) for q in ASKED}
    for how in ("similar", "random"):
        # even a pool that still holds the asked questions never shows one to its own question
        for pool in (kept, POOL):
            got = choose(pool, ASKED, 3, how, seed=0, encode=bag_of_words)
            assert [len(g) for g in got] == [3, 3]
            for question, shots in zip(ASKED, got, strict=True):
                assert normalize(question) not in {normalize(s.question) for s in shots}
        got = choose(kept, ASKED, 3, how, seed=0, encode=bag_of_words)
        assert all(normalize(s.question) not in asked for g in got for s in g)


def test_similar_puts_the_nearest_first_and_random_follows_the_seed() -> None:
    kept = exclude(POOL, ASKED)
    (first,) = choose(kept, ["what holds the package archive"], 1, "similar", 0, bag_of_words)
    assert first[0].source == "train:t5"
    a = choose(kept, ASKED, 2, "random", seed=1)
    assert a == choose(kept, ASKED, 2, "random", seed=1)
    assert (
        len(
            {
                tuple(s.source for s in g)
                for seed in range(6)
                for g in choose(kept, ASKED, 2, "random", seed)
            }
        )
        > 1
    )
    assert choose(kept[:1], ASKED, 3, "random", 0) == [kept[:1], kept[:1]]  # fewer when small
    with pytest.raises(ShotError, match="similar, random"):
        choose(kept, ASKED, 1, "nearest", 0)


def test_what_the_in_context_modes_do() -> None:
    assert [serving_mode(m) for m in ("icl", "rag-icl", "hybrid")] == ["base", "rag", "hybrid"]
    assert [m for m in ("base", "icl", "rag", "rag-icl") if retrieves(m)] == ["rag", "rag-icl"]
    assert [m for m in ("icl", "rag-icl", "ft") if needs_adapter(m)] == ["ft"]
    assert [m for m in ("icl", "rag-icl", "rag") if demonstrates(m)] == ["icl", "rag-icl"]
    for field, value, message in [
        ("shots", 0, r"shots: must be an integer in \[1, 32\]"),
        ("shots_from", "dev", "shots_from: choose from auto, train, synth"),
        ("shot_choice", "nearest", "shot_choice: choose from similar, random"),
        ("modes", ("icl", "chat"), "modes: choose from base, icl, rag, rag-icl, ft, hybrid"),
    ]:
        with pytest.raises(ValueError, match=message):
            EvalOptions(dataset=Path("x"), **{field: value})  # type: ignore[arg-type]


# ---- the token budget ---------------------------------------------------------------------
class Job:
    def __init__(self, text: str) -> None:
        self.text, self.tokens = text, [1]
        self.queued_at = self.started_at = 1.0
        self.finished_at = 1.5
        self.done = SimpleNamespace(wait=lambda _=None: True)

    def wait(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class Engine:
    """One token a word, in a model of ``context`` tokens; keeps every prompt it is given."""

    def __init__(self, context: int) -> None:
        config = SimpleNamespace(max_position_embeddings=context)
        self.generator = SimpleNamespace(model=SimpleNamespace(config=config))
        self.adapters: Any = None
        self.prompts: list[list[dict]] = []

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return [0 for m in messages for _ in m["content"].split()]

    def submit(self, messages: list[dict], max_new_tokens: int, **_: Any) -> Job:
        self.prompts.append(messages)
        return Job("ok")


def words(tag: str, n: int) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


SHOTS = [Shot(f"q{i} " + words(f"s{i}q", 9), words(f"s{i}a", 10), f"t{i}") for i in range(3)]


def test_demonstrations_give_way_to_the_passages_rag_would_show() -> None:
    """Each demonstration is 20 tokens; rag's prompt with its three passages and the question
    is 149. In 200 tokens less 8 for the answer, rag-icl holds the same three passages, whole,
    and the two demonstrations that still fit (the least similar, last of ``SHOTS``, dropped)."""
    engine = Engine(context=200)
    decoder = Decoder(engine, 8, total=2)
    passages = [Hit(f"d{i}", i, 0, 1, 1.0, words(f"p{i}w", 30), {}) for i in range(3)]
    rag = System("rag", None, 3, decoder).prepare("the question", passages, 8)
    icl = System("rag-icl", None, 3, decoder).prepare("the question", passages, 8, SHOTS)
    assert icl.hits == rag.hits and len(rag.hits) == 3  # every passage, none cut
    held = [m["content"] for m in icl.prompt if m["role"] == "user"]
    assert held[-1] == "the question"
    assert held[:-1] == [SHOTS[1].question, SHOTS[0].question]  # the nearest last
    assert len(engine.encode_chat(rag.prompt)) == 149
    assert len(engine.encode_chat(icl.prompt)) + 8 <= 200
    (answer,) = System("rag-icl", None, 3, decoder).answer(
        ["the question"], [Retrieved(passages, 0.0)], shots=[SHOTS], count=False
    )
    assert answer.shots == held[:-1] and answer.shown == rag.hits


def test_all_demonstrations_fit_a_large_context_and_none_when_the_question_is_cut() -> None:
    decoder = Decoder(Engine(context=4096), 8, total=1)
    icl = System("icl", None, 3, decoder).prepare("the question", [], 8, SHOTS)
    roles = [m["role"] for m in icl.prompt]
    assert roles == ["user", "assistant"] * 3 + ["user"]
    assert [m["content"] for m in icl.prompt[:2]] == [SHOTS[2].question, SHOTS[2].answer]
    small = Decoder(Engine(context=28), 8, total=1)  # 20 tokens left for the prompt
    long_q = words("w", 30)
    cut = System("icl", None, 3, small).prepare(long_q, [], 8, SHOTS)
    assert len(cut.prompt) == 1 and long_q.startswith(cut.prompt[0]["content"])
    fits = System("icl", None, 3, small).prepare("short question", [], 8, SHOTS)
    assert [m["role"] for m in fits.prompt] == ["user"]  # no demonstration fits beside it
    with pytest.raises(ValueError, match="one list of demonstrations per question"):
        System("icl", None, 3, small).answer(["q"], [Retrieved([], 0.0)])


# ---- datasets -----------------------------------------------------------------------------
def test_the_training_split_is_read_and_never_asked(tmp_path: Path) -> None:
    from eval.datasets.formats import DatasetError, load

    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(3))
    )
    queries = [{"_id": f"q{i}", "text": f"question {i}", "answer": f"a{i}"} for i in range(3)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    (folder / "qrels" / "train.tsv").write_text("q1\td1\t1\nq2\td2\t1\n")
    beir = load(folder)
    assert [q.id for q in beir.questions] == ["q0"] and [q.id for q in beir.train] == ["q1", "q2"]
    assert beir.limited(1).train == beir.train

    rows = [
        {"context": "apt installs", "question": "what installs", "answers": ["apt"]},
        {"context": "grub boots", "question": "what boots", "answers": ["grub"], "split": "train"},
    ]
    squad = tmp_path / "s.jsonl"
    squad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = load(squad)
    assert [q.text for q in got.questions] == ["what installs"]
    assert [q.text for q in got.train] == ["what boots"] and len(got.corpus or []) == 2
    squad.write_text(json.dumps({**rows[0], "split": 3}) + "\n")
    with pytest.raises(DatasetError, match="'split' must be a non-empty string"):
        load(squad)


# ---- the command line ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shots", "0"], "--shots: must be an integer in [1, 32], got 0"),
        (["--shots-from", "dev"], "--shots-from: choose from auto, train, synth; got 'dev'"),
        (["--shot-choice", "near"], "--shot-choice: choose from similar, random; got 'near'"),
        (["--modes", "icl", "--shots-from", "train"], "--shots-from train: "),
    ],
)
def test_bad_shot_options_exit_with_one_line_naming_the_option(
    args: list[str], message: str, squad_file: Path, tiny_llama: Path, tiny_st: Path
) -> None:
    from eval.cli import main

    env = {"RAGTUNE_GENERATOR": str(tiny_llama), "RAGTUNE_EMBEDDER": str(tiny_st)}
    result = CliRunner().invoke(main, ["eval", "--dataset", str(squad_file), *args], env=env)
    assert result.exit_code == 1, result.output
    errors = [
        line
        for line in result.output.splitlines()
        if line.strip() and not line.startswith("eval: ")
    ]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and message in errors[0]


# ---- the diagnosis ------------------------------------------------------------------------
def _summary(diff: tuple[float, float, float], prompted: str = "icl") -> tuple[dict, list]:
    means = {"icl": 0.30, "rag-icl": 0.31, "ft": 0.28, "hybrid": 0.29}
    metrics = {m: {"token_f1": {"mean": v}} for m, v in means.items()}
    mean, low, high = diff  # hybrid - prompted, as stats.summarize orders the pair
    comparisons = [
        {"metric": "token_f1", "a": prompted, "b": "hybrid", "mean_diff": mean,
         "ci_low": low, "ci_high": high, "n": 10, "better": None},
        {"metric": "token_f1", "a": prompted, "b": "ft", "mean_diff": -0.2,
         "ci_low": -0.3, "ci_high": -0.1, "n": 10, "better": prompted},
    ]  # fmt: skip
    return metrics, comparisons


def test_the_diagnosis_recommends_prompting_when_it_matches_or_beats_fine_tuning() -> None:
    modes = ("icl", "ft", "hybrid")
    metrics, comparisons = _summary((0.01, -0.02, 0.04))  # hybrid - icl holds 0
    verdict = diagnose.prompting(metrics, comparisons, modes)
    assert verdict is not None and verdict["best_tuned"] == "hybrid"
    by_pair = {(p["prompting"], p["tuned"]): p for p in verdict["pairs"]}
    assert by_pair["icl", "hybrid"]["verdict"] == "matches"
    assert by_pair["icl", "hybrid"]["ci_low"] == pytest.approx(-0.04)  # icl - hybrid
    assert by_pair["icl", "ft"]["verdict"] == "beats"
    assert verdict["recommend"] == "prompting" and "do not train" in verdict["message"]
    diagnosis = {"action": "tune the generator", "commands": ["ragtune tune ..."]}
    diagnose.prefer_prompting(diagnosis, verdict)
    assert diagnosis["action"].startswith("prompt, do not train")
    assert diagnosis["tuning_action"] == "tune the generator"

    metrics, comparisons = _summary((0.1, 0.05, 0.15))  # hybrid wholly above icl
    behind = diagnose.prompting(metrics, comparisons, modes)
    assert behind is not None and behind["recommend"] == "training"
    kept = {"action": "tune the generator"}
    diagnose.prefer_prompting(kept, behind)
    assert kept == {"action": "tune the generator"}
    assert diagnose.prompting(metrics, comparisons, ("icl", "rag")) is None  # nothing tuned


def test_the_report_says_what_the_prompting_verdict_is() -> None:
    from eval.report import render_markdown

    metrics, comparisons = _summary((-0.06, -0.1, -0.02))  # icl beats hybrid
    verdict = diagnose.prompting(metrics, comparisons, ("icl", "ft", "hybrid"))
    md = render_markdown({"run": {"modes": ["icl", "ft", "hybrid"]}, "prompting": verdict}, [])
    assert "## Diagnosis" in md and "Recommendation: prompting" in md
    assert "| icl − hybrid | 0.060 [0.020, 0.100] | 10 | beats |" in md


# ---- a run on tiny models -----------------------------------------------------------------
@pytest.mark.slow
def test_a_run_reports_icl_and_rag_icl_with_demonstrations_from_the_training_split(
    squad_file: Path, eval_settings: Any, tmp_path: Path
) -> None:
    from eval.harness import run_eval

    train = [
        ("dpkg unpacks a package file", "WHAT unpacks a package file?", "dpkg"),  # asked
        ("tar packs files into one archive", "what packs files", "tar"),
        ("ssh opens a remote shell", "what opens a remote shell", "ssh"),
        ("cron runs jobs on a schedule", "what runs jobs on a schedule", "cron"),
    ]
    with squad_file.open("a") as f:
        for i, (context, question, answer) in enumerate(train):
            row = {"id": f"t{i}", "context": context, "question": question, "answers": [answer]}
            f.write(json.dumps({**row, "split": "train"}) + "\n")
    modes = ("base", "icl", "rag", "rag-icl", "ft", "hybrid")
    options = EvalOptions(
        dataset=squad_file,
        modes=modes,
        ft_adapter="gamma-v1",
        shots=2,
        resamples=200,
        max_new_tokens=4,
        probes=False,
    )
    out = tmp_path / "run"
    metrics = run_eval(options, out, eval_settings)
    assert list(metrics["metrics"]) == list(modes)
    assert metrics["run"]["shots"] == {
        "n": 2, "from": "train", "choice": "similar", "pool": 3, "excluded": 1
    }  # fmt: skip
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    asked = {normalize(r["question"]) for r in rows}
    shown = [r for r in rows if r["mode"] in ("icl", "rag-icl")]
    assert len(shown) == 12 and all(len(r["shots"]) == 2 for r in shown)
    assert all(normalize(q) not in asked for r in shown for q in r["shots"])
    assert all("groundedness" in r["metrics"] for r in rows if r["mode"] == "rag-icl")
    assert all("groundedness" not in r["metrics"] for r in rows if r["mode"] == "icl")
    pairs = {(c["a"], c["b"]) for c in metrics["comparisons"] if c["metric"] == "token_f1"}
    assert {("base", "icl"), ("rag", "rag-icl"), ("icl", "ft"), ("rag-icl", "hybrid")} <= pairs
    verdict = metrics["prompting"]
    assert verdict["recommend"] in ("prompting", "training")
    assert {(p["prompting"], p["tuned"]) for p in verdict["pairs"]} == {
        ("icl", "ft"), ("icl", "hybrid"), ("rag-icl", "ft"), ("rag-icl", "hybrid")
    }  # fmt: skip
    report = (out / "report.md").read_text()
    assert "rag-icl" in report and "Prompting vs fine-tuning" in report


@pytest.mark.slow
def test_synthesised_demonstrations_come_from_the_indexed_documents(
    tmp_path: Path, eval_settings: Any
) -> None:
    from eval.harness import run_eval

    rows = [
        ("The dpkg tool is a low-level package manager for Debian systems.", "what is dpkg"),
        ("To install a package, run apt install with the package name.", "how to install"),
        ("The grub loader is the program that starts the kernel at boot.", "what starts it"),
    ]
    data = tmp_path / "synth.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "context": c, "question": q, "answers": ["x"]}) + "\n"
            for i, (c, q) in enumerate(rows)
        )
    )
    options = EvalOptions(
        dataset=data,
        modes=("icl",),
        shots=1,
        shots_from="synth",
        shot_choice="random",
        resamples=100,
        max_new_tokens=3,
        probes=False,
    )
    metrics = run_eval(options, tmp_path / "run", eval_settings)
    assert metrics["run"]["shots"]["from"] == "synth" and metrics["run"]["shots"]["pool"] >= 2
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    shown = [q for r in map(json.loads, lines) for q in r["shots"]]
    assert len(shown) == 3 and all(q.startswith(("What is", "How can")) for q in shown)
