"""``mm-ptft quickstart``: the whole idea on an embedded default, with no data to download.

1. generate a small multimodal dataset (shape images, captions, tones; label = shape);
2. pretrain jointly on its unlabeled pairs: image-text and audio-text CLIP plus masked text;
3. fine-tune on a few labels: a multimodal classifier over the fusion module and one unimodal
   classifier per modality, each from the pretrained encoders and from scratch (the same architecture
   with random weights and the same tokenizer: the scratch arm does not learn a smaller vocabulary
   from the few labelled captions, so the gain is the pretrained weights' alone);
4. print a results table and write ``report.md`` with the curves and a pretrained-vs-scratch plot.
"""
from __future__ import annotations

import json
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GENERATE = {"name": "shapes_captions", "n_train": 600, "n_eval": 200, "image_size": 64, "sample_rate": 8000,
            "seconds": 0.5, "seed": 0}
ENCODERS = {  # small enough for a laptop CPU; the same specs in pretraining and from-scratch runs
    "text": "{name: tiny, dim: 64, depth: 2, heads: 4, max_length: 32, vocab_size: 200}",
    "image": "{name: tiny_cnn, widths: [16, 32, 64], img_size: 64}",
    "audio": "{name: tiny, sample_rate: 8000, n_mels: 32, dim: 64, depth: 1, heads: 4, subsample: 2}",
}
SETUPS = {"multimodal (gated fusion)": ["audio", "image", "text"], "image only": ["image"],
          "audio only": ["audio"], "text only": ["text"]}


def pretrain(data: dict[str, str], out: Path, steps: int, device: str, seed: int = 0) -> dict[str, float]:
    from mm_ptft.run import load_config
    from mm_ptft.run import train

    overrides = [f"output_dir={out}", f"seed={seed}", "train.overwrite_output_dir=true", f"train.device={device}",
                 f"data.train_file={data['train_file']}",
                 f"data.eval_file={data['eval_file']}", f"train.max_steps={steps}", "train.eval_every=100",
                 *(f"model.{m}={s}" for m, s in ENCODERS.items())]
    return train(load_config(RECIPES / "pretrain_joint" / "tiny.yaml", overrides))


def scratch_spec(modality: str, pretrain_dir: Path) -> str:
    """The pretraining run's architecture with random weights; text keeps the pretraining run's tokenizer."""
    if modality != "text":
        return ENCODERS[modality]
    return ENCODERS["text"].rstrip("}") + f", tokenizer: {pretrain_dir / 'tokenizer'}}}"


def finetune(data: dict[str, str], per_class: int, modalities: list[str], pretrain_dir: Path, pretrained: bool,
             out: Path, device: str, seed: int = 0) -> dict[str, float]:
    """Fine-tune on ``per_class`` labeled rows per class (``data.labels_per_class``: seeded by ``seed``,
    stratified) from the pretrained encoders (``pretrain_dir/encoders``) or from scratch."""
    from mm_ptft.run import load_config
    from mm_ptft.run import train

    specs = [f"model.{m}=" + (f"{{name_or_path: {pretrain_dir / 'encoders' / m}}}" if pretrained
                              else scratch_spec(m, pretrain_dir)) for m in modalities]
    overrides = [f"output_dir={out}", f"seed={seed}", "train.overwrite_output_dir=true", f"train.device={device}",
                 f"data.train_file={data['train_file']}", f"data.labels_per_class={per_class}", "data.generate=null",
                 f"data.eval_file={data['eval_file']}", f"data.modalities=[{','.join(modalities)}]",
                 "train.epochs=15", "train.batch_size=16", "train.log_every=20", "train.keep_last=1",
                 "train.eval_every=100000",  # one evaluation, at the end
                 "model.modality_dropout=0.0", *specs]
    return train(load_config(RECIPES / "multimodal_classification" / "tiny.yaml", overrides))


def pretrained_vs_scratch(root: Path, steps: int = 400, device: str = "auto", per_class: int = 4,
                          seed: int = 0) -> dict:
    """Generate the data, pretrain, and fine-tune every setup from the pretrained encoders and from scratch;
    ``seed`` picks the labelled rows and seeds pretraining and fine-tuning (the generated data stay fixed)."""
    from mm_ptft.data.generated import generate

    data = generate(GENERATE, root / "data")
    pre = pretrain(data, root / "pretrain", steps, device, seed)
    results: dict[str, dict[str, float]] = {}
    for name, mods in SETUPS.items():
        slug = "_".join(mods)
        results[name] = {arm: finetune(data, per_class, mods, root / "pretrain", arm == "pretrained", root / f"ft_{slug}_{arm}",
                                       device, seed)["accuracy"] for arm in ("pretrained", "scratch")}
    return {"pretraining": pre, "few_label_accuracy": results, "labels_per_class": per_class, "seed": seed}


def run_quickstart(output_dir: str = "runs/quickstart", steps: int = 400, device: str = "auto",
                   per_class: int = 4) -> dict:
    """Pretrain, fine-tune with few labels (pretrained vs scratch), print the table, write the report."""
    root = Path(output_dir)
    summary = pretrained_vs_scratch(root, steps, device, per_class)
    results = summary["few_label_accuracy"]
    (root / "results.json").write_text(json.dumps(summary, indent=2))
    table = results_table(results, per_class)
    print(table)
    write_quickstart_report(root, summary, table)
    return summary


def results_table(results: dict[str, dict[str, float]], per_class: int) -> str:
    lines = [f"Few-label accuracy ({per_class} labels per class, 4 classes, chance 0.25)", "",
             "| setup | pretrained | scratch | gain |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['pretrained']:.3f} | {v['scratch']:.3f} | {v['pretrained'] - v['scratch']:+.3f} |"
              for k, v in results.items()]
    return "\n".join(lines)


def write_quickstart_report(root: Path, summary: dict, table: str) -> None:
    """report.md: the table, pretraining metrics and curves, and a pretrained-vs-scratch bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mm_ptft.train.report import write_report

    write_report(root / "pretrain")
    names = list(summary["few_label_accuracy"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, kind in enumerate(("pretrained", "scratch")):
        ax.bar([j + 0.4 * i for j in range(len(names))], [summary["few_label_accuracy"][n][kind] for n in names],
               width=0.4, label=kind)
    ax.set_xticks([j + 0.2 for j in range(len(names))], names, fontsize=8)
    ax.set_ylabel("eval accuracy")
    ax.set_ylim(0, 1)
    ax.axhline(0.25, color="grey", linestyle=":", label="chance")
    ax.legend()
    fig.tight_layout()
    fig.savefig(root / "pretrained_vs_scratch.png", dpi=100)
    plt.close(fig)
    pre = summary["pretraining"]
    lines = ["# mm-ptft quickstart", "", table, "", "![pretrained vs scratch](pretrained_vs_scratch.png)", "",
             "## Pretraining (joint: image-text and audio-text CLIP + masked text)", "",
             "| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in pre.items()), "",
             "![pretraining curves](pretrain/train_curves.png)", "", "![pretraining eval](pretrain/eval_curves.png)", "",
             "Run directories: `pretrain/` and `ft_<modalities>_<pretrained|scratch>/` (each with its own report.md)."]
    (root / "report.md").write_text("\n".join(lines))
