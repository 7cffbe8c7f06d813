"""Text regression: any text encoder + a linear head predicting one number per text.
`python recipes/text_regression/train.py recipes/text_regression/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.text_regression import TextRegressionConfig

# main(argv): config → prepare → fine-tuning → Trainer → run dir, returning the final metrics: the shared path
# `mm-ptft train` takes (mm_ptft.run.train); recipes/text_classification/train.py writes it out step by step.
main = recipe_main(TextRegressionConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
