"""service.runtime.public_name: a model configured by folder is shown by the folder's last part."""

from __future__ import annotations

from service.runtime import public_name


def test_a_folder_is_shown_by_its_last_part() -> None:
    assert public_name("/srv/models/tiny-llama") == "tiny-llama"
    assert public_name("/srv/models/tiny-llama/") == "tiny-llama"
    assert public_name("relative/dir/model") == "model"


def test_a_hub_or_preset_name_is_shown_as_is() -> None:
    assert public_name("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct") == "smollm2"
    assert public_name("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct") == (
        "Qwen/Qwen2.5-0.5B-Instruct"
    )
