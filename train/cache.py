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
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from mmllm.jsonl import write_json

CACHE_ENV = "MMLLM_CACHE"  # where parts are kept when no root is given
DEFAULT_ROOT = Path("runs") / "cache"
RECIPE_FILE = "recipe.json"  # written last: a folder holding it is finished


def cache_root(root: str | Path | None = None) -> Path:
    """`root`, else $MMLLM_CACHE, else runs/cache under the working directory."""
    return Path(root or os.environ.get(CACHE_ENV) or DEFAULT_ROOT)


# Libraries whose version can change the bits a recipe trains to (their kernels, their model code).
KEYED_PACKAGES = ("torch", "transformers", "timm")


def recipe_key(recipe: Any, sources: Sequence[str | Path]) -> str:
    """A short hash of the recipe (a dataclass or JSON value), of the builder's source files and of the versions
    of the libraries that run it."""
    digest = hashlib.sha256(json.dumps(_plain(recipe), sort_keys=True).encode())
    for source in sources:
        digest.update(Path(source).read_bytes())
    for package in KEYED_PACKAGES:
        digest.update(f"{package}=={importlib.metadata.version(package)}".encode())
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


R = TypeVar("R")


@dataclass(frozen=True)
class PartRequest(Generic[R]):
    """What `mmllm pretrain llm|tower` was asked for: the recipe, and a new folder to build into (`out`) or the
    cache to find or build it in (`root`)."""

    recipe: R
    out: Path | None
    root: Path | None


def parse_request(prog: str, description: str, recipe_type: type[R], argv: Sequence[str] | None) -> PartRequest[R]:
    """The command line of a part's command: every recipe field an option (its help from the recipe's docstring,
    nested configs as `--encoder.image_size`), `--out` and `--root`; an invalid recipe is a usage error."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("--out", type=Path | None, default=None, help="build into this new folder instead of the cache")
    parser.add_argument("--root", type=Path | None, default=None,
                        help=f"the cache folder (default: ${CACHE_ENV}, else {DEFAULT_ROOT})")
    parser.add_class_arguments(recipe_type, fail_untyped=False)
    args = parser.parse_args(list(argv) if argv is not None else None)
    made = parser.instantiate(args)
    try:
        recipe = recipe_type(**{f.name: made[f.name] for f in fields(recipe_type)})
    except ValueError as exc:
        parser.error(str(exc))
    return PartRequest(recipe, made.out, made.root)
