"""Speech synthesis with the node's ``espeak-ng`` program (Debian package ``espeak-ng``).

The program is started with a fixed argument list (no shell); the text goes in on stdin, never on the
command line, and is read as plain text (no ``-m``: SSML and espeak's own markup are off). The voice is
one of the configured allowlist. espeak-ng writes the WAV to stdout; as it cannot seek back on a pipe its
RIFF and data sizes are placeholders (0x7ffff000), which ``complete_wav_header`` replaces by the real ones.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading

MIN_SPEED = 80  # words per minute (espeak-ng's own range)
MAX_SPEED = 450
DEFAULT_SPEED = 175


class SpeechError(Exception):
    code = "synthesis_failed"


class Busy(SpeechError):
    code = "busy"


class SpeechUnavailable(SpeechError):
    code = "tts_unavailable"


class Synthesizer:
    def __init__(
        self, *, program: str, voices: tuple[str, ...], timeout_seconds: float, max_concurrency: int
    ) -> None:
        self.program = program
        self.voices = voices
        self.timeout_seconds = timeout_seconds
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)

    def available(self) -> bool:
        return os.path.isfile(self.program) and os.access(self.program, os.X_OK)

    def synthesize(self, text: str, *, voice: str, speed: int, queue_timeout: float) -> bytes:
        """The WAV of ``text``. ``voice`` must be on the allowlist and ``speed`` in range (the caller
        checks both; they are checked again here because they become arguments)."""
        if voice not in self.voices or not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError("voice or speed outside what the service allows")
        if not self.available():
            raise SpeechUnavailable(f"{self.program} is not installed")
        if not self._slots.acquire(timeout=queue_timeout):
            raise Busy(f"all {self.max_concurrency} synthesis slots stayed busy for {queue_timeout:g} s")
        try:
            result = subprocess.run(  # noqa: S603 - a fixed argument list; the text is on stdin
                [self.program, "--stdin", "--stdout", "-v", voice, "-s", str(speed)],
                input=text.encode(),
                capture_output=True,
                timeout=self.timeout_seconds,
                check=False,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
        except subprocess.TimeoutExpired:
            raise SpeechError(f"espeak-ng took longer than {self.timeout_seconds:g} s") from None
        finally:
            self._slots.release()
        if result.returncode != 0:
            detail = result.stderr.decode(errors="replace").strip()[-300:]
            raise SpeechError(f"espeak-ng failed ({result.returncode}): {detail}")
        return complete_wav_header(result.stdout)


def complete_wav_header(wav: bytes) -> bytes:
    """``wav`` with its RIFF size and its data chunk's size set to what it holds."""
    if len(wav) < 12 or wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise SpeechError("espeak-ng wrote no WAV")
    data = bytearray(wav)
    struct.pack_into("<I", data, 4, len(data) - 8)
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = bytes(data[offset : offset + 4])
        (size,) = struct.unpack_from("<I", data, offset + 4)
        if chunk_id == b"data":
            struct.pack_into("<I", data, offset + 4, len(data) - offset - 8)
            return bytes(data)
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    raise SpeechError("espeak-ng wrote a WAV without a data chunk")
