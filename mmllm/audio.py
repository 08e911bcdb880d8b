"""Audio input: any WAV/FLAC (or other libsndfile format) -> mono 16 kHz -> Whisper log-mel features.

Files are read with `soundfile` (libsndfile ships inside its wheel), not `torchaudio.load`, which
since torchaudio 2.9 goes through TorchCodec and needs FFmpeg libraries on the machine. Resampling
is `torchaudio.functional.resample`; log-mel features are transformers' `WhisperFeatureExtractor`
built from arguments (offline), so a pretrained Whisper sees exactly the features it was trained on.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from transformers import WhisperFeatureExtractor

from .sample import SampleError

SAMPLE_RATE = 16_000
HOP_LENGTH = 160  # 10 ms: 100 mel frames per second
N_FFT = 400  # 25 ms


# Read past the window so a longer file is seen to be one and resampling ends past the window's last sample.
READ_MARGIN_S = 0.1


class Waveform(np.ndarray):
    """A waveform read only up to a window from a longer file; `seconds` is the whole file's length."""

    seconds: float


def load_audio(path: str | Path, max_seconds: float | None = None) -> np.ndarray:
    """Decode a file to float32 mono at 16 kHz, the whole of it or only its first `max_seconds` (a 10-hour
    file cut to a 4 s window is not decoded whole); every way a file can be unusable is a SampleError."""
    path = Path(path)
    if not path.is_file():
        raise SampleError(f"audio not found: {path}")
    if path.stat().st_size == 0:
        raise SampleError(f"empty audio file (0 bytes): {path}")
    known = {ext.lower() for ext in sf.available_formats()}
    if path.suffix.lstrip(".").lower() not in known:
        raise SampleError(
            f"unsupported audio format {path.suffix or '(no extension)'!r}: {path}; "
            f"readable: {', '.join(sorted(known))} (convert others, e.g. `ffmpeg -i in.m4a out.flac`)"
        )
    try:
        with sf.SoundFile(path) as fh:
            rate, total = fh.samplerate, fh.frames
            wanted = total if max_seconds is None else min(total, math.ceil((max_seconds + READ_MARGIN_S) * rate))
            data = fh.read(wanted, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile's errors and any other the decoder raises
        raise SampleError(f"cannot decode audio {path}: {exc}") from None
    if data.shape[0] == 0:
        raise SampleError(f"audio file has no samples: {path}")
    if not np.isfinite(data).all():
        raise SampleError(f"audio has NaN or infinite samples: {path}")
    mono = torch.from_numpy(data.mean(axis=1))
    if rate != SAMPLE_RATE:
        mono = AF.resample(mono, rate, SAMPLE_RATE)
    if len(data) == total:
        return mono.numpy()
    cut = mono.numpy().view(Waveform)
    cut.seconds = total / rate
    return cut


class AudioFrontEnd:
    """What the processor needs to turn a waveform into encoder input and a placeholder count.

    Every clip is padded (or truncated) to the `max_seconds` window, as Whisper expects; the real
    length in frames travels with the batch so the model keeps only the tokens of real audio.
    `tokens_for_frames` is the encoder + connector arithmetic, owned by the model.
    """

    def __init__(self, n_mels: int, max_seconds: int, tokens_for_frames: Callable[[int], int]) -> None:
        self.extractor = WhisperFeatureExtractor(
            feature_size=n_mels, sampling_rate=SAMPLE_RATE, hop_length=HOP_LENGTH, chunk_length=max_seconds, n_fft=N_FFT
        )
        self.n_mels, self.max_seconds = n_mels, max_seconds
        self.n_frames = self.extractor.nb_max_frames
        self.tokens_for_frames = tokens_for_frames

    def load(self, path: str | Path) -> np.ndarray:
        """The file's first `max_seconds` (and a little more): what the window keeps of it."""
        return load_audio(path, self.max_seconds)

    def features(self, waveform: np.ndarray) -> tuple[torch.Tensor, int, str | None]:
        """Log-mel [n_mels, n_frames] of the padded window, the real length in frames (at least 1), and a
        note when the clip was longer than the window and got truncated (the sample is still used)."""
        seconds = getattr(waveform, "seconds", len(waveform) / SAMPLE_RATE)  # a Waveform's whole file
        waveform = np.asarray(waveform, dtype=np.float32)
        if waveform.ndim != 1 or not len(waveform) or not np.isfinite(waveform).all():
            raise SampleError(f"audio must be a non-empty finite mono waveform, got shape {waveform.shape}")
        n = self.extractor.n_samples
        note = None
        if len(waveform) > n:
            note = f"audio clip of {seconds:.1f} s truncated to the {self.max_seconds} s window"
        values = self.extractor(waveform[:n], sampling_rate=SAMPLE_RATE, return_tensors="np", padding="max_length")
        frames = max(1, min(len(waveform), n) // HOP_LENGTH)
        return torch.from_numpy(values["input_features"][0]), frames, note
