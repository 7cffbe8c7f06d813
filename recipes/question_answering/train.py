"""Extractive question answering (SQuAD) with any encoder transformers' AutoModelForQuestionAnswering fits.
`python recipes/question_answering/train.py recipes/question_answering/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.question_answering import QuestionAnsweringConfig

# main(argv): config → prepare (windows cached) → fine-tuning (finetune.strategy=lora adapts the encoder) → Trainer
# → run dir, returning the final metrics: the shared path `mm-ptft train` takes; recipes/text_classification/train.py
# writes it out.
main = recipe_main(QuestionAnsweringConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
