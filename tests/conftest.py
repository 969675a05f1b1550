"""What every test module shares: one scratch cache for the whole run (never the user's), the tiny random
llama and its F32 GGUF, the real models loaded once per run, and the `slow` and `real_model` markers
(registered in pyproject.toml; a test that asks for `smollm2` or `gemma3` is marked `real_model` here)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_gguf import tiny_llama

from ramp.models.model import Model

REAL_MODEL_FIXTURES = {"smollm2", "gemma3"}


@pytest.fixture(scope="session", autouse=True)
def ramp_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """RAMP_CACHE for every test of the run, session fixtures included: reference logits, presets and
    tables made by one test are found by the next, and nothing lands in the user's cache."""
    cache = tmp_path_factory.mktemp("ramp-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAMP_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny_model() -> Model:
    return tiny_llama()


@pytest.fixture(scope="session")
def tiny_reference(tiny_model: Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ramp.export.gguf_writer import write_reference

    path = tmp_path_factory.mktemp("tiny") / "tiny-F32.gguf"
    write_reference(tiny_model, path, progress=False)
    return path


@pytest.fixture(scope="session")
def smollm2() -> Model:
    """The embedded SmolLM2-135M, loaded once per run (the tests only read it)."""
    from ramp.models import load_model

    return load_model()


@pytest.fixture(scope="session")
def gemma3() -> Model:
    """Gemma 3 270M, loaded once per run (the tests only read it)."""
    from ramp.models import load_model
    from ramp.models.embedded import gemma3_model_path

    return load_model(gemma3_model_path())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_model)
