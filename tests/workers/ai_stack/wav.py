"""Reading back the WAVs the speech synthesis returns (unit and deployment tests)."""

from __future__ import annotations

import struct

import numpy as np


def wav_samples(wav: bytes) -> tuple[int, np.ndarray]:
    """(sample rate, samples) of a 16-bit mono PCM WAV, its sizes checked against its length."""
    assert wav[:4] == b"RIFF"
    assert wav[8:12] == b"WAVE"
    assert struct.unpack_from("<I", wav, 4)[0] == len(wav) - 8
    offset, rate = 12, 0
    while offset < len(wav):
        chunk, size = wav[offset : offset + 4], struct.unpack_from("<I", wav, offset + 4)[0]
        if chunk == b"fmt ":
            audio_format, channels, rate = struct.unpack_from("<HHI", wav, offset + 8)
            bits = struct.unpack_from("<H", wav, offset + 22)[0]
            assert (audio_format, channels, bits) == (1, 1, 16)
        if chunk == b"data":
            assert offset + 8 + size == len(wav)
            return rate, np.frombuffer(wav[offset + 8 :], dtype="<i2")
        offset += 8 + size
    raise AssertionError("no data chunk")
