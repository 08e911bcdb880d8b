import pytest
import torch

from mmllm.connectors import MLPProjector, PixelShuffle, pixel_shuffle


def test_pixel_shuffle_known_values():
    x = torch.arange(8.0).view(1, 8, 1)  # a 2x4 grid: rows 0 1 2 3 / 4 5 6 7
    out = pixel_shuffle(x, (2, 4), 2)
    assert out.shape == (1, 2, 4)
    assert out[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_pixel_shuffle_shapes_match_nvlm():
    x = torch.randn(3, 32 * 32, 16)  # InternViT-448: 32x32 tokens -> 16x16 of width 4C
    shuffle = PixelShuffle((32, 32), 2)
    assert shuffle(x).shape == (3, 256, 64)
    assert shuffle.out_grid == (16, 16)


def test_pixel_shuffle_rejects_odd_grids():
    with pytest.raises(ValueError, match="not divisible"):
        PixelShuffle((3, 4), 2)
    with pytest.raises(ValueError, match="do not form"):
        pixel_shuffle(torch.zeros(1, 7, 2), (2, 4))


def test_mlp_projector_dims():
    mlp = MLPProjector(256, 512, 128)
    assert isinstance(mlp[0], torch.nn.LayerNorm) and mlp[0].normalized_shape == (256,)
    assert (mlp[1].in_features, mlp[1].out_features) == (256, 512)
    assert isinstance(mlp[2], torch.nn.GELU)
    assert (mlp[3].in_features, mlp[3].out_features) == (512, 128)
    assert mlp(torch.randn(2, 5, 256)).shape == (2, 5, 128)
