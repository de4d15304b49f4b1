"""Ratings become preference rows with their prompts rebuilt exactly as served: kto rows and
dpo pairs from the real app's answer log, stale and disagreeing ratings left out with reasons;
then a dpo job through POST /v1/tune/jobs with a real worker trains on them and records the
feedback it used; the recipe and API refuse what cannot work, by field."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from service.preferences import collect, cut_off, rebuild
from service.settings import AnswerLogSettings, ApiKey, Settings
from tests.helpers import app_clients
from tuner.config import FeedbackSpec, Recipe
from tuner.preference_data import prompt_ids
from tuner.prepare import prepare_preferences
from tuner.registry import RegistryError

KEYS = {"ann": "key-for-ann-0123456789abcdef", "bob": "key-for-bob-0123456789abcdef"}
DOCS = [
    {"id": "apt", "text": "To install a package on debian run apt install as root."},
    {"id": "dpkg", "text": "dpkg installs a local package file; apt fetches it first."},
]
QUESTIONS = [f"how do I install package number {i} ?" for i in range(12)]


def _settings(tiny: Path, **extra: object) -> Settings:
    keys = [
        ApiKey(name="ann", key=KEYS["ann"], scopes=["read", "write", "admin"]),  # type: ignore[list-item]
        ApiKey(name="bob", key=KEYS["bob"], scopes=["read"]),  # type: ignore[list-item]
    ]
    return Settings(generator=str(tiny), auth_disabled=False, api_keys=keys, **extra)  # type: ignore[arg-type]


def _h(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _ask(client, question: str, chat: bool = False) -> dict:  # noqa: ANN001
    if chat:
        model = client.get("/v1/models", headers=_h("bob")).json()["data"][0]["id"]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 3,
        }
        r = client.post("/v1/chat/completions", json=body, headers=_h("bob"))
        assert r.status_code == 200, r.text
        return {"id": r.json()["id"], "answer": r.json()["choices"][0]["message"]["content"]}
    r = client.post(
        "/v1/query", json={"question": question, "max_new_tokens": 3, "k": 2}, headers=_h("bob")
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def _poll(client, url: str, timeout: float) -> dict:  # noqa: ANN001
    """GET ``url`` (as ann) until its job has finished, or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        body = dict(client.get(url, headers=_h("ann")).json())
        if body["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def _rate(client, answer_id: str, rating: str, who: str = "bob", **extra: str) -> None:  # noqa: ANN001
    body = {"answer_id": answer_id, "rating": rating, **extra}
    r = client.post("/v1/feedback", json=body, headers=_h(who))
    assert r.status_code in (200, 201), r.text


def _recipe(tiny: Path, method: str, **extra: object) -> Recipe:
    extra.setdefault("min_examples", 2)
    return Recipe(
        name=f"fb-{method}",
        method=method,
        base_model=str(tiny),
        datasets=[{"feedback": {}}],
        hyperparameters={"max_length": 512, "val_fraction": 0.0},
        **extra,  # type: ignore[arg-type]
    )


def test_rated_answers_become_rows_whose_prompts_are_the_served_ones(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_settings(tiny_llama))
        state = client.app.state.ragtune  # type: ignore[attr-defined]
        for doc in DOCS:
            assert client.post("/v1/documents", json=doc, headers=_h("ann")).status_code == 201
        up = _ask(client, QUESTIONS[0])
        down = _ask(client, QUESTIONS[1], chat=True)
        fixed = _ask(client, QUESTIONS[2])
        split = _ask(client, QUESTIONS[3])
        _rate(client, up["id"], "up")
        _rate(client, down["id"], "down")
        _rate(client, fixed["id"], "down", correction="run apt install [1]")
        _rate(client, split["id"], "up")
        _rate(client, split["id"], "down", who="ann")  # two keys disagree
        state.answers.flush()
        log, retriever = state.answers, state.retriever

        kto, used = collect(log, retriever, FeedbackSpec(), _recipe(tiny_llama, "kto"))
        by_answer = {
            r.meta["answer_ids"][0]: r for r in kto if r.completion != "run apt install [1]"
        }
        assert set(by_answer) == {up["id"], down["id"], fixed["id"]}
        assert by_answer[up["id"]].label is True and by_answer[down["id"]].label is False
        assert used["skipped"] == {"ratings of one answer disagree": 2}
        assert len(kto) == 4  # three rated answers and the correction as a desirable row
        assert f"{up['id']}:bob" in used["feedback_ids"]

        # The rebuilt prompt is the served one: its hash is the logged one, and its tokens are
        # those the engine prefilled.
        record = log.get(fixed["id"])
        prompt = rebuild(record, retriever)
        assert "apt install as root" in prompt[0]["content"]
        assert record["prompt_tokens"] == len(prompt_ids(state.generator.tokenizer, prompt))

        # Three-token answers end at their limit: they train without an end of turn; the
        # correction, written anew, is a whole answer.
        for answer_id, row in by_answer.items():
            cut = log.get(answer_id)["finish_reason"] == "length"
            assert row.cut == (("completion",) if cut else ())
        assert any(row.cut for row in by_answer.values())

        dpo, used = collect(log, retriever, FeedbackSpec(), _recipe(tiny_llama, "dpo"))
        assert [(r.chosen, r.rejected) for r in dpo] == [("run apt install [1]", fixed["answer"])]
        assert "chosen" not in dpo[0].cut
        assert ("rejected" in dpo[0].cut) is (record["finish_reason"] == "length")

        # A document edit makes its ratings stale: left out, with the reason.
        changed = {"text": "apt was replaced by something else entirely here."}
        assert client.put("/v1/documents/apt", json=changed, headers=_h("ann")).status_code == 200
        kto, used = collect(log, retriever, FeedbackSpec(), _recipe(tiny_llama, "kto"))
        assert sum(used["skipped"].values()) >= 3
        assert any("changed" in reason for reason in used["skipped"])

        # The tuner checks what it is given, by line: too few rows for a recipe that wants more.
        tok = AutoTokenizer.from_pretrained(tiny_llama)
        with pytest.raises(ValueError, match="fewer than the minimum 50"):
            prepare_preferences(
                _recipe(tiny_llama, "kto", min_examples=50),
                tmp_path / "job",
                files_dir=tmp_path,
                tokenizer=tok,
                feedback=lambda spec, recipe: collect(log, retriever, spec, recipe),
            )


@pytest.mark.slow
def test_a_dpo_job_trains_on_feedback_through_the_api_with_a_real_worker(
    tiny_llama: Path, tmp_path: Path
) -> None:
    from service.routes.tune import make_job_runner

    def setup(state) -> None:  # noqa: ANN001 - service.app.AppState
        state.jobs = make_job_runner(state)

    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_settings(tiny_llama, device="cpu"), setup)
        for doc in DOCS:
            client.post("/v1/documents", json=doc, headers=_h("ann"))
        ids = []
        for i, q in enumerate(QUESTIONS):
            out = _ask(client, q)
            ids.append(out["id"])
            _rate(client, out["id"], "down", correction=f"run apt install [{1 + i % 2}] now {i}")
        body = {
            "method": "dpo",
            "dataset": {"feedback": {"corrections": True}},
            "parent": "promoted",
            "hyperparameters": {
                "max_steps": 3,
                "batch_size": 2,
                "val_fraction": 0.0,
                "learning_rate": 5e-3,
                "max_length": 512,
            },
            "preference": {"held_out": 0.25, "beta": 0.2},
        }
        r = client.post("/v1/tune/jobs", json=body, headers=_h("ann"))
        assert r.status_code == 202, r.text
        job = _poll(client, f"/v1/tune/jobs/{r.json()['id']}", 240)
        assert job["state"] == "succeeded", job
        assert job["method"] == "dpo" and job["progress"]["step"] == 3, job
        registry = client.app.state.ragtune.registry()  # type: ignore[attr-defined]
        record = registry.get(job["adapter"])
        assert record.method == "dpo" and record.parent is None  # nothing was promoted
        assert len(record.feedback_ids) == len(QUESTIONS)
        assert f"{ids[0]}:bob" in record.feedback_ids
        assert record.metrics["reward"]["rows"] == 3  # a quarter of the prompts held out
        # Promotion goes through the gate, which this adapter has not been through.
        with pytest.raises(RegistryError, match="eval gate"):
            registry.promote(record.id)


