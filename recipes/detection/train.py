"""Object detection (Faster R-CNN / RetinaNet / FCOS) on any image encoder, any COCO-format dataset.
`python recipes/detection/train.py recipes/detection/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.detection import DetectionConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(DetectionConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
