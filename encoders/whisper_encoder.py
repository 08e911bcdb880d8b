"""The Whisper encoder from transformers as an `AudioEncoder` (log-mel in, 50 states per second out)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import WhisperConfig, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .base import AudioEncoder, hf_gradient_checkpointing, weights_dir
from .config import AudioConfig, ConfigError

FRAMES_PER_SECOND = 100  # 10 ms mel hop
# The WhisperConfig fields that shape the encoder; a loaded model writes them back to `AudioConfig.options`.
ARCH_FIELDS = ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "activation_function",
               "scale_embedding")


class WhisperAudioEncoder(AudioEncoder):
    """Whisper's conv front-end (stride 2) + transformer blocks + final LayerNorm.

    `cfg.pretrained` False builds a random encoder from `cfg.options` (offline); True loads `cfg.model`
    (a hub name) and a path loads that local directory, through `WhisperModel.from_pretrained(...)
    .get_encoder()` (the decoder is dropped). A loaded model's architecture is written back to
    `cfg.options`, so the saved config rebuilds it offline with `pretrained` false.
    Whisper checks that its input is exactly `2 * max_source_positions` frames, so a window shorter
    than 30 s cuts the position table to its first `50 * max_seconds` rows (sinusoids for a random
    model, the pretrained rows otherwise: the leading positions are the ones a short clip uses anyway).
    """

    family = "whisper"
    stride = 2

    def __init__(self, cfg: AudioConfig) -> None:
        super().__init__()
        positions = cfg.max_seconds * FRAMES_PER_SECOND // self.stride
        source = cfg.model if cfg.pretrained is True else weights_dir(cfg, "audio")
        if source is None:
            encoder = WhisperEncoder(_config(cfg, positions))
        else:
            encoder = WhisperModel.from_pretrained(source, dtype=torch.float32).get_encoder()  # a fixed class: no remote code
            if positions > encoder.config.max_source_positions:
                raise ConfigError(
                    f"audio.max_seconds {cfg.max_seconds} exceeds {source!r}'s window of "
                    f"{encoder.config.max_source_positions * self.stride // FRAMES_PER_SECOND} s"
                )
            table = encoder.embed_positions.weight.detach()[:positions].clone()
            encoder.embed_positions = nn.Embedding.from_pretrained(table, freeze=True)
            encoder.config.max_source_positions = encoder.max_source_positions = positions
            cfg.options = {k: getattr(encoder.config, k) for k in ARCH_FIELDS}
        if encoder.config.num_mel_bins != cfg.n_mels:
            raise ConfigError(
                f"audio.n_mels is {cfg.n_mels} but the Whisper encoder takes {encoder.config.num_mel_bins} mel bins"
            )
        self.model = encoder
        self.dim, self.n_mels, self.n_frames = encoder.config.d_model, cfg.n_mels, positions * self.stride

    def set_gradient_checkpointing(self, on: bool) -> None:
        hf_gradient_checkpointing(self.model, on)

    def states(self, features: Tensor) -> Tensor:
        return self.model(input_features=features).last_hidden_state


def _config(cfg: AudioConfig, positions: int) -> WhisperConfig:
    """A random encoder from `cfg.options`; the decoder fields are irrelevant (it is never built)."""
    try:
        return WhisperConfig(num_mel_bins=cfg.n_mels, max_source_positions=positions, **cfg.options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"audio.options do not make a valid WhisperConfig: {err}") from err
