"""The benchmark harness: its window and statistics rules, and ``run_all`` writing RESULTS.md."""
from __future__ import annotations

import json
import math
import statistics
import sys

import numpy as np
import pytest
import torch

from mm_paths import ROOT, TEXT_TINY

sys.path.insert(0, ROOT)

from benchmarks import common, run_all  # noqa: E402
from benchmarks.common import ClockCallback, StepClock, mean_sd, paired  # noqa: E402


def test_mean_sd_is_the_sample_statistics():
    xs = [1.0, 2.0, 4.0]
    m, s = mean_sd(xs)
    assert m == pytest.approx(7 / 3) and s == pytest.approx(math.sqrt(7 / 3))  # by hand: Σ(x-m)² = 42/9, / (n-1)
    assert s == pytest.approx(statistics.stdev(xs)) and s == pytest.approx(np.std(xs, ddof=1))
    assert mean_sd([0.5]) == (0.5, 0.0)


def test_paired_difference_is_over_per_seed_differences():
    ours, theirs = [10.0, 12.0, 9.0], [8.0, 11.0, 9.0]  # differences 2, 1, 0
    d = paired(ours, theirs)
    assert (d["mean"], d["sd"], d["n"]) == (pytest.approx(1.0), pytest.approx(1.0), 3)
    # not the difference of two unpaired summaries: sd of the differences, not sqrt(sd_a² + sd_b²)
    assert d["sd"] != pytest.approx(math.hypot(np.std(ours, ddof=1), np.std(theirs, ddof=1)))
    with pytest.raises(ValueError, match="equal"):
        paired([1.0], [1.0, 2.0])


def test_window_rate_startup_and_after(monkeypatch):
    ticks = iter([100.0, 101.0, 102.0, 104.0, 107.0, 109.0])  # begin, 4 step ends, end
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(ticks))
    clock = StepClock(warmup=1, steps=4)
    clock.begin()
    for n in (10, 20, 30, 40):
        clock.stamp(n)
    clock.end()
    t = clock.timing()
    assert t["samples_per_s"] == pytest.approx((20 + 30 + 40) / (107 - 101))  # steps (1, 4]
    assert (t["startup_s"], t["after_s"], t["wall_s"]) == (1.0, 2.0, 9.0)


def test_window_needs_enough_steps_and_a_valid_range():
    with pytest.raises(ValueError, match="warmup < steps"):
        StepClock(warmup=5, steps=5)
    clock = StepClock(warmup=1, steps=3)
    clock.begin()
    clock.stamp(4)
    clock.stamp(4)
    clock.end()
    with pytest.raises(ValueError, match="recorded 2 step ends"):
        clock.timing()


def test_count_forward_counts_training_forwards_only():
    clock, model = StepClock(1, 2), torch.nn.Linear(3, 1)
    clock.count_forward(model)
    model(torch.zeros(5, 3))
    model.eval()
    model(torch.zeros(7, 3))  # an evaluation batch: not a training step's samples
    model.train()
    model(input=torch.zeros(2, 3))  # keyword call, as HF's Trainer makes it
    assert clock.sizes == [5, 2]


