"""The import contracts of pyproject.toml's [tool.importlinter] hold: the package layers
(eval > service > tuner > retriever), no web stack in the libraries, eval off service's HTTP app
and CLI, and no import cycles between sibling modules. Runs ``lint-imports`` as ``make lint``
does; on failure the assertion shows its report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The lint-imports beside this interpreter (the venv's), not whichever one is on PATH.
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def test_import_contracts_are_kept() -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout
