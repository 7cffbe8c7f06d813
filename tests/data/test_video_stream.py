"""mm_ptft.data.video_stream: video classification on WebDataset shards of ``.mp4`` members trains and evaluates;
a streamed clip equals PyAV's own decode of the sampled frames; corrupt and truncated members are a counted skip
(``skipped_<problem>_videos``) or a DataError naming the shard and sample, as data.skip_bad_samples says."""
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from mm_fixtures import csv_to_tars
from mm_ptft.data.generated import generate
from mm_ptft.data.generated.video import moving_clip, write_video
from mm_ptft.data.shards import Shard
from mm_ptft.data.tables import DataError, LabelMap
from mm_ptft.data.video import VideoSampling
from mm_ptft.data.video_stream import VideoRow
from mm_ptft.run import load_config, train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "recipes", "video_classification", "tiny.yaml")
LABELS = ["left", "right", "up", "down"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """moving_shapes clips as three tar shards of ``{key}.mp4`` + ``{key}.cls``; the last shard also holds a
    corrupt member and a truncated (.mkv) one."""
    root = tmp_path_factory.mktemp("video_shards")
    files = generate({"name": "moving_shapes", "n_train": 48, "n_eval": 16, "frames": 8, "seed": 0}, str(root))
    good = (Path(files["train_file"]).parent / "train" / "00000.mp4").read_bytes()
    mkv = Path(write_video(str(root / "whole.mkv"), moving_clip(random.Random(0), "left", 32, 12, 2.0))).read_bytes()
    # a cut mp4 loses its moov atom (written last: no stream left to read); a cut mkv keeps its header
    bad = [{"__key__": "corrupt", "mp4": b"not a video" * 50, "cls": "left"},
           {"__key__": "cut", "mkv": mkv[: len(mkv) // 2], "cls": "left"}]
    csv_to_tars(files["train_file"], root, [slice(0, 16), slice(16, 32), slice(32, None)],
                lambda read, r: {"mp4": read(r["path"]), "cls": r["label"]}, last_extra=bad)
    return {"pattern": str(root / "train-{0..2}.tar"), "eval_file": files["eval_file"], "good": good, "bad": bad}


def row(skip_bad: bool, train: bool = False) -> VideoRow:
    ident = lambda clip: clip.float()  # noqa: E731  (the uint8 frames as they were decoded)
    return VideoRow(ident, VideoSampling(num_frames=4, frame_stride=2), train, "path", "label",
                    LabelMap(LABELS), skip_bad)


def test_a_streamed_member_is_pyav_s_decode_of_the_sampled_frames(clips):
    item = row(False)(Shard("s.tar", "tar"), 0, {"__key__": "k", "mp4": clips["good"], "cls": b"right"}, {})
    with av.open(io.BytesIO(clips["good"])) as c:
        ref = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])  # (8, H, W, 3)
    centred = [0, 2, 4, 6]  # 8 frames, span (4 - 1) * 2 + 1 = 7: the centred start is (8 - 7) // 2 = 0
    assert torch.equal(item["video"], torch.from_numpy(ref[centred]).permute(0, 3, 1, 2).float())
    assert item["video_mask"].all() and item["labels"] == 1


def test_bad_members_are_counted_or_named(clips):
    shard = Shard("/data/train-2.tar", "tar")
    counters: dict = {}
    for k, rec in enumerate(clips["bad"]):
        assert row(True, train=True)(shard, k, {**rec, "cls": rec["cls"].encode()}, counters) is None
    assert counters == {"skipped_corrupt_videos": 1, "skipped_truncated_videos": 1}
    with pytest.raises(DataError, match=r"train-2.tar: sample 'cut': truncated video"):
        row(False)(shard, 1, {**clips["bad"][1], "cls": b"left"}, {})
    with pytest.raises(DataError, match=r"train-2.tar: sample 'k': no video"):
        row(False)(shard, 0, {"__key__": "k", "cls": b"left"}, {})


def run_args(tmp_path, clips, *extra):
    return [f"output_dir={tmp_path}", "train.report=false", "data.generate=null", "data.streaming=true",
            f"data.train_file={clips['pattern']}", f"data.eval_file={clips['eval_file']}",
            f"data.labels=[{','.join(LABELS)}]", "train.batch_size=8", "train.max_steps=8", "train.num_workers=2",
            "train.eval_every=8", "data.shuffle_block=16", *extra]


def test_a_run_on_mp4_shards_trains_and_counts_the_bad_members(tmp_path, clips):
    results = train(load_config(TINY, run_args(tmp_path, clips, "data.skip_bad_samples=true")))
    assert 0 <= results["accuracy"] <= 1 and results["loss"] > 0
    rows = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    data = [r for r in rows if r.get("kind") == "data" or "skipped_corrupt_videos" in r]
    assert data and data[-1]["skipped_corrupt_videos"] >= 1 and data[-1]["skipped_truncated_videos"] >= 1


def test_without_skip_bad_samples_a_bad_member_stops_the_run_naming_it(tmp_path, clips):
    with pytest.raises(DataError, match=r"train-2.tar: sample '(corrupt|cut)'"):
        train(load_config(TINY, run_args(tmp_path, clips, "train.num_workers=0", "train.max_steps=20")))


VIDEO_TEXT = os.path.join(ROOT, "recipes", "pretrain_contrastive", "tiny_video.yaml")


def test_video_text_pairs_stream_from_mp4_shards(tmp_path):
    """Video–text CLIP on tars of ``{key}.mp4`` + ``{key}.txt`` (+ ``{key}.cls``) trains and evaluates retrieval."""
    files = generate({"name": "moving_captions", "n_train": 24, "n_eval": 8, "frames": 8, "seed": 0},
                     str(tmp_path / "gen"))
    csv_to_tars(files["train_file"], tmp_path, [slice(0, 12), slice(12, None)],
                lambda read, r: {"mp4": read(r["video"]), "txt": r["caption"], "cls": r["label"]})
    args = [f"output_dir={tmp_path / 'run'}", "train.report=false", "data.generate=null", "data.streaming=true",
            f"data.train_file={tmp_path / 'train-{0..1}.tar'}", f"data.eval_file={files['eval_file']}",
            "train.batch_size=8", "train.max_steps=2", "train.eval_every=2", "train.num_workers=0"]
    results = train(load_config(VIDEO_TEXT, args))
    assert {"video_to_text_r1", "text_to_video_r1"} <= set(results)


def test_a_paired_training_clip_is_a_seeded_random_draw(clips):
    from mm_ptft.data.multimodal import MediaConfig

    media = MediaConfig(video_size=32, video_sampling=VideoSampling(num_frames=2, frame_stride=1))
    rec = {"__key__": "k", "mp4": clips["good"], "txt": b"a clip"}
    shard = Shard("/d/train-0.tar", "tar")
    draw = lambda train, row, pass_no=0: _paired(media, train, pass_no)(shard, row, rec, {})["video"]  # noqa: E731
    assert torch.equal(draw(True, 0), draw(True, 0))  # the same sample, the same clip, in any run
    starts = {float(draw(True, r)[0].mean()) for r in range(8)}  # 7 possible starts in 8 frames
    assert len(starts) > 1 and torch.equal(draw(False, 0), draw(False, 5))  # eval: the centred clip, fixed


def _paired(media, train: bool, pass_no: int):
    from mm_ptft.data.multimodal import Columns
    from mm_ptft.data.paired_stream import PairedRecord

    fn = PairedRecord(["video"], Columns("caption", "image", "audio", "label", "video"), media, train=train)
    fn.set_pass(pass_no)
    return fn


def test_streamed_multimodal_classification_draws_seeded_random_clips_in_training_and_centred_in_eval(clips):
    """``LabeledRecord`` (streamed multimodal classification) samples a video as the paired stream does: a random
    clip per (seed, pass, shard, row) in training, the centred one in eval."""
    from mm_ptft.data.multimodal import Columns, MediaConfig
    from mm_ptft.data.paired_stream import LabeledRecord

    media = MediaConfig(video_size=32, video_sampling=VideoSampling(num_frames=2, frame_stride=1))
    rec = {"__key__": "k", "mp4": clips["good"], "cls": b"left"}
    shard = Shard("/d/train-0.tar", "tar")

    def draw(train: bool, row: int) -> torch.Tensor:
        fn = LabeledRecord(["video"], Columns("caption", "image", "audio", "label", "video"), media, None, 8,
                           LabelMap(LABELS), [], train=train, seed=0)
        return fn(shard, row, rec, {})["video"]

    assert torch.equal(draw(True, 3), draw(True, 3))
    assert len({float(draw(True, r)[0].mean()) for r in range(8)}) > 1
    assert torch.equal(draw(False, 0), draw(False, 5))
    assert torch.equal(draw(False, 0), _paired(media, False, 0)(shard, 0, {**rec, "txt": b"x"}, {})["video"])
