"""Image classification: any image encoder + a linear head (augmentation, MixUp/CutMix, EMA).
`python recipes/image_classification/train.py recipes/image_classification/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.image_classification import ImageClassificationConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(ImageClassificationConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
