"""Contrastive pretraining (CLIP / SigLIP) between any modality pairs of a paired manifest.
`python recipes/pretrain_contrastive/train.py recipes/pretrain_contrastive/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.pretrain_contrastive import PretrainContrastiveConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(PretrainContrastiveConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
