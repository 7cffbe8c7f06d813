"""A run directory is data, not code: ``mm-ptft predict/eval/export`` never turn ``trust_remote_code``
on from the run's config; only ``--trust-remote-code`` on that command line does, and the refusal says so.

The run here was received from someone: its config asks for remote code and its HF model directory
carries a ``configuration_*.py`` that writes a marker file the moment it is imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mm_paths import ROOT, TEXT_TINY
from mm_ptft.cli import main
from mm_ptft.config import ConfigError
from mm_ptft.encoders.base import remote_code, untrusted_source
from mm_ptft.run import load_config, train

CORPUS = ["sports match goal team", "market stock price bank", "rain cloud storm wind", "code python bug test"] * 3


def _bert_dir(path: Path) -> str:
    """A tiny random-init BERT and its WordPiece tokenizer, written by save_pretrained."""
    from transformers import BertConfig, BertModel

    from mm_ptft.encoders.text import train_wordpiece

    tok = train_wordpiece(CORPUS, 200)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _plant_remote_code(model_dir: Path, marker: Path) -> None:
    """Custom config/model classes (BERT underneath) that write ``marker`` when their code is run."""
    (model_dir / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('code from the run directory ran')\n"
        "from transformers import BertConfig\n\n\nclass EvilConfig(BertConfig):\n    model_type = 'evil_bert'\n")
    (model_dir / "modeling_evil.py").write_text(
        "from transformers import BertModel\n\nfrom .configuration_evil import EvilConfig\n\n\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def received_run(tmp_path_factory, topics_data) -> tuple[Path, Path]:
    """(run directory whose config asks for remote code, the marker path its code would write)."""
    root = tmp_path_factory.mktemp("received")
    model_dir = root / "model"
    spec = f"{{name: hf, name_or_path: {_bert_dir(model_dir)}, pooling: mean}}"
    run = root / "run"
    train(load_config(TEXT_TINY, [f"output_dir={run}", f"data.train_file={topics_data['train_file']}",
                                  f"data.eval_file={topics_data['eval_file']}", f"model.text={spec}",
                                  "train.max_steps=1", "train.report=false", "train.batch_size=8"]))
    marker = root / "marker.txt"
    _plant_remote_code(model_dir, marker)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["text"]["trust_remote_code"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run, marker


@pytest.mark.parametrize("command", [["predict", "{run}", "a goal for the team"], ["eval", "{run}"],
                                     ["export", "{run}", "--format", "torchscript"],
                                     ["eval", "{run}", "model.text.trust_remote_code=true"]])
def test_a_run_directory_cannot_turn_remote_code_on(received_run, capsys, command):
    run, marker = received_run
    assert main([a.format(run=run) for a in command]) == 2
    err = capsys.readouterr().err
    assert "--trust-remote-code" in err and "model.text.trust_remote_code" in err and str(run) in err
    assert not marker.exists()


def test_the_flag_on_the_command_line_lets_it_run(received_run, tmp_path):
    """In a child process, so the dynamic module lands in a private HF_MODULES_CACHE."""
    run, marker = received_run
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "mm_ptft.cli", "predict", "--trust-remote-code", str(run),
                          "a goal for the team"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.splitlines()[-1])["label"]
    assert marker.exists()  # the flag, and only the flag, let the run's code run
    marker.unlink()


def test_only_loading_an_untrusted_source_refuses_remote_code():
    """Training from one's own YAML still honours trust_remote_code; loading a run directory does not."""
    assert remote_code(True, "model.text", "some/dir") and not remote_code(False, "model.text", "some/dir")
    with untrusted_source("runs/x"):
        assert not remote_code(False, "model.image", "some/dir")
        with pytest.raises(ConfigError, match="runs/x: model.image.trust_remote_code .*--trust-remote-code"):
            remote_code(True, "model.image", "some/dir")
    assert remote_code(True, "model.text", "some/dir")


def test_an_encoder_directory_cannot_turn_remote_code_on(tmp_path):
    """A recipe loading a received encoder directory by path: its stored ``trust_remote_code`` is ignored
    (only the recipe's own spec can ask for it), so the planted code never runs."""
    from mm_ptft.encoders import TEXT_ENCODERS, build_encoder
    from mm_ptft.encoders.base import ENCODER_FILE

    enc = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": _bert_dir(tmp_path / "bert")}, "model.text")
    enc.save_pretrained(tmp_path / "enc")
    marker = tmp_path / "marker.txt"
    _plant_remote_code(tmp_path / "enc", marker)
    meta = json.loads((tmp_path / "enc" / ENCODER_FILE).read_text())
    meta["kwargs"]["trust_remote_code"] = True
    (tmp_path / "enc" / ENCODER_FILE).write_text(json.dumps(meta))
    again = build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path / "enc")}, "model.text")
    assert "trust_remote_code" not in again.spec and not marker.exists()
    with untrusted_source("runs/received"):  # inside a loaded run too: nothing asks for remote code, nothing runs
        build_encoder(TEXT_ENCODERS, {"name": "hf", "name_or_path": str(tmp_path / "enc")}, "model.text")
    assert not marker.exists()
