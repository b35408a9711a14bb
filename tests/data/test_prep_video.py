"""Frame extraction (time order, rate, segments, image folders) and the loader's frame sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixture_media import (
    frame_level,
    tone,
    write_corrupt,
    write_frame_folder,
    write_video,
)

from avbalance.data.datasets.cached import segment_indices
from avbalance.data.prepare.plan import ClipError
from avbalance.data.prepare.video import (
    read_flow_frames,
    read_folder_frames,
    read_video_frames,
    sample_times,
)


def levels(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1)


def test_sample_times_are_interval_centres():
    assert sample_times(0.0, 3.0, 1.0).tolist() == [0.5, 1.5, 2.5]
    assert np.allclose(sample_times(0.0, 2.5, 1.0), [0.625, 1.875])
    assert np.allclose(sample_times(1.0, 1.4, 1.0), [1.2])  # shorter than 1/fps: one frame
    assert len(sample_times(0.0, 3.0, 25.0)) == 75


@pytest.mark.parametrize("suffix", [".mp4", ".flv", ".mpg", ".avi", ".mkv"])
def test_every_frame_in_time_order(tmp_path, suffix):
    path = write_video(tmp_path / f"v{suffix}", seconds=2.0, fps=25, audio=tone(2.0, 22050), audio_rate=22050)
    frames, times = read_video_frames(path, fps=25, size=16)
    assert np.allclose(times, (np.arange(50) + 0.5) / 25)
    assert frames.shape == (50, 16, 16, 3) and frames.dtype == np.uint8
    expected = [frame_level(i, 50) for i in range(50)]
    assert np.abs(levels(frames) - expected).max() < 6


def test_flv_keeps_its_last_frame(tmp_path):
    # flv packets carry no duration: the clip ends one frame interval after its last frame starts
    path = write_video(tmp_path / "v.flv", seconds=8 / 3, fps=3)
    frames, times = read_video_frames(path, fps=3, size=8)
    assert len(frames) == 8
    assert np.allclose(times, (np.arange(8) + 0.5) / 3)


def test_frames_at_one_per_second(tmp_path):
    path = write_video(tmp_path / "v.mp4", seconds=3.0, fps=25)
    frames, _ = read_video_frames(path, fps=1, size=8)
    # frames shown at 0.5 s, 1.5 s, 2.5 s: frame indices 12, 37, 62 of 75
    assert np.abs(levels(frames) - [frame_level(i, 75) for i in (12, 37, 62)]).max() < 6


def test_segment_cut(tmp_path):
    path = write_video(tmp_path / "v.mpg", seconds=2.0, fps=25)
    frames, _ = read_video_frames(path, fps=25, size=8, start=0.4, end=0.8)
    assert len(frames) == 10
    assert np.abs(levels(frames) - [frame_level(i, 50) for i in range(10, 20)]).max() < 6


def test_segment_past_the_end_is_too_short(tmp_path):
    path = write_video(tmp_path / "v.mp4", seconds=1.0, fps=25)
    with pytest.raises(ClipError, match="too short"):
        read_video_frames(path, fps=25, size=8, start=2.0, end=2.5)


def test_bad_video_files(tmp_path):
    with pytest.raises(ClipError, match="missing file"):
        read_video_frames(tmp_path / "none.mp4", 1, 8)
    with pytest.raises(ClipError, match="cannot decode"):
        read_video_frames(write_corrupt(tmp_path / "bad.mp4"), 1, 8)


def test_image_folder_in_natural_order(tmp_path):
    # frame1.png ... frame12.png: lexical order would put frame10 before frame2
    folder = write_frame_folder(tmp_path / "f", count=12, size=10, name="frame{}.png")
    frames = read_folder_frames(folder, fps=25, folder_fps=25, size=10)
    assert frames.shape == (12, 10, 10, 3)
    assert np.all(np.diff(levels(frames)) > 0)
    grey = read_folder_frames(folder, fps=5, folder_fps=25, size=10, mode="L")
    assert grey.shape == (2, 10, 10, 1)


def test_flow_frames_pair_u_and_v(tmp_path):
    u = write_frame_folder(tmp_path / "u", count=20, size=12, mode="L")
    v = write_frame_folder(tmp_path / "v", count=20, size=12, mode="L")
    flow = read_flow_frames(u, v, fps=5, folder_fps=25, size=12)
    assert flow.shape == (4, 12, 12, 2)
    assert np.all(np.diff(levels(flow)) > 0)
    at_times = read_flow_frames(u, v, fps=5, folder_fps=25, size=12, times=np.array([0.1, 0.5, 0.9]))
    assert np.allclose(levels(at_times), [frame_level(i, 20) for i in (2, 12, 19)], atol=3)
    with pytest.raises(ClipError, match="differ in length"):
        read_flow_frames(u, write_frame_folder(tmp_path / "v2", count=5, size=12, mode="L"), 5, 25, 12)


def test_segment_indices_train_and_eval():
    torch.manual_seed(0)
    assert segment_indices(30, 3, train=False).tolist() == [5, 15, 25]  # segment centres
    for _ in range(50):
        picked = segment_indices(30, 3, train=True)
        assert 0 <= picked[0] < 10 <= picked[1] < 20 <= picked[2] < 30
    assert segment_indices(2, 4, train=False).tolist() == [0, 0, 1, 1]  # fewer frames than K: repeats, in order
    assert segment_indices(1, 3, train=True).tolist() == [0, 0, 0]


def test_flip_mirrors_frames_and_reverses_horizontal_flow():
    from avbalance.data.datasets.cached import crop_resize_flip

    ramp = torch.arange(0, 80, 10, dtype=torch.uint8)[None, None, :].expand(3, 8, 8)  # grows left to right
    frames = torch.stack([ramp, ramp])  # (K, C, H, W)
    whole_image_flipped = (0.0, 0.0, 1.0, 1.0, True)
    assert torch.equal(crop_resize_flip(frames, whole_image_flipped, 8, is_flow=False), frames.flip(-1))
    flow = frames[:, :2]
    mirrored_flow = crop_resize_flip(flow, whole_image_flipped, 8, is_flow=True)
    assert torch.equal(mirrored_flow[:, 0], 255 - flow[:, 0].flip(-1))  # u changes sign around 128
    assert torch.equal(mirrored_flow[:, 1], flow[:, 1].flip(-1))
    assert torch.equal(flow[:, 0], ramp[0].expand(2, 8, 8))  # the input is left as it was
    left_half = crop_resize_flip(frames, (0.0, 0.0, 1.0, 0.5, False), 4, is_flow=False)
    assert left_half.shape == (2, 3, 4, 4) and left_half.float().mean() < frames.float().mean()


def test_crop_resize_matches_pillow_on_whole_pixel_boxes():
    """The uint8 crop + resize stays within one grey level of Pillow's crop then bilinear resize (what
    torchvision's RandomResizedCrop does to the official loader's images), growing and shrinking,
    colour and single channels."""
    from PIL import Image

    from avbalance.data.datasets.cached import crop_resize_flip

    generator = np.random.default_rng(0)
    coarse = generator.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse, "RGB").resize((60, 40), Image.Resampling.BICUBIC))  # (40, 60, 3)
    frames = torch.from_numpy(image.copy()).permute(2, 0, 1)[None]
    cases = [((0.25, 0.5, 0.5, 0.25, False), 32), ((0.0, 0.0, 1.0, 1.0, False), 24), ((0.1, 0.2, 0.5, 0.5, True), 48)]
    for crop, size in cases:
        top, left, height, width, flip = crop
        box = (round(left * 60), round(top * 40), round((left + width) * 60), round((top + height) * 40))
        expected = np.asarray(Image.fromarray(image, "RGB").crop(box).resize((size, size), Image.Resampling.BILINEAR))
        if flip:
            expected = expected[:, ::-1]
        for channels in (slice(0, 3), slice(0, 1)):
            served = crop_resize_flip(frames[:, channels], crop, size, is_flow=False)[0].permute(1, 2, 0).numpy()
            difference = np.abs(served.astype(int) - expected[..., channels].astype(int))
            assert difference.max() <= 1 and difference.mean() < 0.05, (crop, size, channels)


def write_quadrant_video(path, seconds=0.4, fps=25, width=64, height=48):
    """Black frames with a white bottom-right quadrant."""
    import av

    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[height // 2 :, width // 2 :] = 255
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(int(seconds * fps)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_crop_box_is_cut_before_resizing(tmp_path):
    path = write_quadrant_video(tmp_path / "q.mp4")
    whole, _ = read_video_frames(path, fps=25, size=8)
    white, _ = read_video_frames(path, fps=25, size=8, crop=(36, 28, 24, 16))  # inside the white quadrant
    black, _ = read_video_frames(path, fps=25, size=8, crop=(0, 0, 28, 20))
    assert white.shape == black.shape == (10, 8, 8, 3)
    assert white.min() > 235 and black.max() < 20
    assert 20 < whole.mean() < 235  # uncropped: both regions
    half, _ = read_video_frames(path, fps=25, size=8, crop=(32, 0, 32, 48))  # right half: top black, bottom white
    assert half[:, :3].max() < 20 and half[:, 5:].min() > 235


def test_crop_box_outside_the_frame(tmp_path):
    path = write_quadrant_video(tmp_path / "q.mp4")
    with pytest.raises(ClipError, match=r"crop box x=40 y=0 30x10 does not fit the 64x48 frames of .*q.mp4"):
        read_video_frames(path, fps=25, size=8, crop=(40, 0, 30, 10))


def test_crop_of_image_folders(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[:, 15:] = 200
    for i in range(3):
        Image.fromarray(image).save(folder / f"{i}.png")
    right = read_folder_frames(folder, fps=25, folder_fps=25, size=5, crop=(15, 0, 15, 20))
    assert right.shape == (3, 5, 5, 3) and np.all(right == 200)
    with pytest.raises(ClipError, match="does not fit the 30x20 frames"):
        read_folder_frames(folder, fps=25, folder_fps=25, size=5, crop=(0, 0, 31, 20))


def test_crop_option_and_saved_settings():
    from avbalance.data.prepare.options import parse_crop
    from avbalance.data.prepare.plan import PrepareSettings

    assert parse_crop("105,178,90,72") == (105, 178, 90, 72)
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,10", "-1,0,5,5"):
        with pytest.raises(ValueError, match="X,Y,W,H|W, H >= 1"):
            parse_crop(bad)
    # no crop: the saved settings keep their old form, so caches prepared without the option resume
    assert "crop" not in PrepareSettings().to_dict()
    assert PrepareSettings(crop=(1, 2, 3, 4)).to_dict()["crop"] == [1, 2, 3, 4]


def test_random_crops_follow_torchvisions_random_resized_crop_rule():
    """Boxes stay inside the image with area fraction in [0.08, 1] and aspect ratio in [3/4, 4/3];
    their area and aspect distributions match torchvision's ``RandomResizedCrop.get_params`` drawn
    independently on a 1000 x 1000 image; the flip is a fair coin."""
    from torchvision.transforms import RandomResizedCrop

    from avbalance.data.datasets.cached import CROP_RATIO, CROP_SCALE, draw_crop

    torch.manual_seed(0)
    ours = np.array([draw_crop() for _ in range(4000)], dtype=np.float64)
    top, left, height, width, flip = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 1).all() and (left + width <= 1).all()
    area, aspect = height * width, width / height
    assert area.min() >= 0.08 - 1e-9 and area.max() <= 1 + 1e-9
    assert aspect.min() >= 3 / 4 - 1e-9 and aspect.max() <= 4 / 3 + 1e-9
    assert abs(flip.mean() - 0.5) < 0.03
    canvas = torch.empty(1, 1000, 1000)
    reference = np.array([RandomResizedCrop.get_params(canvas, CROP_SCALE, CROP_RATIO) for _ in range(4000)], float)
    ref_area = reference[:, 2] * reference[:, 3] / 1e6
    ref_aspect = reference[:, 3] / reference[:, 2]
    for mine, theirs in ((area, ref_area), (aspect, ref_aspect)):
        assert abs(mine.mean() - theirs.mean()) < 0.02
        assert np.abs(np.quantile(mine, [0.1, 0.5, 0.9]) - np.quantile(theirs, [0.1, 0.5, 0.9])).max() < 0.04
    centre_y = top + height / 2  # positions: uniform over the room left, as torchvision's randint
    ref_centre = (reference[:, 0] + reference[:, 2] / 2) / 1000
    assert abs(centre_y.mean() - ref_centre.mean()) < 0.02 and abs(centre_y.std() - ref_centre.std()) < 0.02
