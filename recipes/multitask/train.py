"""Multi-task fine-tuning: several single-task recipes on one shared encoder per modality.
`python recipes/multitask/train.py recipes/multitask/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.multitask import MultiTaskConfig

# main(argv): config → prepare (each task's own recipe, shared encoders injected) → fine-tuning → Trainer → run
# dir, returning the final metrics (``<task>/<metric>`` for every task): the shared path `mm-ptft train` takes.
main = recipe_main(MultiTaskConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
