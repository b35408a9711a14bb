"""Frame extraction: video files through PyAV, image folders through Pillow.

Frames are taken at ``fps`` per second of the clip (at the centre of each 1/fps interval), always
in time order, and resized once to ``size`` x ``size`` (the aspect ratio is not kept, as the
official ``Resize((224, 224))``). An optional fixed ``crop`` box ``(x, y, width, height)`` in source
pixels is cut out first, e.g. the mouth region of a talking face recorded with a fixed camera.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, UnidentifiedImageError

from .plan import ClipError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
Crop = tuple[int, int, int, int]  # x, y, width, height in source pixels


def sample_times(start: float, end: float, fps: float) -> np.ndarray:
    """Times (seconds) of the frames kept from [start, end): ``floor(duration * fps)`` evenly spaced
    interval centres, at least one."""
    duration = max(end - start, 0.0)
    count = max(1, int(math.floor(duration * fps + 1e-6)))
    return start + (np.arange(count) + 0.5) * duration / count


def read_video_frames(
    path: str | Path,
    fps: float,
    size: int,
    start: float | None = None,
    end: float | None = None,
    crop: Crop | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, size, size, 3)`` uint8 RGB frames of ``path`` sampled at ``fps`` within [start, end)
    (the ``crop`` box of each, when given), and the n times (seconds from the start of the file)
    they were taken at."""
    frames, times, _ = _read_video(path, fps, size, start, end, crop, with_audio=False)
    return frames, times


def read_video_with_audio(
    path: str | Path,
    fps: float,
    size: int,
    start: float | None = None,
    end: float | None = None,
    crop: Crop | None = None,
) -> tuple[np.ndarray, np.ndarray, list[av.AudioFrame] | None]:
    """:func:`read_video_frames` and the file's decoded audio frames (None without an audio track),
    from one opening and one pass over the container (for :func:`.audio.audio_from_frames`)."""
    return _read_video(path, fps, size, start, end, crop, with_audio=True)


def _read_video(
    path: str | Path,
    fps: float,
    size: int,
    start: float | None,
    end: float | None,
    crop: Crop | None,
    with_audio: bool,
) -> tuple[np.ndarray, np.ndarray, list[av.AudioFrame] | None]:
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"missing file {path}", path)
    audio = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipError(f"no video track in {path}", path)
            stream = container.streams.video[0]
            sound = container.streams.audio[0] if with_audio and container.streams.audio else None
            packets = _demux(container, stream, sound) if sound is not None else None
            duration = _duration(path, container, stream, packets and packets[stream])
            times = _clip_times(path, duration, start, end, fps)
            if crop is not None:
                check_crop(crop, stream.codec_context.width, stream.codec_context.height, path)
            decoded = container.decode(stream) if packets is None else _decode(packets[stream])
            frames = _pick_frames(decoded, stream, times, size, crop)
            if sound is not None:
                audio = list(_decode(packets[sound]))
    except av.FFmpegError as error:
        raise ClipError(f"cannot decode {path}: {' '.join(str(error).split())}", path) from None
    if not frames:
        raise ClipError(f"video too short: no frame decoded from {path}", path)
    return np.stack(frames), times[: len(frames)], audio


def _clip_times(path: Path, duration: float, start: float | None, end: float | None, fps: float) -> np.ndarray:
    clip_start = max(start or 0.0, 0.0)
    clip_end = min(end if end is not None else duration, duration)
    if clip_end <= clip_start:
        raise ClipError(
            f"video too short: segment [{clip_start:.2f}, {end}) s is past its end ({duration:.2f} s) in {path}",
            path,
        )
    return sample_times(clip_start, clip_end, fps)


def _demux(container, *streams) -> dict:
    """Every packet of ``streams`` (the end-of-stream flush packets included), read in one pass."""
    packets = {stream: [] for stream in streams}
    for packet in container.demux(*streams):
        packets[packet.stream].append(packet)
    return packets


def _decode(packets: list) -> Iterator:
    for packet in packets:
        yield from packet.decode()


def _pick_frames(decoded: Iterable, stream, times: np.ndarray, size: int, crop: Crop | None) -> list[np.ndarray]:
    """For each target time the last decoded frame shown at or before it; converting only those.

    Targets after the end of the last frame are dropped: a header duration can include a longer
    audio track (flv, mkv), which would otherwise repeat the last frame.
    """
    offset = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    reformatter = VideoReformatter()  # one scaler for the whole clip: building one per frame is slow
    frame_seconds = 1.0 / float(stream.average_rate or 25)
    picked: list[np.ndarray] = []
    previous, previous_time = None, 0.0
    for frame in decoded:
        time = (frame.time - offset) if frame.time is not None else previous_time
        while len(picked) < len(times) and previous is not None and time > times[len(picked)] + 1e-6:
            picked.append(_to_rgb(reformatter, previous, size, crop))
        if len(picked) == len(times):
            break
        previous, previous_time = frame, time
    while previous is not None and len(picked) < len(times) and times[len(picked)] < previous_time + frame_seconds:
        picked.append(_to_rgb(reformatter, previous, size, crop))
    return picked


def _to_rgb(reformatter: VideoReformatter, frame, size: int, crop: Crop | None) -> np.ndarray:
    if crop is None:
        return reformatter.reformat(frame, width=size, height=size, format="rgb24", interpolation="AREA").to_ndarray()
    return _crop_resize(frame.to_image(), crop, size)


