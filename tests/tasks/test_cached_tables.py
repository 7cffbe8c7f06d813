"""Map-style text recipes through the preprocessing cache: the same weights with and without it and from a rebuilt
entry; a new entry for new settings or data; a hit reads no raw table; check-data reports the entry."""
import shutil

import pytest
import torch

from mm_ptft.run.check_data import check_data
from mm_ptft.run import load_config
from mm_ptft.tasks import common
from mm_ptft.tasks.text_classification import TextClassification
from mm_ptft.tasks.text_regression import TextRegression
from mm_ptft.train.rng import seed_everything
from mm_ptft.train.trainer import Trainer


from mm_paths import TEXT_TINY

STEPS = 6


def cfg(tmp_path, data, *extra, run="run"):
    return load_config(TEXT_TINY, [f"output_dir={tmp_path / run}", "train.report=false", "data.generate=null",
                                   f"data.train_file={data['train_file']}", f"data.eval_file={data['eval_file']}",
                                   f"train.max_steps={STEPS}", "train.eval_every=0", *extra])


def fit(c, recipe=TextClassification):
    seed_everything(c.seed)  # as run.train does before preparing: the same initial weights in every arm
    prepared = recipe.prepare(c)
    trainer = Trainer.from_prepared(prepared, c)
    trainer.fit()
    return {k: v.detach().clone() for k, v in prepared.task.state_dict().items()}, prepared


def entries(data):
    root = shutil.os.path.join(shutil.os.path.dirname(data["train_file"]), ".mm_ptft_cache")
    return sorted(p for p in shutil.os.listdir(root) if not p.endswith(".lock")) if shutil.os.path.isdir(root) else []


@pytest.fixture
def data(tmp_path, topics_data):
    """The topics files copied into this test's own directory (its own cache beside them)."""
    out = {}
    for k in ("train_file", "eval_file"):
        out[k] = str(tmp_path / shutil.os.path.basename(topics_data[k]))
        shutil.copy(topics_data[k], out[k])
    return out


def test_same_weights_without_cache_on_a_miss_a_hit_and_a_rebuilt_entry(tmp_path, data):
    off, p_off = fit(cfg(tmp_path, data, "data.cache=false", run="off"))
    assert p_off.train_data.cache.state == "off" and entries(data) == []
    miss, p_miss = fit(cfg(tmp_path, data, run="miss"))
    hit, p_hit = fit(cfg(tmp_path, data, run="hit"))
    assert (p_miss.train_data.cache.state, p_hit.train_data.cache.state) == ("miss", "hit")
    shutil.rmtree(p_hit.train_data.cache.path)
    rebuilt, p_re = fit(cfg(tmp_path, data, run="rebuilt"))
    assert p_re.train_data.cache.state == "miss"
    for k in off:
        for other in (miss, hit, rebuilt):
            assert torch.equal(off[k], other[k]), k
    assert len(entries(data)) == 1
    assert p_hit.counters == p_miss.counters == p_off.counters


def test_a_hit_reads_no_raw_table_and_restores_learned_labels(tmp_path, data, monkeypatch):
    tok = ["model.text.tokenizer=" + str(tmp_path / "first" / "tokenizer")]
    first = TextClassification.prepare(cfg(tmp_path, data, run="first"))
    c = cfg(tmp_path, data, *tok, run="second")
    TextClassification.prepare(c)  # the saved tokenizer: an entry for its identity
    calls = []
    monkeypatch.setattr(common, "load_table", lambda *a, **k: calls.append(a) or pytest.fail("raw table read"))
    c = cfg(tmp_path, data, *tok, run="third")
    again = TextClassification.prepare(c)
    assert again.train_data.cache.state == "hit" and not calls
    assert c.data.labels == ["cooking", "finance", "space", "sports"]  # learned labels come back from the entry
    assert again.train_data.items == first.train_data.items


def test_max_length_tokenizer_and_data_changes_make_new_entries(tmp_path, data):
    TextClassification.prepare(cfg(tmp_path, data))
    TextClassification.prepare(cfg(tmp_path, data, "data.max_length=16"))
    assert len(entries(data)) == 2
    TextClassification.prepare(cfg(tmp_path, data, "model.text.vocab_size=120"))  # another learned vocabulary
    assert len(entries(data)) == 3
    p = TextClassification.prepare(cfg(tmp_path, data, "data.max_length=16"))
    assert p.train_data.cache.state == "hit" and max(p.train_lengths) <= 16
    with open(data["train_file"], "a") as f:
        f.write("an extra sentence about the oven,cooking\n")
    p = TextClassification.prepare(cfg(tmp_path, data, "data.max_length=16"))
    assert p.train_data.cache.state == "miss" and len(entries(data)) == 4


def test_cache_dir_and_regression_scale_from_the_entry(tmp_path):
    import csv
    import statistics

    f = tmp_path / "scores.csv"
    ys = [i / 7 for i in range(40)]
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "score"])
        w.writerows([(f"text number {i} of the set", y) for i, y in enumerate(ys)])

    def reg_cfg(run):
        return load_config(TEXT_TINY.replace("text_classification", "text_regression"),
                           [f"output_dir={tmp_path / run}", "data.generate=null", f"data.train_file={f}",
                            f"data.eval_file={f}", f"data.cache_dir={tmp_path / 'elsewhere'}"])

    first = TextRegression.prepare(reg_cfg("r1"))
    c2 = reg_cfg("r2")
    again = TextRegression.prepare(c2)
    assert (first.train_data.cache.state, again.train_data.cache.state) == ("miss", "hit")
    assert again.train_data.cache.path.startswith(str(tmp_path / "elsewhere"))
    assert not (tmp_path / ".mm_ptft_cache").exists()
    assert c2.data.target_mean == pytest.approx(statistics.fmean(ys))  # restored from the entry, by hand
    assert c2.data.target_std == pytest.approx(statistics.pstdev(ys))
    assert again.train_data.items == first.train_data.items
    assert [r["labels"] for r in again.train_data.items] == pytest.approx(ys)


def test_check_data_reports_the_entry(tmp_path, data):
    over = [f"output_dir={tmp_path / 'run'}", "data.generate=null", f"data.train_file={data['train_file']}",
            f"data.eval_file={data['eval_file']}"]
    first, second = check_data(TEXT_TINY, over), check_data(TEXT_TINY, over)
    assert (first["cache"]["state"], second["cache"]["state"]) == ("miss", "hit")
    assert first["cache"]["path"] == second["cache"]["path"] and second["cache"]["size_bytes"] > 0
    assert first["samples"] == second["samples"] and first["counts"] == second["counts"]
