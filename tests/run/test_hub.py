"""``mm-ptft export --format hf|mm_ptft``: a BERT run trained with ``model.text.pooling=pooler`` loads in
transformers (``AutoModelForSequenceClassification`` + ``AutoTokenizer``, no mm_ptft code) and gives the class
probabilities ``mm_ptft.run.predict`` gives; a run that pools otherwise is refused; ``mm_ptft.from_pretrained``
rebuilds any run (built-in multimodal encoders + fusion too) with identical outputs; both get a model card;
``--push-to-hub`` hands the directory to ``huggingface_hub`` (monkeypatched: no network here)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import mm_ptft
from mm_ptft.cli import main as cli_main
from mm_ptft.run.export import ExportError, export_run
from mm_ptft.run import load_config, load_run, predict, train
from mm_ptft.train.rundir import final_results

from mm_paths import ROOT, TEXT_TINY

TOL = 1e-4  # max |Δ probability|, transformers model vs mm_ptft predict
FAST = ["train.report=false", "train.num_workers=0"]
#: the first is longer than the recipe's data.max_length=64 tokens: truncation must agree too
TEXTS = ["the chef baked bread in the oven with garlic and a little salt for dinner " * 6,
         "the rocket reached orbit", "a goal in the final minute won the match",
         "stocks fell as the bank raised interest rates", "an astronaut walked on the moon"]


def _text_run(out: Path, *overrides: str) -> Path:
    train(load_config(TEXT_TINY, [f"output_dir={out}", "data.generate.n_train=192", "data.generate.n_eval=32",
                                  "train.max_steps=36", "optim.lr=0.003", "sched.warmup_steps=2", *FAST, *overrides]))
    return out


@pytest.fixture(scope="module")
def pooler_run(tmp_path_factory) -> Path:
    """The tiny text recipe (random-init 2-layer BERT) trained with BERT's own pooler (dense + tanh over [CLS])."""
    return _text_run(tmp_path_factory.mktemp("hub_pooler"), "model.text.pooling=pooler")


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory) -> Path:
    """The same recipe with its default mean pooling, which no transformers class does."""
    return _text_run(tmp_path_factory.mktemp("hub_mean"), "train.max_steps=3")


