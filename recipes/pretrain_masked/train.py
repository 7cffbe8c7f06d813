"""Masked-modelling pretraining: MLM, MAE-style images, masked spectrograms, conditioned MLM.
`python recipes/pretrain_masked/train.py recipes/pretrain_masked/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.pretrain_masked import PretrainMaskedConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(PretrainMaskedConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
