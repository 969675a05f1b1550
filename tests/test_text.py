"""The named texts: Jane Austen's novels read out of the Debian package's R database, split by novel, and the
Python reference topics; both really installed (`.ci/install` fetches Austen), nothing faked."""
from __future__ import annotations

import gzip

import pytest

from ramp.cli import main
from ramp.errors import RampError
from ramp.models.r_lazyload import read_lazyload
from ramp.models.text import (AUSTEN_CALIBRATION, AUSTEN_EVALUATION, austen_dir, calibration_text, check_text, evaluation_text,
                       installed_texts)


def test_both_texts_are_installed():
    assert installed_texts() == ["austen", "python-docs"]


def test_austen_novels_are_whole_and_split_by_novel():
    words = {novel: len((austen_dir() / f"{novel}.txt").read_text(encoding="utf-8").split())
             for novel in AUSTEN_CALIBRATION + AUSTEN_EVALUATION}
    # word counts of the package's novels (../shared/DATA.md: Emma 157k, Persuasion 83k, ...)
    assert 156_000 < words["emma"] < 159_000 and 82_000 < words["persuasion"] < 84_500
    assert 700_000 < sum(words.values()) < 730_000
    assert not set(AUSTEN_CALIBRATION) & set(AUSTEN_EVALUATION)
    calibration, evaluation = calibration_text("austen"), evaluation_text("austen")
    assert "PRIDE AND PREJUDICE" in evaluation and "PRIDE AND PREJUDICE" not in calibration
    assert "EMMA" in calibration and "It is a truth universally acknowledged" in evaluation
    # no passage on both sides: a long line of one half never appears in the other
    long_lines = [line for line in evaluation.splitlines() if len(line) > 60][:2000]
    assert long_lines and not any(line in calibration for line in long_lines[::50])


def test_python_docs_halves_split_the_topics():
    from pydoc_data.topics import topics

    calibration, evaluation = calibration_text("python-docs"), evaluation_text("python-docs")
    assert len(calibration) > 100_000 and len(evaluation) > 100_000
    # every topic lands in exactly one half (topics quote each other's paragraphs, so whole bodies are compared)
    for body in list(topics.values())[:40]:
        assert (body in calibration) != (body in evaluation)


def test_unknown_text_is_one_clear_error():
    with pytest.raises(RampError, match="unknown text 'wikitext'; choose one of austen, python-docs"):
        check_text("wikitext")


def test_texts_command_lists_installed(capsys):
    assert main(["texts"]) == 0
    printed = capsys.readouterr().out
    assert "austen       installed" in printed and "python-docs  installed" in printed


def test_corrupt_r_database_fails_with_one_line(tmp_path):
    (tmp_path / "Rdata.rdx").write_bytes(gzip.compress(b"not an R serialization"))
    (tmp_path / "Rdata.rdb").write_bytes(b"")
    with pytest.raises(RampError, match="is not an R XDR serialization"):
        read_lazyload(tmp_path)
    (tmp_path / "Rdata.rdx").unlink()
    with pytest.raises(RampError, match="Rdata.rdx is missing"):
        read_lazyload(tmp_path)
