"""Parts the project makes itself (a pretrained tiny LLM, a pretrained tiny tower), built once per recipe.

A part lives in `root/<kind>-<key>/`, where the key hashes the recipe and the source of the code that builds it:
the same recipe with the same code finds the folder already made; a changed recipe or builder makes a new one,
so a stale part is never picked up unnoticed. The folder is built under a temporary name and renamed into place
when finished, so a killed build leaves nothing that looks done; a lock makes a second process (another test
worker, a second rank) wait for the first's build instead of repeating it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from mmllm.jsonl import write_json

CACHE_ENV = "MMLLM_CACHE"  # where parts are kept when no root is given
DEFAULT_ROOT = Path("runs") / "cache"
RECIPE_FILE = "recipe.json"  # written last: a folder holding it is finished


def cache_root(root: str | Path | None = None) -> Path:
    """`root`, else $MMLLM_CACHE, else runs/cache under the working directory."""
    return Path(root or os.environ.get(CACHE_ENV) or DEFAULT_ROOT)


def recipe_key(recipe: Any, sources: Sequence[str | Path]) -> str:
    """A short hash of the recipe (a dataclass or JSON value) and of the builder's source files."""
    digest = hashlib.sha256(json.dumps(_plain(recipe), sort_keys=True).encode())
    for source in sources:
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()[:16]


def part_folder(kind: str, recipe: Any, sources: Sequence[str | Path], root: str | Path | None = None) -> Path:
    """Where the part of `kind` made from `recipe` lives, built or not (`is_built`)."""
    return cache_root(root) / f"{kind}-{recipe_key(recipe, sources)}"


def is_built(folder: Path) -> bool:
    return (folder / RECIPE_FILE).is_file()


def build_once(kind: str, recipe: Any, build: Callable[[Path], object], sources: Sequence[str | Path],
               root: str | Path | None = None) -> Path:
    """The finished folder of `kind` made from `recipe`, calling `build(folder)` only when none exists yet.

    `sources` are the files whose code decides what `build` makes (its module, the data generator): editing
    one of them changes the key."""
    folder = part_folder(kind, recipe, sources, root)
    root = folder.parent
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if is_built(folder):
            return folder
        if folder.exists():  # no recipe file: not ours to trust (a copy made by hand, a tool's leftovers)
            shutil.rmtree(folder)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
        try:
            build(work)
            write_json(work / RECIPE_FILE, {"kind": kind, "recipe": _plain(recipe)})
            os.replace(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return folder


def _plain(recipe: Any) -> Any:
    return asdict(recipe) if is_dataclass(recipe) else recipe