def test_hf_text_loads_in_transformers_and_predicts_as_mm_ptft(pooler_run, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = export_run(pooler_run, "hf", tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()  # no warning-free MISSING weights
    tok = AutoTokenizer.from_pretrained(out)
    labels = load_config(pooler_run / "config.yaml").data.labels
    assert type(model).__name__ == "BertForSequenceClassification"
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    assert model.config.label2id == {n: i for i, n in enumerate(labels)}
    batch = tok(TEXTS, padding=True, truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 64  # the long text truncated to the run's data.max_length
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)  # (B, C)
    rows = predict(pooler_run, TEXTS)
    ref = torch.tensor([[r["scores"][n] for n in labels] for r in rows])  # (B, C)
    assert [labels[i] for i in probs.argmax(-1)] == [r["label"] for r in rows]
    assert len({r["label"] for r in rows}) > 1  # a trained head, not one class for everything
    dp = float((probs - ref).abs().max())
    print(f"max |dprob| transformers vs predict: {dp:.3g}")
    assert dp <= TOL, dp
    meta = json.loads((out / "mm_ptft.json").read_text())
    assert meta["format"] == "hf" and meta["parity"]["max_abs_diff_prob"] <= TOL and meta["parity"]["same_argmax"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "AutoModelForSequenceClassification" in card
    metrics = final_results(pooler_run)
    assert f"| accuracy | {metrics['accuracy']:.4g} |" in card
    assert "data_cards/text_topics.md" in card and (out / "data_cards" / "text_topics.md").is_file()
    assert "## Intended use and limitations" in card and "pooling: pooler" in card  # the resolved config


def test_hf_text_from_a_lora_run_has_the_adapters_merged(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = _text_run(tmp_path / "lora", "model.text.pooling=pooler", "finetune.strategy=lora", "train.max_steps=6")
    assert any("lora_A" in k for k in load_run(run)[1].task.state_dict())  # the run trains adapters
    out = export_run(run, "hf", tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert not any("lora" in k for k in model.state_dict())
    batch = AutoTokenizer.from_pretrained(out)(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)  # (B, C)
    labels = load_config(run / "config.yaml").data.labels
    ref = torch.tensor([[r["scores"][n] for n in labels] for r in predict(run, TEXTS)])  # (B, C)
    dp = float((probs - ref).abs().max())
    print(f"lora: max |dprob| transformers vs predict: {dp:.3g}")
    assert dp <= TOL, dp


def test_hf_refuses_a_pooling_transformers_does_not_do(mean_run, tmp_path):
    with pytest.raises(ExportError, match=r"pools 'mean': train with model\.text\.pooling=pooler.*--format mm_ptft"):
        export_run(mean_run, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()  # nothing half-written


def test_hf_refuses_a_model_without_a_transformers_class(tmp_path):
    """Built-in encoders and fusion: no transformers class; the message names the reason and the other format."""
    run = tmp_path / "mm"
    recipe = os.path.join(ROOT, "recipes", "multimodal_classification", "tiny.yaml")
    train(load_config(recipe, [f"output_dir={run}", "data.generate.n_train=24", "data.generate.n_eval=6",
                               "train.max_steps=2", *FAST]))
    with pytest.raises(ExportError, match=r"MultimodalClassifier: no transformers class.*--format mm_ptft"):
        export_run(run, "hf", tmp_path / "hf")
    # ... while the mm_ptft directory rebuilds it: same logits, same predictions from a manifest file
    out = export_run(run, "mm_ptft", tmp_path / "mm_dir")
    model = mm_ptft.from_pretrained(out)
    _, prepared, _ = load_run(run)
    batch = prepared.collate([prepared.eval_data[i] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logits"], prepared.task(batch)["logits"], atol=0, rtol=0)
    manifest = load_config(run / "config.yaml").data.eval_file
    assert model.predict([manifest]) == predict(run, [manifest])


def test_mm_ptft_directory_is_self_contained_and_predicts_identically(mean_run, tmp_path):
    run = Path(shutil.copytree(mean_run, tmp_path / "run"))  # a copy we can delete afterwards
    out = export_run(run, "mm_ptft", tmp_path / "export")
    ref = predict(run, TEXTS)
    _, prepared, _ = load_run(run)
    batch = prepared.collate([prepared.eval_data[i] for i in range(6)])
    with torch.no_grad():
        ref_logits = prepared.task(batch)["logits"]  # (6, C)
    shutil.rmtree(run)  # the directory must not lean on the run (its tokenizer was learned at run time)
    moved = Path(shutil.move(str(out), tmp_path / "elsewhere"))
    assert {p.name for p in moved.iterdir()} >= {"config.yaml", "model.safetensors", "mm_ptft.json", "README.md",
                                                 "tokenizer"}
    model = mm_ptft.from_pretrained(moved)
    assert model.predict(TEXTS) == ref
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logits"], ref_logits, atol=0, rtol=0)
    assert "mm_ptft.from_pretrained(PATH)" in (moved / "README.md").read_text()
    assert "train_file" not in json.dumps(json.loads((moved / "mm_ptft.json").read_text()))


def test_from_pretrained_names_a_transformers_directory(pooler_run, tmp_path):
    out = export_run(pooler_run, "hf", tmp_path / "hf")
    with pytest.raises(ValueError, match="format 'hf'.*loads with transformers"):
        mm_ptft.from_pretrained(out)
    with pytest.raises(FileNotFoundError, match="no mm_ptft.json"):
        mm_ptft.from_pretrained(tmp_path)
    with pytest.raises(ExportError, match="exists and is not empty"):
        export_run(pooler_run, "hf", out)


def test_cli_push_to_hub_uploads_the_directory(pooler_run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw.pop("repo_id"), kw)))
    out = tmp_path / "pushed"
    assert cli_main(["export", str(pooler_run), "--format", "hf", "--out", str(out),
                     "--push-to-hub", "someone/tiny-topics"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == {"directory": str(out), "model_card": str(out / "README.md"), "pushed_to": "someone/tiny-topics"}
    (c_kind, c_repo, c_kw), (u_kind, u_repo, u_kw) = calls
    assert (c_kind, c_repo, c_kw["exist_ok"], c_kw["repo_type"]) == ("create", "someone/tiny-topics", True, "model")
    assert (u_kind, u_repo, u_kw["repo_type"]) == ("upload", "someone/tiny-topics", "model")
    assert u_kw["folder_path"] == str(out) and "mm-ptft export" in u_kw["commit_message"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}


def test_push_to_hub_is_only_for_directories(pooler_run, tmp_path):
    with pytest.raises(ExportError, match="--push-to-hub uploads a directory"):
        export_run(pooler_run, "onnx", tmp_path / "m.onnx", push_to_hub="someone/x")
    with pytest.raises(ExportError, match="--quantize applies to onnx and torchscript"):
        export_run(pooler_run, "hf", tmp_path / "hf", quantize="int8")


def test_import_mm_ptft_stays_light():
    """``mm_ptft.from_pretrained`` imports the loader when called, not when ``mm_ptft`` is imported."""
    import subprocess
    import sys

    code = "import sys, mm_ptft; assert callable(mm_ptft.from_pretrained); print('mm_ptft.run.hub' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "False"


def _recipe_run(tmp_path: Path, recipe: str, replace: dict, *overrides: str) -> Path:
    """A recipe's tiny.yaml with whole sections replaced (``{"model": {"image": spec}}``), trained in tmp_path/run."""
    import yaml

    cfg = yaml.safe_load(Path(ROOT, "recipes", recipe, "tiny.yaml").read_text())
    for section, parts in replace.items():
        cfg[section].update(parts)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(cfg))
    train(load_config(tmp_path / "recipe.yaml", [f"output_dir={tmp_path / 'run'}", *overrides, *FAST]))
    return tmp_path / "run"


def _hf_convnext_dir(root: Path) -> str:
    """A random-init HF ConvNeXt saved with its image processor, as a hub copy is."""
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    ConvNextModel(ConvNextConfig(num_channels=3, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])).save_pretrained(root)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(root)
    return str(root)


IMAGE_SPECS = {  # ViT: [CLS] after the final layernorm (pooling auto = cls); ConvNeXt: its pooler (auto = pooler)
    "vit_from_config": lambda tmp: {"name": "hf", "config": {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
                                                           "num_attention_heads": 2, "intermediate_size": 64,
                                                           "image_size": 32, "patch_size": 8}},
    "convnext_dir": lambda tmp: {"name": "hf", "name_or_path": _hf_convnext_dir(tmp / "convnext")},
    # timm (random init): transformers' TimmWrapperForImageClassification with timm's own classifier
    "timm_resnet": lambda tmp: {"name": "timm", "name_or_path": "resnet10t", "pretrained": False},
    # img_size 48: resize 53, crop 48; an odd margin of 3 (size 32 → 35) torchvision's CenterCrop rounds up and
    # transformers' rounds down, a one-pixel shift no image processor setting undoes
    "timm_vit": lambda tmp: {"name": "timm", "name_or_path": "vit_tiny_patch16_224", "pretrained": False,
                             "img_size": 48, "model_kwargs": {"patch_size": 16, "embed_dim": 32, "depth": 2,
                                                              "num_heads": 2}},
}


@pytest.mark.parametrize("kind", sorted(IMAGE_SPECS))
def test_hf_image_loads_in_transformers_and_predicts_as_mm_ptft(kind, tmp_path):
    """Image files → the saved AutoImageProcessor → AutoModelForImageClassification, against mm_ptft predict."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    run = _recipe_run(tmp_path, "image_classification", {"model": {"image": IMAGE_SPECS[kind](tmp_path)}},
                      "data.generate.n_train=96", "data.generate.n_eval=16", "train.max_steps=12")
    out = export_run(run, "hf", tmp_path / "hf")
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    proc = AutoImageProcessor.from_pretrained(out)
    labels = load_config(run / "config.yaml").data.labels
    assert [model.config.id2label[i] for i in range(len(labels))] == labels
    ev = Path(load_config(run / "config.yaml").data.eval_file)
    import csv

    paths = [str(ev.parent / r["path"]) for r in csv.DictReader(ev.open())][:12]
    rows = predict(run, paths)
    with torch.no_grad():
        probs = model(**proc([Image.open(p).convert("RGB") for p in paths], return_tensors="pt")).logits.softmax(-1)
    ref = torch.tensor([[r["scores"][n] for n in labels] for r in rows])  # (B, C)
    assert [labels[i] for i in probs.argmax(-1)] == [r["label"] for r in rows]
    dp = float((probs - ref).abs().max())
    print(f"{kind}: max |dprob| transformers (processor + model) vs predict: {dp:.3g}")
    assert dp <= TOL, dp
    assert "pipeline_tag: image-classification" in (out / "README.md").read_text()
    from transformers import pipeline

    top = pipeline("image-classification", model=str(out), device="cpu")(paths, top_k=len(labels))
    assert [t[0]["label"] for t in top] == [r["label"] for r in rows]  # the pipeline predicts as mm-ptft predict
    got = torch.tensor([[{t["label"]: t["score"] for t in one}[n] for n in labels] for one in top])  # (B, C)
    assert float((got - ref).abs().max()) <= TOL


def test_hf_image_mean_pooling_is_refused():
    from mm_ptft.encoders import build_encoder
    from mm_ptft.encoders.image import IMAGE_ENCODERS

    enc = build_encoder(IMAGE_ENCODERS, {**IMAGE_SPECS["vit_from_config"](None), "pooling": "mean"}, "model.image")
    with pytest.raises(NotImplementedError, match="mean, which no transformers image classifier does.*pooling=cls"):
        enc.hf_with_head("classification", torch.nn.Linear(32, 3), {"num_labels": 3})


W2V2 = {"model_type": "wav2vec2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 2], "conv_stride": [5, 2, 2],
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


def test_hf_ctc_loads_in_transformers_and_transcribes_as_mm_ptft(tmp_path):
    """Audio files → the saved Wav2Vec2Processor → Wav2Vec2ForCTC, against the run's per-frame probabilities and
    mm_ptft predict's greedy transcripts."""
    import csv

    import soundfile as sf
    from transformers import AutoModelForCTC, AutoProcessor

    from mm_ptft.data.audio import AudioPipeline

    run = _recipe_run(tmp_path, "speech_recognition", {  # SpecAugment is for features-input encoders
        "model": {"audio": {"name": "hf", "config": W2V2}}, "data": {"augment": {"speed_factors": [1.0]}}},
        "data.generate.n_train=24", "data.generate.n_eval=6", "train.max_steps=6")
    out = export_run(run, "hf", tmp_path / "hf")
    model = AutoModelForCTC.from_pretrained(out).eval()
    proc = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "Wav2Vec2ForCTC" and type(proc).__name__ == "Wav2Vec2Processor"
    ev = Path(load_config(run / "config.yaml").data.eval_file)
    paths = [str(ev.parent / r["audio"]) for r in csv.DictReader(ev.open())]
    _, prepared, _ = load_run(run)
    pipe = AudioPipeline(16000, "waveform", None)
    dp = 0.0
    for path in paths:
        wav, rate = sf.read(path, dtype="float32")
        inputs = proc(wav, sampling_rate=rate, return_tensors="pt")
        with torch.no_grad():
            probs = model(**inputs).logits.softmax(-1)[0]  # (N, V)
            ref = prepared.task(prepared.collate([{"audio": pipe(path)}]))["log_probs"].exp()[0]  # (N, V)
        assert probs.shape == ref.shape and torch.equal(probs.argmax(-1), ref.argmax(-1))
        dp = max(dp, float((probs - ref).abs().max()))
        got, want = proc.batch_decode(probs.argmax(-1)[None])[0], predict(run, [path])[0]["text"]
        # the same characters; transformers keeps the double space of "| <blank> |", mm_ptft's decoder folds it
        assert " ".join(got.split()) == want
    print(f"ctc: max |dprob| per frame, transformers (processor + model) vs mm_ptft: {dp:.3g}")
    assert dp <= TOL, dp
    assert "pipeline_tag: automatic-speech-recognition" in (out / "README.md").read_text()


def test_hf_refuses_when_the_outputs_differ(tmp_path):
    """ViT trained on its pooler (dense + tanh over [CLS]): ViTForImageClassification classifies the [CLS] token
    itself, so the built model predicts otherwise; the comparison before writing catches it."""
    spec = {**IMAGE_SPECS["vit_from_config"](tmp_path), "pooling": "pooler"}
    run = _recipe_run(tmp_path, "image_classification", {"model": {"image": spec}},
                      "data.generate.n_train=32", "data.generate.n_eval=8", "train.max_steps=2")
    with pytest.raises(ExportError, match=r"ViTForImageClassification predicts otherwise than the run \(max \|Δprob\| "
                                          r".*nothing written.*model\.image\.pooling=cls"):
        export_run(run, "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_mm_ptft_directory_of_a_distilled_run_holds_the_student_and_the_teachers_tokenizer(tmp_path):
    """A distilled run exports its student (the teacher's recipe); the student reads the teacher run's tokenizer,
    which the directory carries under files/, so it predicts with the teacher run gone."""
    import runpy

    teacher = _text_run(tmp_path / "teacher", "train.max_steps=2")
    recipe = Path(ROOT, "recipes", "distillation")
    runpy.run_path(str(recipe / "train.py"))["main"]([str(recipe / "tiny.yaml"), f"output_dir={tmp_path / 'kd'}",
                                                      f"model.teacher_run={teacher}", "train.max_steps=2", *FAST])
    out = export_run(tmp_path / "kd", "mm_ptft", tmp_path / "mm")
    ref = predict(tmp_path / "kd", TEXTS)
    shutil.rmtree(teacher)
    model = mm_ptft.from_pretrained(out)
    assert model.cfg.task == "text_classification" and (out / "files" / "tokenizer" / "tokenizer.json").is_file()
    assert model.predict(TEXTS) == ref


@pytest.mark.parametrize("model_type, pooling, reason", [
    ("roberta", "pooler", r"RobertaForSequenceClassification's head is \['classifier'\], not one linear layer"),
    ("distilbert", "cls", r"DistilBertModel has no pooler"),
])
def test_hf_text_heads_transformers_builds_otherwise_are_refused(model_type, pooling, reason):
    """RoBERTa's classifier is dense + tanh + projection over <s>; DistilBERT's a pre-classifier + ReLU: no match."""
    from mm_ptft.encoders import build_encoder
    from mm_ptft.encoders.text import TEXT_ENCODERS

    size = {"roberta": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
            "distilbert": {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}}[model_type]
    enc = build_encoder(TEXT_ENCODERS, {"name": "hf", "pooling": pooling, "config": {"model_type": model_type, **size}},
                        "model.text", corpus=["a tiny corpus", "of two texts"])
    with pytest.raises(NotImplementedError, match=reason):
        enc.hf_with_head("classification", torch.nn.Linear(32, 3), {"num_labels": 3})


def test_default_mean_pooling_run_loads_in_sentence_transformers_as_mm_ptft(mean_run, tmp_path):
    """The recipe's default (mean pooling) → Transformer + Pooling(mean) + Dense(classifier): SentenceTransformer
    loads the directory alone and its softmaxed embeddings are mm-ptft predict's probabilities (≤ 1e-5)."""
    from sentence_transformers import SentenceTransformer

    out = export_run(mean_run, "sentence_transformers", tmp_path / "st")
    model = SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Dense"]
    assert model[1].pooling_mode == "mean" and model.max_seq_length == 64
    probs = model.encode(TEXTS, convert_to_tensor=True).softmax(-1)  # (B, C)
    labels = load_config(mean_run / "config.yaml").data.labels
    rows = predict(mean_run, TEXTS)
    ref = torch.tensor([[r["scores"][n] for n in labels] for r in rows])  # (B, C)
    assert [labels[i] for i in probs.argmax(-1)] == [r["label"] for r in rows]
    dp = float((probs.cpu() - ref).abs().max())
    print(f"sentence-transformers vs predict: max |dprob| {dp:.3g}")
    assert dp <= 1e-5, dp
    assert "library_name: sentence-transformers" in (out / "README.md").read_text()


def test_sentence_transformers_refuses_what_it_cannot_express(pooler_run, tmp_path):
    with pytest.raises(ExportError, match=r"pooling='pooler' has no sentence-transformers Pooling mode"):
        export_run(pooler_run, "sentence_transformers", tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_the_card_of_the_best_checkpoint_reports_that_checkpoints_metrics(tmp_path):
    """The best checkpoint (best.json) is not the last evaluation's: the card and the manifest give the step and
    metrics of the weights exported (its row in metrics.jsonl), not final_metrics.json's."""
    run = _text_run(tmp_path / "run", "train.max_steps=4", "train.eval_every=2", "train.keep_last=5")
    best = run / "checkpoints" / "best.json"
    best.write_text(json.dumps({**json.loads(best.read_text()), "step": 2, "path": "step_00000002"}))
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    at2 = next(r for r in rows if r["kind"] == "eval" and r["step"] == 2)
    final = final_results(run)
    assert at2["loss"] != final["loss"]  # the two evaluations differ: the test can tell them apart
    out = export_run(run, "mm_ptft", tmp_path / "exported")
    card, manifest = (out / "README.md").read_text(), json.loads((out / "mm_ptft.json").read_text())
    assert f"| loss | {at2['loss']:.4g} |" in card and f"| loss | {final['loss']:.4g} |" not in card
    assert "checkpoint `checkpoints/step_00000002` (step 2)" in card
    assert manifest["step"] == 2 and manifest["checkpoint"] == "checkpoints/step_00000002"
    assert manifest["metrics"]["loss"] == at2["loss"]
