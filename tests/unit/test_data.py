import json

import pytest
from pydantic import ValidationError
from tiny_models import tiny_tokenizer, word_text

from optishear.config import CalibrationConfig, EvaluationConfig, SearchCalibrationConfig
from optishear.core.errors import DataError
from optishear.core.settings import LibrarySettings
from optishear.data.text import (
    load_texts,
    sample_calibration,
    sample_validation,
    tokenize_stream,
)
from optishear.evaluation.perplexity import eval_windows


def test_calibration_is_seeded_and_shaped(tmp_path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(word_text(500, seed=0))
    tok = tiny_tokenizer()
    a = sample_calibration(
        tok, CalibrationConfig(source=str(path), n_samples=6, seq_len=16, seed=3)
    )
    b = sample_calibration(
        tok, CalibrationConfig(source=str(path), n_samples=6, seq_len=16, seed=3)
    )
    c = sample_calibration(
        tok, CalibrationConfig(source=str(path), n_samples=6, seq_len=16, seed=4)
    )
    assert a.shape == (6, 16)
    assert a.equal(b)
    assert not a.equal(c)


def test_jsonl_source(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "w1 w2"}) + "\n\n" + json.dumps({"text": "w3"}) + "\n")
    assert load_texts(str(path), "calibration") == ["w1 w2", "w3"]
    path.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: each line needs a string field .text."):
        load_texts(str(path), "calibration")
    path.write_text("{not json\n")
    with pytest.raises(DataError, match="not valid JSON"):
        load_texts(str(path), "calibration")


def test_missing_and_short_sources(tmp_path) -> None:
    with pytest.raises(DataError, match="is not 'wiki', 'hf:NAME' or an existing file"):
        load_texts(str(tmp_path / "nope.txt"), "calibration")
    settings = LibrarySettings(cache=tmp_path / "empty-cache")
    with pytest.raises(DataError, match="optishear assets pull"):
        load_texts("wiki", "calibration", settings)
    short = tmp_path / "s.txt"
    short.write_text("w1 w2 w3")
    with pytest.raises(DataError, match="fewer than one 16-token sample"):
        sample_calibration(
            tiny_tokenizer(), CalibrationConfig(source=str(short), n_samples=2, seq_len=16)
        )


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="n_samples"):
        CalibrationConfig(n_samples=0)
    with pytest.raises(ValidationError, match="seq_len"):
        EvaluationConfig(seq_len=1)


def test_eval_windows_are_fixed_and_capped() -> None:
    stream = tokenize_stream(tiny_tokenizer(), [word_text(100, 0), word_text(100, 1)])
    w = eval_windows(stream, EvaluationConfig(seq_len=32, windows=3))
    assert w.shape == (3, 32)
    assert w.flatten().equal(stream[:96])
    with pytest.raises(DataError, match="fewer than one 512-token window"):
        eval_windows(stream, EvaluationConfig(seq_len=512))


def _starts(stream, windows) -> list[int]:
    """Where in `stream` each window starts (the first match)."""
    n = windows.shape[1]
    found = []
    for w in windows:
        found.append(next(s for s in range(stream.numel() - n + 1) if stream[s : s + n].equal(w)))
    return found


def test_a_search_holds_the_end_of_its_calibration_text_aside_for_validation(tmp_path) -> None:
    path = tmp_path / "c.txt"
    path.write_text(word_text(800, seed=5))  # random words: no 16-token window repeats
    tok = tiny_tokenizer()
    stream = tokenize_stream(tok, load_texts(str(path), "calibration"))
    config = SearchCalibrationConfig(
        source=str(path), n_samples=12, seq_len=16, validation_share=0.25
    )
    cut = stream.numel() - int(stream.numel() * 0.25)
    calib = sample_calibration(tok, config)
    valid = sample_validation(tok, config, 5)
    assert valid is not None
    assert valid.shape == (5, 16)
    assert max(_starts(stream, calib)) + 16 <= cut  # statistics never see the held-aside end
    assert min(_starts(stream, valid)) >= cut
    assert valid.equal(sample_validation(tok, config, 5))  # seeded: every builder agrees
    # a prune's calibration (and a search holding nothing aside) samples the whole text
    whole = CalibrationConfig(source=str(path), n_samples=100, seq_len=16)
    assert max(_starts(stream, sample_calibration(tok, whole))) + 16 > cut
    assert sample_validation(tok, config.model_copy(update={"validation_share": 0.0}), 5) is None
    short = config.model_copy(update={"seq_len": 256, "validation_share": 0.05})
    with pytest.raises(DataError, match="held aside for validation has"):
        sample_validation(tok, short, 5)