def test_the_api_refuses_what_a_preference_job_cannot_do(tiny_llama: Path, tmp_path: Path) -> None:
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_settings(tiny_llama))
        cases = [
            ({"method": "lora", "dataset": {"feedback": {}}}, "feedback"),
            ({"method": "kto", "dataset": {"synthetic": {"kind": "qa"}}}, "synthetic"),
            ({"method": "dpo", "dataset": {"feedback": {"since": -1}}}, "since"),
            ({"method": "dpo", "dataset": {"feedback": {}}, "preference": {"beta": 0}}, "beta"),
            (
                {"method": "lora", "dataset": {"feedback": {}}, "preference": {"beta": 1}},
                "preference",
            ),
            ({"method": "lora", "dataset": {"synthetic": {}}, "parent": "promoted"}, "parent"),
            ({"method": "lora", "dataset": {"feedback": {}}, "component": "retriever"}, "feedback"),
        ]
        for body, field in cases:
            r = client.post("/v1/tune/jobs", json=body, headers=_h("ann"))
            assert r.status_code == 422, (body, r.text)
            error = r.json()["error"]
            named = [error["message"]] + [str(d["loc"]) for d in error["details"] or []]
            assert any(field in n for n in named), (body, r.text)
        off = make(_settings(tiny_llama, answer_log=AnswerLogSettings(enabled=False)))
        r = off.post(
            "/v1/tune/jobs", json={"method": "kto", "dataset": {"feedback": {}}}, headers=_h("ann")
        )
        assert r.status_code == 422 and "answer log is off" in r.text, r.text