def _crop_resize(image: Image.Image, crop: Crop, size: int) -> np.ndarray:
    x, y, width, height = crop
    # BOX averages the covered source pixels, as ffmpeg's AREA does for uncropped frames
    return np.asarray(image.resize((size, size), Image.Resampling.BOX, box=(x, y, x + width, y + height)))


def check_crop(crop: Crop, width: int, height: int, path: Path) -> None:
    x, y, w, h = crop
    if x + w > width or y + h > height:
        raise ClipError(f"crop box x={x} y={y} {w}x{h} does not fit the {width}x{height} frames of {path}", path)


def _duration(path: Path, container, stream, packets: list | None = None) -> float:
    """Seconds of video. Exact from the frame count when the container has it (mp4, avi); otherwise
    from the packet timestamps (flv, mkv, MPEG-PS headers only estimate it, or count the audio):
    ``packets`` when they were read already, else from a second opening of the file."""
    if stream.frames and stream.average_rate:
        return stream.frames / float(stream.average_rate)
    if packets is not None:
        return _packet_duration(path, stream, packets)
    with av.open(str(path)) as probe:
        video = probe.streams.video[0]
        return _packet_duration(path, video, probe.demux(video))


def _packet_duration(path: Path, video, packets: Iterable) -> float:
    start = video.start_time or 0
    end, last_start = None, None
    for packet in packets:
        if packet.pts is not None:
            end = max(end or 0, packet.pts + (packet.duration or 0))
            last_start = max(last_start or 0, packet.pts)
    if end is None or video.time_base is None:
        raise ClipError(f"video too short: no timed video packet in {path}", path)
    rate = video.average_rate or video.guessed_rate
    if end == last_start and rate:  # no packet durations (flv): the last frame lasts one interval
        return _whole_frames(float((last_start - start) * video.time_base) * float(rate) + 1) / float(rate)
    return float((end - start) * video.time_base)


def _whole_frames(count: float) -> float:
    """A frame count from millisecond timestamps (8/3 fps: 0, 333, ..., 2333 ms) is a hair short of
    a whole number: snap it."""
    nearest = round(count)
    return float(nearest) if abs(count - nearest) < 0.01 else count


def natural_key(name: str) -> list:
    """Sort key that puts frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ClipError(f"missing frame folder {folder}", folder)
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ClipError(f"no images in frame folder {folder}", folder)
    return sorted(images, key=lambda p: natural_key(p.name))


def folder_indices(count: int, folder_fps: float, fps: float, start: float | None, end: float | None) -> np.ndarray:
    """Indices of the images kept from a folder of ``count`` frames shot at ``folder_fps``."""
    duration = count / folder_fps
    clip_start = max(start or 0.0, 0.0)
    clip_end = min(end if end is not None else duration, duration)
    if clip_end <= clip_start:
        raise ClipError(f"video too short: segment starts after the last of {count} frames")
    times = sample_times(clip_start, clip_end, fps)
    return np.minimum((times * folder_fps).astype(int), count - 1)


def read_folder_frames(
    folder: str | Path,
    fps: float,
    folder_fps: float,
    size: int,
    start: float | None = None,
    end: float | None = None,
    mode: str = "RGB",
    crop: Crop | None = None,
) -> np.ndarray:
    """``(n, size, size, C)`` uint8 frames from an image folder (C = 3 for RGB, 1 for L)."""
    images = list_images(folder)
    indices = folder_indices(len(images), folder_fps, fps, start, end)
    return np.stack([read_image(images[i], size, mode, crop) for i in indices])


def read_flow_frames(
    u_folder: str | Path,
    v_folder: str | Path,
    fps: float,
    folder_fps: float,
    size: int,
    start=None,
    end=None,
    times=None,
) -> np.ndarray:
    """``(n, size, size, 2)`` uint8 optical flow (u, v) from two grey-scale image folders; at
    ``times`` (seconds) when given, so that flow and RGB frames of a clip line up."""
    u_images, v_images = list_images(u_folder), list_images(v_folder)
    if len(u_images) != len(v_images):
        raise ClipError(
            f"flow folders differ in length: {len(u_images)} images in {u_folder}, {len(v_images)} in {v_folder}",
            u_folder,
        )
    if times is not None:
        indices = np.minimum((np.asarray(times) * folder_fps).astype(int), len(u_images) - 1)
    else:
        indices = folder_indices(len(u_images), folder_fps, fps, start, end)
    return np.stack(
        [
            np.concatenate([read_image(u_images[i], size, "L"), read_image(v_images[i], size, "L")], axis=-1)
            for i in indices
        ]
    )


def read_image(path: Path, size: int, mode: str = "RGB", crop: Crop | None = None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            if crop is not None:
                check_crop(crop, image.width, image.height, path)
                array = _crop_resize(image, crop, size)
            else:
                image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                array = np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise ClipError(f"cannot read image {path}: {error}", path) from None
    return array.reshape(size, size, -1)


def array_to_frame(image: np.ndarray, size: int) -> np.ndarray:
    """``(1, size, size, C)`` uint8 from an in-memory ``(H, W)`` or ``(H, W, C)`` image."""
    image = np.asarray(image, dtype=np.uint8)
    if image.shape[:2] != (size, size):
        mode = "L" if image.ndim == 2 else "RGB"
        image = np.asarray(Image.fromarray(image, mode).resize((size, size), Image.Resampling.BILINEAR))
    return image.reshape(1, size, size, -1)
