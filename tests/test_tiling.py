import pytest
from PIL import Image

from mmllm.tiling import GLOBAL_TAG, candidate_grids, choose_grid, tile_image, tile_tags


def test_candidate_grids_are_all_products_up_to_max():
    grids = candidate_grids(6)
    assert len(grids) == 14  # the 14 aspect ratios the NVLM paper lists for 6 tiles
    assert all(c * r <= 6 for c, r in grids)
    assert [c * r for c, r in grids] == sorted(c * r for c, r in grids)


@pytest.mark.parametrize(
    "size, tile, max_tiles, grid",
    [
        ((448, 448), 448, 6, (1, 1)),  # square, small: the 2x2 tie loses on area
        ((896, 896), 448, 6, (2, 2)),  # square, large: the 2x2 tie wins on area
        ((1000, 500), 448, 6, (2, 1)),
        ((100, 600), 448, 6, (1, 6)),
        ((1344, 448), 448, 6, (3, 1)),
        ((800, 600), 448, 6, (3, 2)),  # 4:3 -> closest ratio 3:2
        ((20, 10), 448, 6, (2, 1)),  # tiny images still follow the aspect ratio
        ((128, 32), 32, 6, (4, 1)),  # the easy synthetic OCR line
        ((3000, 100), 448, 6, (6, 1)),  # extreme aspect clamps to the widest grid
        ((896, 896), 448, 1, (1, 1)),  # max_tiles = 1 disables tiling
    ],
)
def test_choose_grid(size, tile, max_tiles, grid):
    assert choose_grid(*size, tile, max_tiles) == grid


def quadrants(side: int) -> Image.Image:
    img = Image.new("RGB", (side, side))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    half = side // 2
    for k, colour in enumerate(colours):
        r, c = divmod(k, 2)
        img.paste(colour, (c * half, r * half, (c + 1) * half, (r + 1) * half))
    return img


def test_tiles_are_row_major_and_thumbnail_is_last():
    tiles, grid = tile_image(quadrants(64), tile_size=32, max_tiles=6)
    assert grid == (2, 2) and len(tiles) == 5
    assert [t.getpixel((16, 16)) for t in tiles[:4]] == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    assert all(t.size == (32, 32) for t in tiles)
    assert tiles[4].getpixel((8, 8)) == (255, 0, 0) and tiles[4].getpixel((24, 24)) == (255, 255, 0)


def test_single_tile_has_no_thumbnail_and_thumbnail_can_be_disabled():
    tiles, grid = tile_image(Image.new("RGB", (30, 30)), tile_size=32, max_tiles=6)
    assert grid == (1, 1) and len(tiles) == 1
    tiles, grid = tile_image(quadrants(64), tile_size=32, max_tiles=6, use_thumbnail=False)
    assert len(tiles) == 4


@pytest.mark.parametrize(
    "style, expected",
    [
        ("1d", ["<tile_1>", "<tile_2>", GLOBAL_TAG]),
        ("2d_grid", ["<tile_x1_y1>", "<tile_x2_y1>", GLOBAL_TAG]),
        ("2d_bbox", ["<box>(0,0),(500,1000)</box>", "<box>(500,0),(1000,1000)</box>", GLOBAL_TAG]),
        ("none", ["", "", ""]),
    ],
)
def test_tag_strings(style, expected):
    assert tile_tags(style, (2, 1), 3) == expected


def test_tags_for_a_2x2_grid_and_a_single_tile():
    assert tile_tags("2d_grid", (2, 2), 5)[:4] == ["<tile_x1_y1>", "<tile_x2_y1>", "<tile_x1_y2>", "<tile_x2_y2>"]
    assert tile_tags("1d", (1, 1), 1) == [GLOBAL_TAG]
    assert tile_tags("1d", (2, 2), 4) == ["<tile_1>", "<tile_2>", "<tile_3>", "<tile_4>"]  # no thumbnail


def test_unknown_tag_style_lists_valid_ones():
    with pytest.raises(ValueError, match="none, 1d, 2d_grid, 2d_bbox"):
        tile_tags("3d", (1, 1), 1)