def test_uploaded_preference_files_are_recognised_and_matched_to_the_method(
    tiny_llama: Path, tmp_path: Path
) -> None:
    row = {"prompt": "q", "chosen": "good [1]", "rejected": "bad"}
    with app_clients(tiny_llama, tmp_path) as make:
        client = make(_settings(tiny_llama))
        data = (json.dumps(row) + "\n").encode() * 2
        r = client.post("/v1/files", files={"file": ("p.jsonl", data)}, headers=_h("ann"))
        assert r.status_code == 201 and r.json()["format"] == "dpo", r.text
        file_id = r.json()["id"]
        wrong = client.post(
            "/v1/tune/jobs", json={"method": "kto", "dataset": file_id}, headers=_h("ann")
        )
        assert wrong.status_code == 422 and "dpo records" in wrong.text
        sft = client.post(
            "/v1/tune/jobs", json={"method": "lora", "dataset": file_id}, headers=_h("ann")
        )
        assert sft.status_code == 422 and "dpo records" in sft.text


def test_an_answer_cut_by_its_limit_and_a_correction_keeping_its_end_are_cut() -> None:
    cut = {"finish_reason": "length", "answer": "Use apt to install a package on the"}
    whole = {**cut, "finish_reason": "stop"}
    assert cut_off(cut) and not cut_off(whole)
    assert cut_off(cut, "Use apt [1] to install a package on the")  # an edit inside it
    assert not cut_off(cut, "Use apt install [1].")  # rewritten: the user's answer is whole
    assert not cut_off(whole, "Use apt [1] to install a package on the")
    assert not cut_off({"finish_reason": None, "answer": "old record"})
