"""``train.compile``: the mode each value gives on each device, the CPU warning for CUDA graphs, recompiles on
length-grouped batches, and compiled runs that accumulate, checkpoint, resume and export like eager ones. Dynamo runs
here with the ``eager``/``aot_eager`` backends; tests that trace the model several times are ``slow`` (``-m slow``),
as is the inductor run in test_memory_speed_options.py. The CUDA-graph test runs where CUDA is (gpu_checks)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from mm_ptft.config import ConfigError
from mm_ptft.run import train
from mm_ptft.tasks import get_recipe
from mm_ptft.train import compiling
from mm_ptft.train.trainer import Trainer

from test_trainer import NO_DROPOUT, cfg_for, crash_then_resume, final_weights

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
ONE_LAYER = ["model.text.config.num_hidden_layers=1"]  # dynamo traces every op in Python: fewer ops, faster tests


def cheap_compile(monkeypatch, backend):
    """``torch.compile`` through ``backend`` (modes are inductor's: recorded, not passed); returns the modes asked."""
    real, modes = torch.compile, []

    def fake(model, mode=None, **kw):
        modes.append(mode)
        return real(model, backend=backend, **kw)

    monkeypatch.setattr(torch, "compile", fake)
    torch._dynamo.reset()  # graphs of earlier tests would be reused and hide this test's compiles
    return modes


@pytest.mark.parametrize("value, device, expected", [
    (False, CPU, (None, False)), (False, CUDA, (None, False)),
    (True, CPU, ("default", False)), ("default", CUDA, ("default", False)),
    ("reduce-overhead", CUDA, ("reduce-overhead", True)),
    ("max-autotune", CUDA, ("max-autotune", True)),
    ("max-autotune", CPU, ("max-autotune-no-cudagraphs", False)),  # the same compile: autotuning, no graphs
    ("max-autotune-no-cudagraphs", CUDA, ("max-autotune-no-cudagraphs", False))])
def test_mode_and_cuda_graphs_per_value_and_device(value, device, expected):
    assert compiling.effective_mode(value, device) == expected


def test_reduce_overhead_on_cpu_warns_naming_the_key_and_compiles_like_default():
    with pytest.warns(UserWarning, match=r"train\.compile=reduce-overhead: CUDA graphs need a CUDA device"):
        assert compiling.effective_mode("reduce-overhead", CPU) == ("default", False)


def test_bad_value_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"train\.compile.*'fast'.*false, true, default, reduce-overhead"):
        compiling.effective_mode("fast", CPU)


def test_clone_outputs_copies_every_tensor():
    out = {"loss": torch.ones(()), "parts": [torch.zeros(2)], "n": 3}
    copy = compiling.clone_outputs(out)
    assert copy["n"] == 3 and torch.equal(copy["loss"], out["loss"]) and torch.equal(copy["parts"][0], out["parts"][0])
    assert copy["loss"].data_ptr() != out["loss"].data_ptr()
    assert copy["parts"][0].data_ptr() != out["parts"][0].data_ptr()


def test_trainer_on_cpu_with_reduce_overhead_warns_and_compiles_without_cuda_graphs(topics_data, tmp_path,
                                                                                    monkeypatch):
    modes = cheap_compile(monkeypatch, "eager")
    cfg = cfg_for(topics_data, tmp_path / "run", "train.compile=reduce-overhead")
    with pytest.warns(UserWarning, match=r"train\.compile=reduce-overhead"):
        trainer = Trainer.from_prepared(get_recipe(cfg.task).prepare(cfg), cfg)
    assert isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule) and trainer.model._orig_mod is trainer.task
    assert modes == [None] and not trainer._cudagraphs  # torch.compile's own default mode, no step marking


@pytest.mark.slow  # dynamo traces the model several times (10-20 s on 2 shared cores)
@pytest.mark.parametrize("dynamic, frames", [
    # automatic: train static, then dynamic in the length; eval (no_grad: new guards) dynamic in the length, then in
    # the batch (its short last batch)
    ("null", 4),
    ("true", 2)])  # dynamic from the start: one graph for training, one for evaluation
