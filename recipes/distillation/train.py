"""Knowledge distillation: a frozen teacher run teaches a smaller student of the same task.
`python recipes/distillation/train.py recipes/distillation/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.distillation import DistillationConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(DistillationConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
