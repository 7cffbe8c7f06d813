"""Video classification: any video encoder (transformers video model, or an image encoder per frame + temporal
pooling) + a linear head, on video files decoded with PyAV.
`python recipes/video_classification/train.py recipes/video_classification/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.video_classification import VideoClassificationConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics (mm_ptft.run.train)
main = recipe_main(VideoClassificationConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
