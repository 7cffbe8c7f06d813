"""``mm-ptft`` command line: train, eval, predict, export, prune, cv, fewshot, check-data, build-lm, tune-lm,
loader-rate, list, report, sweep, quickstart, doctor."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def _split(args: Sequence[str], key: str) -> tuple[Optional[str], list[str]]:
    """Pull ``key=value`` out of the overrides (e.g. ``checkpoint=PATH``)."""
    value, rest = None, []
    for a in args:
        if a.startswith(key + "="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
    return value, rest


def cmd_train(ns: argparse.Namespace) -> int:
    from mm_ptft.run import load_config
    from mm_ptft.run import train

    results = train(load_config(ns.config, ns.overrides))
    print(json.dumps(results, indent=2))
    return 0


def cmd_eval(ns: argparse.Namespace) -> int:
    from mm_ptft.run import evaluate

    checkpoint, overrides = _split(ns.overrides, "checkpoint")
    print(json.dumps(evaluate(ns.config, overrides, checkpoint, ns.trust_remote_code), indent=2))
    return 0


def cmd_predict(ns: argparse.Namespace) -> int:
    from mm_ptft.run import predict_rows

    inputs = list(ns.inputs) or [ln.rstrip("\n") for ln in sys.stdin if ln.strip()]
    for row in predict_rows(ns.run_dir, inputs, ns.checkpoint, ns.trust_remote_code, ns.set):
        print(json.dumps(row), flush=True)  # written as it comes (a generative recipe yields a batch at a time)
    return 0


def cmd_export(ns: argparse.Namespace) -> int:
    from mm_ptft.run.export import ExportError, export_run, sidecar

    try:
        path = export_run(ns.run_dir, ns.format, ns.out, ns.quantize, ns.checkpoint,
                          trust_remote_code=ns.trust_remote_code, push_to_hub=ns.push_to_hub,
                          overwrite=ns.overwrite)
    except ExportError as err:
        print(f"mm-ptft: error: {err}", file=sys.stderr)
        return 2
    if path.is_dir():  # --format hf | mm_ptft
        print(json.dumps({"directory": str(path), "model_card": str(path / "README.md"),
                          **({"pushed_to": ns.push_to_hub} if ns.push_to_hub else {})}))
    else:
        print(json.dumps({"model": str(path), "description": str(sidecar(path))}))
    return 0


def cmd_prune(ns: argparse.Namespace) -> int:
    from mm_ptft.run.prune import prune_run

    summary = prune_run(ns.run_dir, ns.amount, ns.structured, ns.out, ns.checkpoint, ns.trust_remote_code,
                        ns.finetune_steps)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_cv(ns: argparse.Namespace) -> int:
    from mm_ptft.workflows.cv import run_cv

    summary = run_cv(ns.config, ns.folds, ns.overrides, ns.out)
    for name, m in summary["metrics"].items():
        print(f"{name}: {m['mean']:.4f} ± {m['sd']:.4f}")
    print(json.dumps({"summary": f"{summary['directory']}/cv_summary.json"}))
    return 0


def cmd_fewshot(ns: argparse.Namespace) -> int:
    from mm_ptft.workflows.fewshot import run_fewshot

    result = run_fewshot(ns.encoder_dir, ns.data, ns.shots, ns.method, ns.episodes, ns.seed, ns.column,
                         ns.label_column, ns.trust_remote_code, ns.device)
    print(f"{ns.method} {ns.shots}-shot accuracy: {result['accuracy']:.4f} ± {result['accuracy_ci95']:.4f} "
          f"(95% CI over {ns.episodes} episodes, {result['classes']} classes)")
    print(json.dumps(result))
    return 0


def cmd_check_data(ns: argparse.Namespace) -> int:
    from mm_ptft.run.check_data import check_data, problems

    report = check_data(ns.config, ns.overrides)
    print("usable samples: " + ", ".join(f"{split} {n}" for split, n in report["samples"].items()))
    print("counts: " + (", ".join(f"{k}={v}" for k, v in sorted(report["counts"].items())) or "no problems"))
    if "cache" in report:
        print(report["cache"]["describe"])
    for plan in report.get("remote", []):
        print(f"remote: {plan['key']}={plan['value']}: {plan['objects']} object(s), {plan['bytes'] / 2 ** 20:.1f} MiB, "
              f"{plan['read']}")
    bad = problems(report)
    if bad:
        print(f"{bad} bad sample(s) (training skips them with data.skip_bad_samples=true, or stops at the first)")
    return 1 if bad else 0


def cmd_build_lm(ns: argparse.Namespace) -> int:
    from mm_ptft.run.speech_lm import build_lm_from_config

    built = build_lm_from_config(ns.config, ns.out, ns.overrides, ns.order, ns.discount)
    print(f"wrote {built.path}: order {ns.order}, {built.words} words from {built.sentences} transcripts "
          f"({built.skipped_empty} empty skipped)")
    print(f"decode with: model.decoder='{{name: beam, lm: {built.path}, lm_weight: 2.0, word_score: 0.0}}' "
          f"(or tune both: mm-ptft tune-lm RUN_DIR --lm {built.path})")
    return 0


def cmd_tune_lm(ns: argparse.Namespace) -> int:
    from mm_ptft.run.speech_lm import DEFAULT_WEIGHTS, DEFAULT_WORD_SCORES, tune_lm

    report = tune_lm(ns.run_dir, ns.lm, ns.weights or DEFAULT_WEIGHTS, ns.word_scores or DEFAULT_WORD_SCORES,
                     ns.overrides, apply=not ns.dry_run)
    line = lambda r: f"wer={r['wer']:.4f} cer={r['cer']:.4f}"  # noqa: E731
    print(f"{report['utterances']} utterances of {report['eval']}")
    for r in report["grid"]:
        print(f"lm_weight={r['lm_weight']:g} word_score={r['word_score']:g}  {line(r)}")
    print(f"greedy {line(report['greedy'])}; beam (no LM) {line(report['beam'])}; "
          f"the run's decoder {line(report['run_decoder'])}")
    best = report["best"]
    verdict = "set as the run's model.decoder" if report["applied"] else \
        "not applied (--dry-run)" if ns.dry_run else "not applied: it does not beat the run's decoder"
    print(f"best: model.decoder='{json.dumps(best['decoder'])}' {line(best)}: {verdict}; "
          f"{ns.run_dir}/lm/tuning.json has the grid")
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers, e.g. 0.5,1,2") from None


def cmd_loader_rate(ns: argparse.Namespace) -> int:
    from mm_ptft.run.check_data import loader_rate

    rate = loader_rate(ns.config, ns.overrides)
    print(rate.line())
    print(f"recommended: train.num_workers={rate.workers}   (train.num_workers=auto measures this before each run)")
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    from mm_ptft.run.components import load_components
    from mm_ptft.registry import all_registries

    load_components()
    for kind, reg in sorted(all_registries().items()):
        print(f"{kind}: {', '.join(reg.names())}")
    return 0


def cmd_generate(ns: argparse.Namespace) -> int:
    """Write a generated dataset as the files a recipe reads (tables + media), to copy the format of your own."""
    from pathlib import Path

    import yaml

    from mm_ptft.data.generated import GENERATORS
    from mm_ptft.registry import import_submodules

    import_submodules("mm_ptft.data.generated")
    if ns.name not in GENERATORS.names():
        print(f"mm-ptft generate: no generator {ns.name!r}; choose one of {GENERATORS.names()}", file=sys.stderr)
        return 2
    bad = [kv for kv in ns.options if "=" not in kv]
    if bad:
        print(f"mm-ptft generate: options are key=value, got {bad}", file=sys.stderr)
        return 2
    kwargs = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in ns.options)}
    out = Path(ns.out)
    if out.exists() and any(out.iterdir()):
        print(f"mm-ptft generate: {out} exists and is not empty: give another OUT_DIR", file=sys.stderr)
        return 2
    try:
        paths = GENERATORS.build({"name": ns.name, **kwargs, "out_dir": str(out)}, ns.name)
    except (KeyError, TypeError, ValueError) as err:
        print(f"mm-ptft generate: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    print(json.dumps(paths, indent=2))
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from mm_ptft.train.report import write_report

    print(write_report(ns.run_dir))
    return 0


def cmd_sweep(ns: argparse.Namespace) -> int:
    from mm_ptft.workflows.sweep import run_sweep

    summary = run_sweep(ns.config, ns.space, ns.trials, ns.jobs, ns.out, ns.overrides)
    print(json.dumps(summary["best"], indent=2))
    return 0


def cmd_quickstart(ns: argparse.Namespace) -> int:
    from mm_ptft.workflows.quickstart import run_quickstart

    run_quickstart(output_dir=ns.output_dir, steps=ns.steps, device=ns.device, per_class=ns.labels_per_class)
    return 0


def cmd_doctor(ns: argparse.Namespace) -> int:
    from mm_ptft import env

    print("versions:")
    for line in env.version_lines():
        print(f"  {line}")
    print("devices:")
    for line in env.device_lines():
        print(f"  {line}")
    print("compiled pieces:")
    checks = env.compiled_checks()
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        print(f"  {mark} {c.name}: {c.detail}")
    failed = [c for c in checks if c.required and not c.ok]
    print(f"{len(failed)} problem(s)" if failed else "all required pieces load and run")
    return 1 if failed else 0


def _trust_flag(p: argparse.ArgumentParser) -> None:
    """A run directory is data, not code: only this flag lets its encoders run their own code."""
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let the run's HF encoders run code from their model directories (trust_remote_code "
                        "in the run's config is refused without this flag)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mm-ptft", description="Multimodal pretraining and fine-tuning")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a recipe: mm-ptft train CONFIG [key.sub=value ...]")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a run: mm-ptft eval RUN_DIR|CONFIG [checkpoint=PATH] [key=value ...]")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*")
    _trust_flag(e)
    e.set_defaults(fn=cmd_eval)
    pr = sub.add_parser("predict", help="mm-ptft predict RUN_DIR INPUT... (texts, or audio/image paths)")
    pr.add_argument("run_dir")
    pr.add_argument("inputs", nargs="*", help="inputs; read one per line from stdin when none are given")
    pr.add_argument("--checkpoint", default=None)
    pr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the run's config for prediction (e.g. --set data.long_audio=chunk)")
    _trust_flag(pr)
    pr.set_defaults(fn=cmd_predict)
    ex = sub.add_parser("export", help="mm-ptft export RUN_DIR --format onnx|torchscript|hf|mm_ptft [--out PATH] "
                                       "[--quantize int8] [--push-to-hub REPO]")
    ex.add_argument("run_dir")
    ex.add_argument("--format", choices=["onnx", "torchscript", "hf", "mm_ptft", "sentence_transformers", "open_clip"],
                    default="onnx",
                    help="hf: a directory transformers loads (AutoModelFor…); mm_ptft: one mm_ptft.from_pretrained loads")
    ex.add_argument("--out", default=None, help="model path (default RUN_DIR/export/model[.int8].onnx|.pt, "
                                                "or the directory RUN_DIR/export/hf|mm_ptft)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out model file and its "
                                                             "description (refused otherwise)")
    ex.add_argument("--push-to-hub", default=None, metavar="REPO",
                    help="upload the hf/mm_ptft directory to this Hub model repo (huggingface_hub; needs a login)")
    ex.add_argument("--quantize", choices=["int8"], default=None, help="dynamic int8 quantisation (CPU serving)")
    ex.add_argument("--checkpoint", default=None)
    _trust_flag(ex)
    ex.set_defaults(fn=cmd_export)
    pn = sub.add_parser("prune", help="mm-ptft prune RUN_DIR --amount A [--structured] [--finetune-steps N] [--out DIR]: "
                                      "magnitude-prune the best checkpoint into a new run directory, optionally "
                                      "fine-tune it with the masks kept, re-evaluate")
    pn.add_argument("run_dir")
    pn.add_argument("--amount", type=float, required=True, help="fraction of weights (or rows, --structured) to zero")
    pn.add_argument("--structured", action="store_true", help="L2 ln_structured over each layer's output rows")
    pn.add_argument("--out", default=None, help="the pruned run directory (default RUN_DIR_pruned<percent>)")
    pn.add_argument("--checkpoint", default=None)
    pn.add_argument("--finetune-steps", type=int, default=0,
                    help="fine-tune the pruned model N optimizer steps on the run's training data, masks kept")
    _trust_flag(pn)
    pn.set_defaults(fn=cmd_prune)
    cv = sub.add_parser("cv", help="stratified K-fold cross-validation: mm-ptft cv CONFIG --folds K [--out DIR] "
                                   "[key.sub=value ...]; mean ± sd of every metric")
    cv.add_argument("config")
    cv.add_argument("overrides", nargs="*", help="overrides applied to every fold")
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--out", default=None, help="cross-validation directory (default: <output_dir>_cv)")
    cv.set_defaults(fn=cmd_cv)
    fs = sub.add_parser("fewshot", help="few-shot evaluation of an encoder directory: mm-ptft fewshot ENCODER_DIR "
                                        "--data FILE --shots K [--method prototype|linear_probe] [--episodes E]")
    fs.add_argument("encoder_dir", help="an encoder directory (or a run directory with one saved encoder)")
    fs.add_argument("--data", required=True, help="a labeled table (CSV/TSV/JSON/JSONL/parquet), or a folder with "
                                                   "a sub-folder of files per class (image / audio / video encoders)")
    fs.add_argument("--shots", type=int, required=True, help="support rows per class in each episode")
    fs.add_argument("--method", choices=["prototype", "linear_probe"], default="prototype")
    fs.add_argument("--episodes", type=int, default=10)
    fs.add_argument("--seed", type=int, default=0)
    fs.add_argument("--column", default=None, help="the input column (default: the run's data.<modality>_column, "
                                                   "else caption / image / audio by modality)")
    fs.add_argument("--label-column", default=None, help="the class column (default: the run's data.label_column, "
                                                         "else label)")
    fs.add_argument("--device", default="auto", help="auto (CUDA when there is one) | cpu | cuda | cuda:N")
    _trust_flag(fs)
    fs.set_defaults(fn=cmd_fewshot)
    ck = sub.add_parser("check-data", help="read every sample of a config once (tokenise, decode, check) and "
                                           "count the bad ones: mm-ptft check-data CONFIG [key.sub=value ...]")
    ck.add_argument("config")
    ck.add_argument("overrides", nargs="*")
    ck.set_defaults(fn=cmd_check_data)
    bl = sub.add_parser("build-lm", help="a word n-gram LM (ARPA, built-in writer) from a speech config's normalised "
                                         "training transcripts: mm-ptft build-lm CONFIG|RUN_DIR --out lm.arpa "
                                         "[--order 3]")
    bl.add_argument("config")
    bl.add_argument("overrides", nargs="*")
    bl.add_argument("--out", required=True)
    bl.add_argument("--order", type=int, default=3, choices=[2, 3])
    bl.add_argument("--discount", type=float, default=0.5, help="absolute discount D in (0, 1)")
    bl.set_defaults(fn=cmd_build_lm)
    tl = sub.add_parser("tune-lm", help="grid lm_weight x word_score on a speech run's eval split, the best set as "
                                        "its model.decoder: mm-ptft tune-lm RUN_DIR --lm lm.arpa [data.eval_file=dev]")
    tl.add_argument("run_dir")
    tl.add_argument("overrides", nargs="*")
    tl.add_argument("--lm", required=True)
    tl.add_argument("--weights", type=_floats, help="lm_weight values (default 0.5,1,2,3)")
    tl.add_argument("--word-scores", type=_floats, help="word_score values (default -1,0,1,2)")
    tl.add_argument("--dry-run", action="store_true", help="write lm/tuning.json only, leave config.yaml alone")
    tl.set_defaults(fn=cmd_tune_lm)
    lr = sub.add_parser("loader-rate", help="samples/s one loader worker makes and the training step takes, and the "
                                            "train.num_workers they call for: mm-ptft loader-rate CONFIG "
                                            "[key.sub=value ...]")
    lr.add_argument("config")
    lr.add_argument("overrides", nargs="*")
    lr.set_defaults(fn=cmd_loader_rate)
    ls = sub.add_parser("list", help="list every registry's entries")
    ls.set_defaults(fn=cmd_list)
    g = sub.add_parser("generate", help="write a generated dataset's files (the form a recipe reads): mm-ptft "
                                        "generate NAME OUT_DIR [key=value ...]; `mm-ptft list` names them")
    g.add_argument("name")
    g.add_argument("out")
    g.add_argument("options", nargs="*")
    g.set_defaults(fn=cmd_generate)
    r = sub.add_parser("report", help="(re)write RUN_DIR/report.md with plots")
    r.add_argument("run_dir")
    r.set_defaults(fn=cmd_report)
    sw = sub.add_parser("sweep", help="hyperparameter search (Optuna TPE + median pruning): mm-ptft sweep CONFIG "
                                      "--space SPACE.yaml --trials N [--jobs J] [--out DIR] [key.sub=value ...]")
    sw.add_argument("config")
    sw.add_argument("overrides", nargs="*", help="overrides applied to every trial")
    sw.add_argument("--space", required=True,
                    help="YAML {key.path: {type: float|int|categorical, low, high, log, step, choices}}")
    sw.add_argument("--trials", type=int, required=True)
    sw.add_argument("--jobs", type=int, default=1, help="trials run at once, each in its own process")
    sw.add_argument("--out", default=None, help="sweep directory (default: <output_dir>_sweep)")
    sw.set_defaults(fn=cmd_sweep)
    q = sub.add_parser("quickstart", help="the main job on an embedded default (no download)")
    q.add_argument("--output-dir", default="runs/quickstart")
    q.add_argument("--steps", type=int, default=400, help="pretraining steps")
    q.add_argument("--device", default="auto", help="auto | cpu | cuda")
    q.add_argument("--labels-per-class", type=int, default=4, help="labeled examples per class for fine-tuning")
    q.set_defaults(fn=cmd_quickstart)
    d = sub.add_parser("doctor", help="versions, devices, and whether every compiled piece loads and runs")
    d.set_defaults(fn=cmd_doctor)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra and (ns.command not in ("sweep", "cv") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:  # sweep, cv: key=value overrides may also follow the options
        ns.overrides = [*ns.overrides, *extra]
    if ns.command == "doctor":  # must work when the rest cannot import
        return ns.fn(ns)
    from mm_ptft.config import ConfigError
    from mm_ptft.data.tables import DataError
    from mm_ptft.env import EnvironmentProblem
    from mm_ptft.registry import RegistryError
    from mm_ptft.train.checkpoint import CheckpointError
    from mm_ptft.train.distributed import set_finished_cleanly
    from mm_ptft.train.preempt import Preempted

    set_finished_cleanly(False)  # under torchrun, ranks leave the process group together only after clean work
    try:
        rc = ns.fn(ns)
        set_finished_cleanly(rc == 0)
        return rc
    except (ConfigError, RegistryError, DataError, EnvironmentProblem, CheckpointError) as err:
        print(f"mm-ptft: error: {err}", file=sys.stderr)
        return 2
    except Preempted as err:  # checkpointed: a clean stop, but not a finished run
        set_finished_cleanly(True)
        print(f"mm-ptft: {err}", file=sys.stderr)
        return err.code


if __name__ == "__main__":
    sys.exit(main())
