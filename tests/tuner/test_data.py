"""tuner.data: formats, templates, line-numbered errors, checks, split, masks, mix, hash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CHATML, WORDS
from tuner import data, mixing
from tuner.data import DataError, Example
from tuner.prompts import base_messages, rag_messages


@pytest.fixture(scope="module")
def tok(tiny_llama: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def jsonl(tmp_path: Path, *lines: Any, name: str = "d.jsonl") -> Path:
    """Write lines (str as is, anything else as JSON) to a file."""
    path = tmp_path / name
    text = [x if isinstance(x, str) else json.dumps(x) for x in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def qa(question: str, answer: str, **meta: Any) -> Example:
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example(turns, dict(meta))


def lines_of(exc: pytest.ExceptionInfo[DataError]) -> list[int]:
    return [n for n, _ in exc.value.problems]


# ---- formats ------------------------------------------------------------------------------------
def test_alpaca_parses_with_and_without_input(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        {"instruction": "what is apt", "input": "debian", "output": "a package tool"},
        {"instruction": "who", "input": "", "output": "the user", "system": "be short"},
    )
    first, second = data.read_jsonl(path)
    assert first.messages == [
        {"role": "user", "content": "what is apt\n\ndebian"},
        {"role": "assistant", "content": "a package tool"},
    ]
    assert second.messages[0] == {"role": "system", "content": "be short"}
    assert second.messages[1] == {"role": "user", "content": "who"}
    assert (first.meta["line"], second.meta["line"], first.meta["source"]) == (1, 2, "d.jsonl")


def test_chat_reads_openai_messages_and_sharegpt_conversations(tmp_path: Path) -> None:
    turns = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    share = [
        {"from": "human", "value": "q1"},
        {"from": "gpt", "value": "a1"},
        {"from": "human", "value": "q2"},
        {"from": "gpt", "value": "a2"},
    ]
    path = jsonl(tmp_path, {"messages": turns}, {"conversations": share, "system": "s"})
    openai, sharegpt = data.read_jsonl(path)
    assert openai.messages == turns
    assert sharegpt.messages == turns


def test_prompt_completion_parses(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"prompt": "capital of france?", "completion": "paris"})
    (example,) = data.read_jsonl(path, format="prompt_completion")
    assert example.messages == [
        {"role": "user", "content": "capital of france?"},
        {"role": "assistant", "content": "paris"},
    ]


def test_format_is_detected_from_the_first_record_and_others_are_reported(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        "",
        {"instruction": "a", "output": "b"},
        {"instruction": "c", "output": "d"},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"nothing": "here"},
    )
    with pytest.raises(DataError) as exc:
        data.read_jsonl(path)
    assert exc.value.problems == [
        (4, "record is chat, but the file is alpaca (detected from line 2)"),
        (5, "missing field 'instruction'"),
    ]


def test_a_file_naming_no_format_says_what_it_expects(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"q": "a"}, {"x": 1})
    with pytest.raises(DataError) as exc:
        data.read_jsonl(path)
    assert lines_of(exc) == [1, 2]
    assert "'messages'" in exc.value.problems[0][1] and "alpaca" in exc.value.problems[0][1]


def test_malformed_lines_are_all_reported_with_their_numbers(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        {"prompt": "ok", "completion": "fine"},
        '{"prompt": "broken", ',
        {"prompt": "no completion"},
        {"prompt": "ok", "completion": "fine too"},
        {"prompt": "empty", "completion": "   "},
        {"prompt": 3, "completion": "x"},
        "[1, 2]",
        {"prompt": "ok", "completion": "last"},
    )
    with pytest.raises(DataError) as exc:
        data.read_jsonl(path)
    assert lines_of(exc) == [2, 3, 5, 6, 7]
    messages = dict(exc.value.problems)
    assert messages[2].startswith("not JSON")
    assert messages[3] == "missing field 'completion'"
    assert messages[5] == "empty answer (field 'completion')"
    assert messages[6] == "field 'prompt' must be a string, got int"
    assert "JSON object" in messages[7]
    assert f"{path}:3: missing field 'completion'" in str(exc.value)


@pytest.mark.parametrize(
    ("record", "want"),
    [
        ({"messages": [{"role": "user", "content": "q"}]}, "the last turn must be the assistant's"),
        ({"messages": [{"role": "bot", "content": "q"}]}, "role must be one of"),
        ({"messages": "hi"}, "must be a list of objects"),
        ({"messages": [{"role": "user", "content": ["q"]}]}, "content' must be a string"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
            "turn 1: empty answer",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}]},
            "turn 0 is 'assistant' where 'user' belongs",
        ),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "'from' must be human, gpt"),
        ({"conversations": []}, "no turns"),
    ],
)
def test_bad_conversations_are_refused(tmp_path: Path, record: Any, want: str) -> None:
    good = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    path = jsonl(tmp_path, {"messages": good}, record)
    with pytest.raises(DataError) as exc:
        data.read_jsonl(path, format="chat")
    assert lines_of(exc) == [2]
    assert want in dict(exc.value.problems)[2]


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no records"):
        data.read_jsonl(jsonl(tmp_path, ""))


def test_bad_arguments_are_value_errors(tmp_path: Path) -> None:
    path = jsonl(tmp_path, {"question": "q", "answer": "a"})
    with pytest.raises(ValueError, match="format"):
        data.read_jsonl(path, format="csv")
    with pytest.raises(ValueError, match="template"):
        data.read_jsonl(path, template="poetry")
    with pytest.raises(ValueError, match="leave format as 'auto'"):
        data.read_jsonl(path, format="alpaca", template="qa")


# ---- task templates -----------------------------------------------------------------------------
def test_qa_template_asks_with_the_service_prompts(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        {"question": "what is apt?", "context": "apt installs packages.", "answer": "a tool"},
        {"question": "what is apt?", "answer": "a tool"},
    )
    grounded, closed = data.read_jsonl(path, template="qa")
    passage = data._Context("context-1", "apt installs packages.")
    assert grounded.messages[:-1] == rag_messages("what is apt?", [passage])
    assert closed.messages[:-1] == base_messages("what is apt?")
    assert (
        grounded.messages[-1] == closed.messages[-1] == {"role": "assistant", "content": "a tool"}
    )


def test_summarization_translation_classification_templates(tmp_path: Path) -> None:
    s = data.read_jsonl(
        jsonl(tmp_path, {"text": "long", "summary": "short"}), template="summarization"
    )
    assert s[0].messages[0]["content"] == "Summarize the following text.\n\nlong"
    assert s[0].messages[1]["content"] == "short"
    t = data.read_jsonl(
        jsonl(
            tmp_path,
            {
                "text": "hallo",
                "translation": "hello",
                "source_lang": "German",
                "target_lang": "English",
            },
        ),
        template="translation",
    )
    assert (
        t[0]
        .messages[0]["content"]
        .startswith("Translate the following text from German to English.")
    )
    c = data.read_jsonl(
        jsonl(tmp_path, {"text": "apt broke", "label": "bug", "labels": ["bug", "question"]}),
        template="classification",
    )
    assert "Answer with one of: bug, question." in c[0].messages[0]["content"]
    assert c[0].messages[1]["content"] == "bug"


def test_template_field_problems_carry_line_numbers(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        {"text": "x", "label": "spam", "labels": ["bug", "question"]},
        {"text": "x", "label": "bug", "labels": "bug"},
        {"text": "x", "label": ""},
        {"text": "x", "label": "bug"},
    )
    with pytest.raises(DataError) as exc:
        data.read_jsonl(path, template="classification")
    assert lines_of(exc) == [1, 2, 3]
    with pytest.raises(DataError) as exc:
        data.read_jsonl(jsonl(tmp_path, {"text": "x", "translation": "y"}), template="translation")
    assert exc.value.problems == [(1, "missing field 'target_lang'")]


# ---- writing ------------------------------------------------------------------------------------
def test_write_jsonl_reads_back_as_chat_with_meta(tmp_path: Path) -> None:
    examples = [qa("what is apt", "a tool", doc_ids=["d1"]), qa("who", "the user")]
    path = tmp_path / "out" / "train.jsonl"
    data.write_jsonl(examples, path)
    back = data.read_jsonl(path, format="chat")
    assert [e.messages for e in back] == [e.messages for e in examples]
    assert back[0].meta["doc_ids"] == ["d1"] and back[1].meta["line"] == 2
    assert mixing.dataset_hash(back) == mixing.dataset_hash(examples)
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temp file left


# ---- validate -----------------------------------------------------------------------------------
def test_validate_passes_good_data(tok: Any) -> None:
    examples = [qa("what is apt", "a tool"), qa("who", "the user")]
    assert data.validate(examples, tok, max_length=64, min_count=2) == examples


def test_validate_reports_duplicates_length_and_count_together(tok: Any) -> None:
    examples = [
        qa("what is apt", "a tool", line=3),
        qa("who", "the user " * 40, line=4),
        qa("what is apt", "a tool", line=9),
    ]
    with pytest.raises(DataError) as exc:
        data.validate(examples, tok, max_length=64, min_count=5)
    problems = dict(exc.value.problems)
    assert sorted(problems) == [0, 4, 9]
    assert problems[9] == "duplicate of line 3"
    assert "over max_length 64" in problems[4]
    assert problems[0] == "3 examples, fewer than the minimum 5"


def test_validate_refuses_empty_answers_built_in_code(tok: Any) -> None:
    with pytest.raises(DataError) as exc:
        data.validate([qa("who", "the user"), qa("what", " ")], tok, 64, 1)
    assert exc.value.problems == [(2, "turn 1: empty answer")]


# ---- split --------------------------------------------------------------------------------------
def test_split_is_deterministic_disjoint_and_order_free() -> None:
    examples = [qa(f"question {i}", f"answer {i}") for i in range(50)]
    train, val, test = mixing.split(examples, 0.2, 0.1, seed=7)
    assert (len(train), len(val), len(test)) == (35, 10, 5)
    ids = [id(e) for e in train + val + test]
    assert sorted(ids) == sorted(id(e) for e in examples)
    assert mixing.split(examples, 0.2, 0.1, seed=7) == (train, val, test)
    shuffled = mixing.split(list(reversed(examples)), 0.2, 0.1, seed=7)
    assert {id(e) for e in shuffled[1]} == {id(e) for e in val}
    assert mixing.split(examples, 0.2, 0.1, seed=8)[1] != val


def test_split_keeps_a_train_set_and_checks_fractions() -> None:
    examples = [qa(f"q {i}", "a") for i in range(3)]
    train, val, test = mixing.split(examples, 0.1, 0.1, seed=0)
    assert (len(train), len(val), len(test)) == (1, 1, 1)
    assert mixing.split(examples[:1], 0.5, 0.0, seed=0) == (examples[:1], [], [])
    with pytest.raises(ValueError):
        mixing.split(examples, 0.6, 0.4, seed=0)


# ---- encode -------------------------------------------------------------------------------------
def labelled_spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for i, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if label == data.IGNORE:
            continue
        assert label == token
        if spans and labels[i - 1] != data.IGNORE:
            spans[-1].append(token)
        else:
            spans.append([token])
    return spans


def test_encode_trains_on_assistant_turns_and_their_end_token_only(tok: Any) -> None:
    answers = ["paris is the capital of france", "apt is a package"]
    example = Example(
        [
            {"role": "system", "content": "the assistant"},
            {"role": "user", "content": "what is the capital of france?"},
            {"role": "assistant", "content": answers[0]},
            {"role": "user", "content": "what is apt?"},
            {"role": "assistant", "content": answers[1]},
        ]
    )
    out = data.encode(example, tok, max_length=128)
    whole = tok.apply_chat_template(example.messages, tokenize=True)["input_ids"]
    assert out["input_ids"] == whole
    spans = labelled_spans(out["input_ids"], out["labels"])
    want = [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]
    assert spans == want
    assert [tok.decode(s) for s in spans] == [f"{a} <|im_end|>" for a in answers]
    assert sum(label != data.IGNORE for label in out["labels"]) == sum(map(len, want))


def newline_tokenizer() -> Any:
    """A tokenizer that keeps '\\n' as a token, like real ChatML models' tokenizers."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS + list("?.,!:") + ["\n"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), "removed", invert=True)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tok.chat_template = CHATML
    return tok