def test_token_count_counts_padding_per_side_and_tokens_over_the_window():
    from benchmarks.vs_hf_trainer import TokenCount

    class Task(torch.nn.Module):
        def forward(self, batch):
            return batch["text_mask"].sum()

    task = Task()
    tokens = TokenCount(task)
    for lengths in ([3, 1], [2, 2], [4, 1, 1]):  # training steps, padded to the longest: 2x3, 2x2, 3x4 tokens
        task({"text_mask": torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])})
    task.eval()
    task({"text_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])})  # evaluation: 3 of 6 tokens are padding
    clock = StepClock(warmup=1, steps=3)
    clock.times = [10.0, 12.0, 14.0]
    figures = tokens.figures(clock)
    assert tokens.steps == [6, 4, 12]
    assert figures == {"tokens_per_s": (4 + 12) / (14.0 - 10.0), "train_pad_tokens": 2 + 0 + 6, "eval_pad_tokens": 3}


def test_clock_on_mm_ptft_trainer_sees_every_step_and_no_eval_batch(tmp_path):
    from mm_ptft.run import load_config
    from mm_ptft.tasks.text_classification import TextClassification
    from mm_ptft.train.trainer import Trainer

    cfg = load_config(TEXT_TINY, [f"output_dir={tmp_path}", "train.max_steps=4", "train.eval_every=2", "train.batch_size=8",
                                  "train.report=false", "data.generate.n_train=40", "data.generate.n_eval=12"])
    p = TextClassification.prepare(cfg)
    clock = StepClock(warmup=1, steps=4)
    clock.begin()
    clock.count_forward(p.task)
    Trainer.from_prepared(p, cfg, callbacks=[ClockCallback(clock)]).fit()  # evaluates after steps 2 and 4
    clock.end()
    assert len(clock.times) == 4 and clock.sizes == [8, 8, 8, 8]
    assert clock.timing()["samples_per_s"] > 0


def fake_compare(quick: bool, seeds: int, device: str) -> dict:
    rates = [100.0 + s for s in range(seeds)]
    return common.section("Fake comparison", common.window_rule(2, 10), ["arm", "samples/s"],
                          [["fake", common.fmt(rates)]], seeds=seeds, quick=quick, raw={"rates": rates})


def test_run_all_quick_only_writes_a_section_with_the_hardware_line(tmp_path, monkeypatch):
    monkeypatch.setitem(run_all.COMPARISONS, "fake", "fake")
    monkeypatch.setattr(run_all, "runner", lambda name: fake_compare)
    run_all.main(["--quick", "--only", "fake"], out_dir=tmp_path)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Fake comparison — **quick**" in md and "Seeds: 2." in md and "| fake | 100.500 ± 0.707 |" in md
    assert md.count("Hardware: ") == 2 and f"torch {torch.__version__}" in md  # the file's and the section's
    assert "steps (2, 10]" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["fake"]["raw"]["rates"] == [100.0, 101.0] and saved["fake"]["quick"] is True
    saved["other"] = {**saved["fake"], "title": "Kept"}  # an earlier comparison's result survives --only
    (tmp_path / "results.json").write_text(json.dumps(saved))
    monkeypatch.setitem(run_all.COMPARISONS, "other", "other")
    run_all.main(["--only", "fake", "--seeds", "3"], out_dir=tmp_path)
    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Kept" in md and "## Fake comparison\n" in md and "Seeds: 3." in md


def test_open_clip_comparison_on_cpu_records_a_skip_not_a_number():
    from benchmarks import vs_open_clip

    sec = vs_open_clip.compare(quick=True, seeds=2, device="cpu")
    assert sec["status"] == "skipped: needs CUDA" and sec["rows"] == []
    assert "skipped: needs CUDA" in common.render(sec)


def test_decode_on_device_benchmark_times_both_arms_on_jpegs_of_the_asked_size(tmp_path, monkeypatch):
    from PIL import Image

    from benchmarks import decode_on_device

    files = decode_on_device.write_jpegs(str(tmp_path / "j"), 2, 48, 40)
    with Image.open(files[0]) as img:
        assert (img.format, img.size) == ("JPEG", (48, 40))
    out = tmp_path / "decode.json"
    monkeypatch.setattr(sys, "argv", ["decode_on_device.py", "--n", "8", "--sizes", "48x40", "--workers", "0",
                                      "--batch", "4", "--repeats", "2", "--out", str(out)])
    decode_on_device.main()
    check, *rows = json.loads(out.read_text())["rows"]
    assert check["arm"] == "parity" and check["mean_abs_diff"] < 0.02  # on CPU both decoders are libjpeg-turbo
    assert [(r["size"], r["arm"], r["workers"]) for r in rows] == [("48x40", "worker", 0), ("48x40", "device", 0)]
    assert all(r["samples_per_s"] > 0 and r["main_ms_per_batch"] >= 0 for r in rows)


def test_compile_break_even_is_compile_time_over_step_time_saved():
    from benchmarks.compile_speed import break_even

    # batch 32: eager 100 samples/s = 0.32 s/step, compiled 200 samples/s = 0.16 s/step; 8 s of compiling
    assert break_even(8.0, 32, 100.0, 200.0) == pytest.approx(8.0 / 0.16)  # 50 steps
    assert break_even(8.0, 32, 100.0, 100.0) == math.inf and break_even(8.0, 32, 100.0, 90.0) == math.inf


def test_video_loader_benchmark_times_each_worker_count_against_the_step():
    pytest.importorskip("av")
    from benchmarks import video_loader

    assert run_all.COMPARISONS["video_loader"] == "benchmarks.video_loader"
    sec = video_loader.compare(quick=True, seeds=1, device="cpu", workers=(0, 1), size=32, frames=8, num_frames=2,
                               batch=2, steps=3)
    rates = sec["raw"]["rates"]
    assert list(rates) == ["loader, num_workers=0", "loader, num_workers=1", "training step (batches in memory)"]
    assert all(len(r) == 1 and r[0] > 0 for r in rates.values())
    step = rates["training step (batches in memory)"][0]
    ratio = float(sec["rows"][0][2].split(" ± ")[0])  # the loader's clips/s over the step's, by hand
    assert ratio == pytest.approx(rates["loader, num_workers=0"][0] / step, abs=0.006)
