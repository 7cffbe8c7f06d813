"""Multimodal classification: text/image/audio encoders → fusion → head; rows may lack a modality.
`python recipes/multimodal_classification/train.py recipes/multimodal_classification/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.multimodal_classification import MultimodalClassificationConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(MultimodalClassificationConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
