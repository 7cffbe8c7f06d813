"""Joint pretraining: several weighted objectives, each source dataset mixed in by weight.
`python recipes/pretrain_joint/train.py recipes/pretrain_joint/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.pretrain_joint import PretrainJointConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(PretrainJointConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
