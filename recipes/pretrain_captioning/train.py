"""Captioning pretraining (alone, or CoCa with clip): a caption decoder over an image or audio encoder.
`python recipes/pretrain_captioning/train.py recipes/pretrain_captioning/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.pretrain_captioning import PretrainCaptioningConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(PretrainCaptioningConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
