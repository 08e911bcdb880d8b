"""Progress bars for the data commands (`data synth`, `convert`, `shard`): on a terminal only, so logs, pipes
and captured output get none of their carriage-return redraws, and only for work that lasts."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
# Seconds before a bar appears: quicker work shows none.
DELAY = 2.0


def progress(items: Iterable[T], desc: str, unit: str) -> Iterator[T]:
    """`items` as they come, with a tqdm bar on stderr when stderr is a terminal (a count and a rate when `items`
    has no length); the bar clears when done (the command prints its own summary)."""
    yield from tqdm(items, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(), delay=DELAY,
                    leave=False, dynamic_ncols=True)
