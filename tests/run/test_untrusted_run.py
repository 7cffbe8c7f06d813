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


# ---- a user's own component from YAML: ``name: module.path:builder`` -------------------------------------------

USER_ENCODER = '''"""A user's own text encoder, outside mm_ptft: the masked mean of token embeddings."""
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from mm_ptft.encoders.text import TextEncoder, load_tokenizer
from mm_ptft.types import TEXT, TEXT_MASK, EncoderOutput

Path(__file__).with_name("imported.txt").write_text("the user's module ran")


class BagOfEmbeddings(TextEncoder):
    def __init__(self, tokenizer, dim: int, max_length: int) -> None:
        super().__init__()
        self.tokenizer, self.max_length, self.out_dim = tokenizer, max_length, dim
        self.embed = nn.Embedding(len(tokenizer), dim, padding_idx=tokenizer.pad_token_id)

    def forward(self, batch):
        ids, mask = batch[TEXT], batch[TEXT_MASK].bool()  # (B, L)
        x = self.embed(ids)  # (B, L, D)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        return EncoderOutput((x * m).sum(1) / m.sum(1).clamp(min=1), x, mask)  # pooled (B, D)


def bag_of_embeddings(dim: int = 32, max_length: int = 64, vocab_size: int = 500,
                      tokenizer: Optional[str] = None, corpus=None) -> BagOfEmbeddings:
    return BagOfEmbeddings(load_tokenizer(tokenizer, corpus, vocab_size, "model.text"), dim, max_length)
'''


@pytest.fixture(scope="module")
def user_component_run(tmp_path_factory, topics_data) -> tuple[Path, Path, Path]:
    """(a run trained from YAML with a text encoder from a module outside the package, copied elsewhere; the
    module's folder; the marker its import writes). The module stays importable (on sys.path) throughout, so
    only the refusal can keep it from running."""
    pkg = tmp_path_factory.mktemp("user_pkg")
    (pkg / "my_text_encoder.py").write_text(USER_ENCODER)
    sys.path.insert(0, str(pkg))
    root = tmp_path_factory.mktemp("user_run")
    (root / "tiny.yaml").write_text(Path(TEXT_TINY).read_text().replace(
        "name: hf ", "name: my_text_encoder:bag_of_embeddings  #").replace("pooling: mean", "dim: 32")
        .replace("    vocab_size: 1000\n", "").replace(
        "    config: {model_type: bert, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4,\n"
        "             intermediate_size: 128, max_position_embeddings: 128}\n", ""))
    trained = root / "trained"
    metrics = train(load_config(root / "tiny.yaml", [
        f"output_dir={trained}", f"data.train_file={topics_data['train_file']}", "data.generate=null",
        f"data.eval_file={topics_data['eval_file']}", "train.epochs=4", "train.report=false", "optim.lr=0.05"]))
    received = root / "received"
    import shutil

    shutil.copytree(trained, received)
    shutil.rmtree(trained)  # a run received from elsewhere: the place it was trained is gone
    yield received, pkg, metrics
    sys.path.remove(str(pkg))


def test_a_users_builder_outside_the_package_trains_from_yaml(user_component_run):
    """The YAML names ``my_text_encoder:bag_of_embeddings``; it trains, evaluates above chance (4 topics: 0.25)
    and the run records the dotted name as the encoder's spec."""
    run, pkg, metrics = user_component_run
    assert (pkg / "imported.txt").exists()  # the user's module was imported by the registry
    assert metrics["accuracy"] > 0.25 + 0.4, metrics
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["text"]["name"] == "my_text_encoder:bag_of_embeddings"


@pytest.mark.parametrize("command", [["predict", "{run}", "a goal for the team"], ["eval", "{run}"]])
def test_a_received_run_cannot_import_the_code_its_config_names(user_component_run, capsys, command):
    run, pkg, _ = user_component_run
    sys.modules.pop("my_text_encoder", None)
    (pkg / "imported.txt").unlink(missing_ok=True)
    assert main([a.format(run=run) for a in command]) == 2
    err = capsys.readouterr().err
    assert "model.text.name='my_text_encoder:bag_of_embeddings'" in err and str(run) in err
    assert "--trust-remote-code" in err
    assert not (pkg / "imported.txt").exists() and "my_text_encoder" not in sys.modules  # none of its code ran


def test_with_the_flag_a_received_run_uses_the_users_builder(user_component_run, capsys):
    run, pkg, _ = user_component_run
    sys.modules.pop("my_text_encoder", None)
    (pkg / "imported.txt").unlink(missing_ok=True)
    assert main(["predict", "--trust-remote-code", str(run), "a goal for the team"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["label"] in {"cooking", "finance", "space", "sports"}
    assert (pkg / "imported.txt").exists()  # the flag, and only the flag, let the module run
