"""Tiny real media files generated at test time: encoded video with an audio track (PyAV), wav
(soundfile), image folders (Pillow) and IDX files."""

from __future__ import annotations

import gzip
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image

# Container suffix -> (video codec, audio codec, audio sample format)
CODECS = {
    ".mp4": ("libx264", "aac", "fltp"),
    ".mkv": ("libx264", "aac", "fltp"),
    ".flv": ("flv", "libmp3lame", "fltp"),
    ".mpg": ("mpeg1video", "mp2", "s16"),
    ".avi": ("mpeg4", "pcm_s16le", "s16"),
}


def tone(seconds: float, rate: int, frequency: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def write_wav(path: Path, wave: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, wave, rate)
    return path


def frame_level(index: int, count: int) -> int:
    """Grey level of frame ``index``: rises with time, so frame order can be checked."""
    return int(20 + 200 * index / max(count - 1, 1))


def write_video(
    path: Path,
    seconds: float = 1.0,
    fps: int = 25,
    size: tuple[int, int] = (64, 48),
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    colour: tuple[int, int, int] = (1, 1, 1),
) -> Path:
    """A video whose frame i is uniformly grey at ``frame_level(i)`` (times ``colour``), with an
    optional mono audio track."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vcodec, acodec, sample_format = CODECS[path.suffix]
    count = int(round(seconds * fps))
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream(vcodec, rate=Fraction(fps))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        if vcodec == "mpeg1video":
            video.bit_rate = 2_000_000
        if vcodec == "libx264":
            video.options = {"preset": "ultrafast"}  # keeps fixture creation fast
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream(acodec, rate=audio_rate)
            audio_stream.layout = "mono"
        for i in range(count):
            level = frame_level(i, count)
            image = np.empty((height, width, 3), dtype=np.uint8)
            image[:] = np.clip(np.array(colour) * level, 0, 255).astype(np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if audio_stream is not None:
            samples = audio if sample_format == "fltp" else (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format=sample_format, layout="mono")
            frame.sample_rate = audio_rate
            for packet in audio_stream.encode(frame):
                container.mux(packet)
            for packet in audio_stream.encode():
                container.mux(packet)
    return path


def write_corrupt(path: Path) -> Path:
    """A file with the right name and garbage content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a media file" * 20)
    return path


def write_frame_folder(
    folder: Path, count: int, size: int = 32, mode: str = "RGB", name: str = "frame{:06d}.jpg"
) -> Path:
    """``count`` images whose grey level rises with the index (names sort naturally, not lexically)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        level = frame_level(i, count)
        Image.new(mode, (size, size), level if mode == "L" else (level,) * 3).save(folder / name.format(i + 1))
    return folder


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An MNIST-style IDX file (gzip-compressed when the name ends in .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path
