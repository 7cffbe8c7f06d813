"""Knowledge distillation: a frozen teacher run teaches a smaller student of the same task.

    python recipes/distillation/train.py recipes/distillation/tiny.yaml [key.sub=value ...]

The teacher is any trained classification run (model.teacher_run); the student is that task's model
section (model.student); the loss is alpha * KL(teacher/T || student/T) * T^2 + (1 - alpha) * CE.
"""
import json
import sys

from mm_ptft.config import load_config
from mm_ptft.tasks.distillation import Distillation, DistillationConfig
from mm_ptft.train.trainer import Trainer, seed_everything


def main(argv: list[str]) -> dict:
    # 1. The config: the recipe YAML, then `key.sub=value` overrides; unknown keys are errors.
    cfg = load_config(argv[0], argv[1:], schema=DistillationConfig)
    seed_everything(cfg.seed)

    # 2. Teacher (rebuilt from its run directory, frozen) + student (built by the teacher's recipe from
    #    model.student) on the teacher task's data, paired in one DistillationTask.
    prepared = Distillation.prepare(cfg)
    task = prepared.task
    print(f"teacher {type(task.teacher).__name__} from {cfg.model.teacher_run}; student "
          f"{sum(p.numel() for p in task.student.parameters()) / 1e6:.2f}M params vs teacher "
          f"{sum(p.numel() for p in task.teacher.parameters()) / 1e6:.2f}M", file=sys.stderr)

    # 3. Train the student (the teacher has no trainable parameters and stays in eval mode).
    trainer = Trainer(task, cfg, prepared.train_data, prepared.eval_data, prepared.collate,
                      train_lengths=prepared.train_lengths, eval_lengths=prepared.eval_lengths,
                      counters=prepared.counters)
    results = trainer.fit()

    # 4. The run directory holds the student's encoders; `mm-ptft export RUN_DIR` exports the student.
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
