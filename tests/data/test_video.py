"""mm_ptft.data.video: frames against PyAV's own decode, every container, rotation, variable frame rate,
sampling by hand, short clips (pad / loop), transforms on whole clips, and the hostile-file matrix."""
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from mm_ptft.data.generated.video import CODECS, moving_clip, write_video  # noqa: E402
from mm_ptft.data.image import ImageAugment  # noqa: E402
from mm_ptft.data.tables import DataError  # noqa: E402
from mm_ptft.data.video import (VideoCollator, VideoDataset, VideoSampling, check_video, decode_frames,  # noqa: E402
                                make_clip, probe_video, resampled, sample_clip, sample_positions, video_problem,
                                video_table, video_transforms)
from mm_ptft.encoders.image import Preprocess  # noqa: E402


def ramp(frames: int = 12, h: int = 24, w: int = 32) -> np.ndarray:
    """Frame t is a uniform grey 20 * t with a bright mark in its top-left corner (orientation visible)."""
    clip = np.stack([np.full((h, w, 3), 20 * t, np.uint8) for t in range(frames)])
    clip[:, :4, :6] = 250
    return clip


def pyav_frames(path: str) -> list[np.ndarray]:
    """The independent reference: PyAV's own decode, every frame, as rgb24."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("ext", sorted(CODECS))
def test_frames_equal_pyav_decode_of_the_same_indices(tmp_path, ext):
    path = write_video(str(tmp_path / f"clip{ext}"), moving_clip(random.Random(0), "right", 32, 10, 2.0))
    info = probe_video(path)
    assert info.num_frames == 10 and abs(info.fps - 10) < 1e-6
    ref = pyav_frames(path)
    idx = [7, 0, 3, 3, 9]
    got = decode_frames(path, idx)  # (T, 3, H, W)
    assert got.dtype == torch.uint8 and got.shape == (5, 3, 32, 32)
    for k, i in enumerate(idx):
        assert torch.equal(got[k].permute(1, 2, 0), torch.from_numpy(ref[i]))


def test_generated_mp4_clips_are_the_same_bytes_when_generated_again_after_training_work(tmp_path):
    """A resumed run (or a CLI subprocess) regenerates data.generate's clips: they must be the bytes the first
    run wrote. libx264's default mbtree rate control gave other bytes once a torch forward/backward had run in
    the process (10-14 of 128 clips); the reference is the file bytes themselves."""
    from mm_ptft.data.generated.video import moving_shapes

    first = moving_shapes(str(tmp_path / "a"), n_train=48, n_eval=0, frames=8)
    x = torch.randn(8, 3, 8, 32, 32, requires_grad=True)
    torch.nn.Conv3d(3, 16, 3)(x).sum().backward()  # work that changes the process's state between generations
    junk = [bytearray(os.urandom(40_000)) for _ in range(40)]
    second = moving_shapes(str(tmp_path / "b"), n_train=48, n_eval=0, frames=8)
    del junk
    root_a, root_b = (Path(p["train_file"]).parent / "train" for p in (first, second))
    names = sorted(p.name for p in root_a.iterdir())
    assert len(names) == 48
    assert [n for n in names if (root_a / n).read_bytes() != (root_b / n).read_bytes()] == []


def test_rotation_metadata_turns_the_clip_upright(tmp_path):
    path = write_video(str(tmp_path / "portrait.mp4"), ramp(4, 24, 32), rotation=90)
    got = decode_frames(path, [0])[0].permute(1, 2, 0).numpy()  # (H, W, 3)
    assert got.shape == (32, 24, 3)  # landscape pixels shown portrait
    assert np.array_equal(got, np.rot90(pyav_frames(path)[0]))  # counter-clockwise by 90, as the matrix says
    assert got[-4:, :4].mean() > 200  # the top-left mark now lies bottom-left


def test_odd_sizes_decode(tmp_path):
    path = write_video(str(tmp_path / "odd.mp4"), ramp(3, 31, 33), codec="libx264rgb", pix_fmt="rgb24")
    assert decode_frames(path, [2]).shape == (1, 3, 31, 33)


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    # ticks of 1/1000 s: frames at 0, 10, 20, 100, 110, 300 ms
    path = write_video(str(tmp_path / "vfr.mkv"), ramp(6), pts=[0, 10, 20, 100, 110, 300])
    info = probe_video(path)
    assert np.allclose(info.times, [0, 0.01, 0.02, 0.1, 0.11, 0.3])
    # at 10 fps the frames showing at 0, .1, .2, .3 s are 0, 3, 4 (still showing at .2 s), 5
    assert resampled(info.times, 10) == [0, 3, 4, 5]
    clip, mask = sample_clip(path, VideoSampling(num_frames=4, frame_stride=1, fps=10), train=False)
    ref = pyav_frames(path)
    assert all(torch.equal(clip[k].permute(1, 2, 0), torch.from_numpy(ref[i])) for k, i in enumerate([0, 3, 4, 5]))
    assert mask.all()


def test_sampling_positions_by_hand():
    s = VideoSampling(num_frames=4, frame_stride=3)
    assert sample_positions(16, s, train=False) == ([3, 6, 9, 12], 4)  # span 10, centred start (16 - 10) // 2
    assert sample_positions(5, s, train=False) == ([0, 3], 2)  # pad: two real frames
    assert sample_positions(5, VideoSampling(4, 3, short="loop"), train=False) == ([0, 3, 1, 4], 4)
    seg = VideoSampling(num_frames=4, mode="segments")
    assert sample_positions(16, seg, train=False) == ([1, 5, 9, 13], 4)  # middle of [0,4) [4,8) [8,12) [12,16)
    assert sample_positions(3, seg, train=False) == ([0, 1, 2], 3)
    assert sample_positions(3, VideoSampling(4, mode="segments", short="loop"), train=False) == ([0, 0, 1, 2], 4)


def test_training_draws_are_random_within_bounds_and_seeded():
    s, seg = VideoSampling(num_frames=4, frame_stride=3), VideoSampling(num_frames=4, mode="segments")
    torch.manual_seed(0)
    starts = {sample_positions(16, s, True)[0][0] for _ in range(200)}
    assert starts == set(range(7))  # every start 0..16-10
    for _ in range(50):
        picks = sample_positions(16, seg, True)[0]
        assert all(4 * k <= p < 4 * k + 4 for k, p in enumerate(picks))
    torch.manual_seed(1)
    a = [sample_positions(40, s, True)[0] for _ in range(5)]
    torch.manual_seed(1)
    assert a == [sample_positions(40, s, True)[0] for _ in range(5)]


def test_sampling_choices_are_checked():
    from mm_ptft.config import ConfigError

    with pytest.raises(ConfigError, match="data.sampling.short='cut'"):
        VideoSampling(short="cut").check()
    with pytest.raises(ConfigError, match="data.sampling.mode"):
        VideoSampling(mode="dense").check()


def test_one_crop_for_the_whole_clip_and_padding_masked(tmp_path):
    still = np.repeat(moving_clip(random.Random(1), "up", 32, 1, 0.0), 3, axis=0)  # 3 identical frames
    path = write_video(str(tmp_path / "still.mkv"), still)
    tf = video_transforms(Preprocess.make(24), ImageAugment(scale=[0.3, 0.6], hflip=0.5), train=True)
    s = VideoSampling(num_frames=5, frame_stride=1)
    video, mask = make_clip(path, s, tf, train=True)
    assert video.shape == (5, 3, 24, 24) and video.dtype == torch.float32
    assert mask.tolist() == [True, True, True, False, False]
    assert torch.allclose(video[0], video[1]) and torch.allclose(video[0], video[2])  # same crop/flip each frame
    assert video[3:].abs().sum() == 0


MKV_CLUSTER = bytes.fromhex("1f43b675")  # the Matroska element that holds frames


@pytest.fixture
def bad_files(tmp_path):
    import soundfile

    good = write_video(str(tmp_path / "good.mkv"), ramp(12))
    data = open(good, "rb").read()
    files = {"good": good, "missing": str(tmp_path / "nope.mp4")}
    for name, content in (("empty", b""), ("junk", b"not a video" * 40), ("truncated", data[: len(data) // 2]),
                          ("zero_frames", data[: data.index(MKV_CLUSTER) + 8])):  # headers + an empty cluster
        files[name] = str(tmp_path / f"{name}.mkv")
        open(files[name], "wb").write(content)
    files["audio_only"] = str(tmp_path / "speech.wav")
    soundfile.write(files["audio_only"], np.zeros(800, np.float32), 8000)
    return files


def test_hostile_files_are_named_or_counted(bad_files):
    expected = {"good": None, "missing": "missing", "empty": "empty", "junk": "corrupt", "truncated": "truncated",
                "zero_frames": "zero_frames", "audio_only": "no_stream"}
    assert {k: video_problem(p) for k, p in bad_files.items()} == expected
    assert video_problem(bad_files["good"], max_pixels=100) == "too_large"  # 32x24 frames over a 100-pixel limit
    with pytest.raises(DataError, match="speech.wav: no video stream"):
        probe_video(bad_files["audio_only"])
    with pytest.raises(DataError, match=r"train.csv: row 3: truncated video file .*truncated.mkv"):
        check_video(3, bad_files["truncated"], "train.csv", False, {})
    counters: dict = {}
    kept = [check_video(i, p, "t.csv", True, counters) for i, p in enumerate(bad_files.values())]
    assert sum(kept) == 1
    assert counters == {f"skipped_{kind}_videos": 1 for kind in expected.values() if kind}


def test_dataset_skips_a_file_broken_after_the_scan_and_collates(tmp_path):
    paths = [write_video(str(tmp_path / f"{i}.mp4"), ramp(4 + 4 * i)) for i in range(3)]
    tf = video_transforms(Preprocess.make(16), ImageAugment(), train=False)
    s = VideoSampling(num_frames=6, frame_stride=1)
    open(paths[2], "wb").write(b"broken")
    ds = VideoDataset(paths, [0, 1, 1], tf, s, train=False, skip_bad=True)
    batch = VideoCollator()([ds[i] for i in range(3)])
    assert batch["video"].shape == (2, 6, 3, 16, 16) and batch["labels"].tolist() == [0, 1]
    assert batch["video_mask"].sum(1).tolist() == [4, 6]
    with pytest.raises(DataError, match="2.mp4"):
        VideoDataset(paths, [0, 1, 1], tf, s, train=False)[2]


def test_video_table_from_folder_and_csv(tmp_path):
    for c in ("left", "right"):
        os.makedirs(tmp_path / "clips" / c)
        write_video(str(tmp_path / "clips" / c / "a.webm"), ramp(2))
    paths, labels = video_table(str(tmp_path / "clips"), "data.train_file", "path", "label")
    assert labels == ["left", "right"] and all(os.path.isfile(p) for p in paths)
    (tmp_path / "t.csv").write_text("file,y\nclips/left/a.webm,left\n")
    assert video_table(str(tmp_path / "t.csv"), "k", "file", "y")[0] == [str(tmp_path / "clips/left/a.webm")]
    with pytest.raises(DataError, match="no class sub-folders"):
        video_table(str(tmp_path / "clips" / "left"), "data.train_file", "path", "label")
