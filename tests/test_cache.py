import os
from pathlib import Path

import pytest

from mmllm.train.cache import RECIPE_FILE, build_once, recipe_key


def _writer(calls: list):
    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "part.txt").write_text("made")
    return build


def test_a_recipe_is_built_once_and_then_found(tmp_path):
    calls = []
    first = build_once("llm", {"seed": 0}, _writer(calls), [__file__], root=tmp_path)
    again = build_once("llm", {"seed": 0}, _writer(calls), [__file__], root=tmp_path)
    assert first == again and len(calls) == 1
    assert (first / "part.txt").read_text() == "made" and (first / RECIPE_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [first.name]


def test_a_changed_recipe_or_builder_source_makes_a_new_part(tmp_path):
    source = tmp_path / "builder.py"
    source.write_text("v1")
    key = recipe_key({"seed": 0}, [source])
    assert recipe_key({"seed": 1}, [source]) != key
    source.write_text("v2")
    assert recipe_key({"seed": 0}, [source]) != key


def test_a_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_once("tower", {"seed": 0}, broken, [__file__], root=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    calls = []
    folder = build_once("tower", {"seed": 0}, _writer(calls), [__file__], root=tmp_path)
    assert len(calls) == 1 and (folder / "part.txt").is_file()


def test_a_folder_without_its_recipe_file_is_rebuilt(tmp_path):
    calls = []
    folder = build_once("llm", {"seed": 0}, _writer(calls), [__file__], root=tmp_path)
    (folder / RECIPE_FILE).unlink()
    build_once("llm", {"seed": 0}, _writer(calls), [__file__], root=tmp_path)
    assert len(calls) == 2 and (folder / RECIPE_FILE).is_file()


def test_the_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MMLLM_CACHE", os.fspath(tmp_path / "env"))
    folder = build_once("llm", {"seed": 0}, _writer([]), [__file__])
    assert folder.parent == tmp_path / "env"
