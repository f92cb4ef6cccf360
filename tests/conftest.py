import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# benchmark files come only from $PIVOTAL_DATA_DIR (CI sets it); without it those tests skip
DATA_DIR = Path(os.environ["PIVOTAL_DATA_DIR"]) if os.environ.get("PIVOTAL_DATA_DIR") else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if DATA_DIR is None or not (DATA_DIR / "svamp_test.jsonl").exists():
        pytest.skip(f"benchmark data not found (PIVOTAL_DATA_DIR={DATA_DIR})")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny random model with the real SmolLM2 tokenizer."""
    from pivotal.models import load_model
    return load_model("tiny-random", seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The real built-in model (SmolLM2-135M-Instruct)."""
    from pivotal.models import load_model
    return load_model("smollm2-135m")
