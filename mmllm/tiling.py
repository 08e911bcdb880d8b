"""Dynamic high-resolution tiling (InternVL `dynamic_preprocess`, as NVLM uses it) and tile tags."""
from __future__ import annotations

from functools import lru_cache

from PIL import Image

from .config import TILE_TAGS, check_choice

GLOBAL_TAG = "<tile_global_thumbnail>"


@lru_cache(maxsize=64)
def candidate_grids(max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) with 1 <= cols*rows <= max_tiles, smallest area first.

    The order matters: on an aspect-ratio tie the later (larger) grid wins only for big images.
    """
    grids = {(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if c * r <= max_tiles}
    return tuple(sorted(grids, key=lambda g: (g[0] * g[1], g)))


def choose_grid(width: int, height: int, tile_size: int, max_tiles: int) -> tuple[int, int]:
    """The (cols, rows) grid whose aspect ratio is closest to the image's (0.5-area tie rule)."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def tile_image(
    image: Image.Image, tile_size: int, max_tiles: int, use_thumbnail: bool = True
) -> tuple[list[Image.Image], tuple[int, int]]:
    """Resize (no padding) to the chosen grid, crop row-major, append the thumbnail last if >1 tile."""
    cols, rows = choose_grid(image.width, image.height, tile_size, max_tiles)
    resized = image.resize((tile_size * cols, tile_size * rows), Image.BICUBIC)
    tiles = [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((tile_size, tile_size), Image.BICUBIC))
    return tiles, (cols, rows)


def tile_tags(style: str, grid: tuple[int, int], n_tiles: int) -> list[str]:
    """Plain-text tag before each tile (`n_tiles` includes the thumbnail when present).

    A lone tile is the whole image, so it gets the global tag, as in NVLM.
    """
    check_choice("tile_tag", style, TILE_TAGS)
    if style == "none":
        return [""] * n_tiles
    cols, rows = grid
    n_regular = cols * rows
    if n_tiles == 1:
        return [GLOBAL_TAG]
    tags = []
    for k in range(n_regular):
        r, c = divmod(k, cols)
        if style == "1d":
            tags.append(f"<tile_{k + 1}>")
        elif style == "2d_grid":
            tags.append(f"<tile_x{c + 1}_y{r + 1}>")
        else:  # 2d_bbox: tile corners on a 0-1000 frame of the whole image
            x0, y0 = round(1000 * c / cols), round(1000 * r / rows)
            x1, y1 = round(1000 * (c + 1) / cols), round(1000 * (r + 1) / rows)
            tags.append(f"<box>({x0},{y0}),({x1},{y1})</box>")
    return tags + [GLOBAL_TAG] * (n_tiles - n_regular)
