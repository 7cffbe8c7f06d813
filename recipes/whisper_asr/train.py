"""Speech recognition with an encoder-decoder (Whisper): any WhisperForConditionalGeneration-compatible model.
`python recipes/whisper_asr/train.py recipes/whisper_asr/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.whisper_asr import WhisperASRConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(WhisperASRConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