def test_length_grouped_batches_compile_a_few_graphs_not_one_per_length(dynamic, frames, topics_data, tmp_path,
                                                                         monkeypatch):
    """Length-grouped batches of many lengths compile a bounded number of graphs (a static compile per length would
    hit dynamo's recompile limit and run eagerly)."""
    cheap_compile(monkeypatch, "eager")
    cfg = cfg_for(topics_data, tmp_path / "run", "train.compile=true", f"train.compile_dynamic={dynamic}",
                  "train.max_steps=10", "train.eval_every=100", *ONE_LAYER)
    trainer = Trainer.from_prepared(get_recipe(cfg.task).prepare(cfg), cfg)
    shapes = []
    record = torch._dynamo.disable(lambda m, args: shapes.append((m.training, *args[0]["text"].shape)))
    trainer.task.register_forward_pre_hook(record)  # not compiled itself (it would count as a frame)
    before = compiling.graph_counts()["frames"]
    trainer.fit()  # 10 steps, then one evaluation
    train_shapes, eval_shapes = {s[1:] for s in shapes if s[0]}, {s[1:] for s in shapes if not s[0]}
    assert len(train_shapes) >= 4  # the length grouping really varied the lengths...
    assert len({b for b, _ in eval_shapes}) == 2  # ...and evaluation's last batch is shorter (120 = 7 x 16 + 8)
    assert compiling.graph_counts()["frames"] - before == frames < len(train_shapes) + len(eval_shapes)


@pytest.mark.slow  # dynamo traces the model several times (10-20 s on 2 shared cores)
def test_compiled_run_resumes_to_the_eager_weights_and_exports_plain_names(topics_data, tmp_path, monkeypatch):
    """Eager: 8 steps straight. Compiled: crash after step 5, resume to 8. Same weights, checkpoint and exported
    encoder keys without ``_orig_mod.``."""
    steps = ["train.max_steps=8", "train.save_every=4", "train.eval_every=100", *NO_DROPOUT, *ONE_LAYER]
    train(cfg_for(topics_data, tmp_path / "eager", *steps))
    modes = cheap_compile(monkeypatch, "eager")
    crash_then_resume(topics_data, tmp_path / "compiled", [*steps, "train.compile=true"], 5, monkeypatch)
    assert modes == [None, None]  # both runs compiled (mode default)
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "compiled")
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5, msg=k)
    exported = {run: load_file(str(tmp_path / run / "encoders" / "text" / "model.safetensors"))
                for run in ("eager", "compiled")}
    assert exported["compiled"].keys() == exported["eager"].keys()
    assert json.loads((tmp_path / "compiled" / "encoders" / "text" / "source.json").read_text())["checkpoint"]


@pytest.mark.slow  # dynamo traces the model several times (10-20 s on 2 shared cores)
def test_aot_compiled_accumulation_with_grad_checkpointing_matches_eager(topics_data, tmp_path, monkeypatch):
    """AOTAutograd traces forward and backward (with the HF layers' activation checkpoints) over 2 micro-batches
    per step: the same weights as the eager run without either option."""
    common = ["train.max_steps=3", "train.grad_accum_steps=2", "train.eval_every=100", *NO_DROPOUT, *ONE_LAYER,
              "data.pad_to_multiple_of=64"]  # one shape: one forward/backward trace
    train(cfg_for(topics_data, tmp_path / "eager", *common))
    cheap_compile(monkeypatch, "aot_eager")
    train(cfg_for(topics_data, tmp_path / "aot", *common, "train.compile=true", "train.grad_checkpointing=true"))
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "aot")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device (benchmarks/gpu_checks.sh)")
def test_cuda_graphs_train_and_evaluate_like_eager_with_accumulation(topics_data, tmp_path):
    """reduce-overhead on CUDA: 2 micro-batches per step (gradients accumulate across replays) and evaluations
    between steps (outputs kept by metrics) give eager's weights and metrics, with no graph skipped."""
    common = ["train.device=cuda", "train.precision=fp32", "train.max_steps=6", "train.grad_accum_steps=2",
              "train.eval_every=3", "data.pad_to_multiple_of=64", *NO_DROPOUT]  # one train shape: one recording
    eager = train(cfg_for(topics_data, tmp_path / "eager", *common))
    skips = compiling.graph_counts()["cudagraph_skips"]
    graphs = train(cfg_for(topics_data, tmp_path / "graphs", *common, "train.compile=reduce-overhead"))
    assert compiling.graph_counts()["cudagraph_skips"] == skips
    assert graphs.keys() == eager.keys() and graphs["loss"] == pytest.approx(eager["loss"], rel=1e-3)
    for k in eager:  # counts over 120 eval rows: rounding may flip a near-tie prediction or two, no more
        assert graphs[k] == pytest.approx(eager[k], abs=2 / 120 + 1e-6), k
    a, b = final_weights(tmp_path / "eager"), final_weights(tmp_path / "graphs")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-3, msg=k)
