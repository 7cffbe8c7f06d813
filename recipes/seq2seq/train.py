"""Sequence-to-sequence fine-tuning (translation, summarisation) of any encoder-decoder (T5, BART, Marian).
`python recipes/seq2seq/train.py recipes/seq2seq/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.seq2seq import Seq2SeqConfig

# main(argv): config → prepare → fine-tuning (finetune.strategy=lora adapts the model) → Trainer → run dir, returning
# the final metrics: the shared path `mm-ptft train` takes; recipes/text_classification/train.py writes it out.
main = recipe_main(Seq2SeqConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