def test_encode_leaves_the_newline_after_the_end_token_unlabelled() -> None:
    tok = newline_tokenizer()
    out = data.encode(qa("what is apt?", "apt is a package"), tok, max_length=64)
    assert out["input_ids"][-2:] == [tok.eos_token_id, tok.convert_tokens_to_ids("\n")]
    spans = labelled_spans(out["input_ids"], out["labels"])
    assert tok.convert_ids_to_tokens(spans[0]) == ["apt", "is", "a", "package", "<|im_end|>"]
    assert len(spans) == 1 and out["labels"][-1] == data.IGNORE


class ListTokenizer:
    """A tokenizer whose apply_chat_template returns a plain list (older transformers)."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> list[int]:
        return list(self.tok.apply_chat_template(messages, **kwargs)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids))


def test_encode_accepts_a_plain_list_from_the_template(tok: Any) -> None:
    example = qa("what is apt?", "apt is a package")
    assert data.encode(example, ListTokenizer(tok), 64) == data.encode(example, tok, 64)


def test_encode_refuses_a_template_that_is_not_prefix_stable(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.chat_template = "{% if messages|length > 2 %}the {% endif %}" + CHATML
    example = qa("what", "apt", line=7)
    example.messages.insert(0, {"role": "system", "content": "the"})
    with pytest.raises(DataError) as exc:
        data.encode(example, tok, 64)
    assert exc.value.problems[0][0] == 7 and "not prefix-stable" in exc.value.problems[0][1]


def test_encode_refuses_an_example_over_max_length(tok: Any) -> None:
    with pytest.raises(DataError, match="over max_length 8"):
        data.encode(qa("what is apt", "apt is a package"), tok, max_length=8)


# ---- collate, mix, hash -------------------------------------------------------------------------
def test_collate_right_pads_with_masks() -> None:
    batch = data.collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_id=2,
    )
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "input_ids": (2, 3),
        "attention_mask": (2, 3),
        "labels": (2, 3),
    }
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_mix_follows_the_weights_and_is_deterministic() -> None:
    big = [qa(f"big {i}", "a") for i in range(30)]
    small = [qa(f"small {i}", "b") for i in range(4)]
    mixed = mixing.mix([big, small], [1.0, 1.0], seed=3, total=20)
    assert sum(e in small for e in mixed) == 10 and sum(e in big for e in mixed) == 10
    counts = [sum(e is s for e in mixed) for s in small]
    assert sorted(counts) == [2, 2, 3, 3]  # up-weighted evenly, not at random
    assert len({id(e) for e in mixed if e in big}) == 10  # no repeats where not needed
    assert [e in small for e in mixed] != [False] * 10 + [True] * 10  # shuffled together
    assert mixing.mix([big, small], [1.0, 1.0], seed=3, total=20) == mixed
    assert mixing.mix([big, small], [1.0, 1.0], seed=4, total=20) != mixed
    default = mixing.mix([big, small], [3.0, 1.0], seed=0)
    assert len(default) == 34 and sum(e in small for e in default) == 8
    with pytest.raises(ValueError):
        mixing.mix([big, []], [1.0, 1.0], seed=0)


def test_dataset_hash_is_stable_and_ignores_meta() -> None:
    examples = [qa("what is apt", "a tool", line=1), qa("who", "the user")]
    assert mixing.dataset_hash(examples) == (
        "9cbffe4ee84fa47f5d15c3f2c213d0e66d42e2ab198624aa68a14dfcb730ddcf"
    )
    assert mixing.dataset_hash([qa("what is apt", "a tool", line=9), qa("who", "the user")]) == (
        mixing.dataset_hash(examples)
    )
    assert mixing.dataset_hash([qa("what is apt", "a tool!"), examples[1]]) != mixing.dataset_hash(
        examples
    )
    assert mixing.dataset_hash(examples[::-1]) != mixing.dataset_hash(examples)


def test_data_error_lists_the_first_twenty_problems() -> None:
    error = DataError([(n, "bad") for n in range(1, 26)], "f.jsonl")
    text = str(error).splitlines()
    assert text[0] == "f.jsonl:1: bad" and text[19] == "f.jsonl:20: bad"
    assert text[20] == "... and 5 more problems" and len(error.problems) == 25
