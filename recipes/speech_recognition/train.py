"""Speech recognition (CTC): any audio encoder + a linear CTC head over characters.
`python recipes/speech_recognition/train.py recipes/speech_recognition/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.speech_recognition import SpeechRecognitionConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(SpeechRecognitionConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
