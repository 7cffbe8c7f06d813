import subprocess
import sys
import sysconfig
from pathlib import Path

from mm_ptft.cli import main

from mm_paths import TEXT_TINY


# The console script of the running interpreter's environment (works from a non-activated venv).
CONSOLE = str(Path(sysconfig.get_path("scripts")) / "mm-ptft")


def test_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "text_encoder: hf, open_clip, tiny" in out and "task:" in out and "text_classification" in out
    assert "image_encoder:" in out and "audio_encoder:" in out and "fusion:" in out and "objective:" in out


def test_config_error_exits_2_naming_the_key(capsys):
    assert main(["train", TEXT_TINY, "train.max_stepz=3"]) == 2
    assert "train.max_stepz" in capsys.readouterr().err


def test_console_script_and_recipe_script_run(tmp_path):
    """The README's `mm-ptft train` and the recipe's own train.py both run a tiny job."""
    args = [TEXT_TINY, f"output_dir={tmp_path / 'a'}", "train.max_steps=2", "train.report=false"]
    subprocess.run([CONSOLE, "train", *args], check=True, capture_output=True)
    assert (tmp_path / "a" / "final_metrics.json").exists()
    args[1] = f"output_dir={tmp_path / 'b'}"
    subprocess.run([sys.executable, "recipes/text_classification/train.py", *args], check=True, capture_output=True,
                   cwd=__file__.rsplit("/tests/", 1)[0])
    assert (tmp_path / "b" / "final_metrics.json").exists()


def test_generate_writes_the_files_a_recipe_reads_and_names_bad_options(tmp_path, capsys):
    import csv
    import json

    assert main(["generate", "tone_speech", str(tmp_path / "speech"), "n_train=3", "n_eval=2"]) == 0
    paths = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(open(paths["train_file"])))
    assert len(rows) == 3 and {"audio", "text"} <= set(rows[0])
    assert (tmp_path / "speech" / rows[0]["audio"]).is_file()  # media paths relative to the table
    assert main(["generate", "tone_speech", str(tmp_path / "speech")]) == 2  # never writes into a used folder
    assert "not empty" in capsys.readouterr().err
    assert main(["generate", "tone_speech", str(tmp_path / "other"), "n_trian=3"]) == 2
    assert "tone_speech.n_trian" in capsys.readouterr().err
    assert main(["generate", "no_such_set", str(tmp_path / "x")]) == 2
    assert "text_topics" in capsys.readouterr().err  # the choices are listed
