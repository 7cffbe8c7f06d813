"""Supervised fine-tuning (instruction tuning) of any causal LM on prompt/response pairs or chats.
`python recipes/causal_lm_sft/train.py recipes/causal_lm_sft/tiny.yaml [key.sub=value ...]`."""
import sys

from mm_ptft.run import recipe_main
from mm_ptft.tasks.causal_lm_sft import CausalLMSFTConfig

# main(argv): config → prepare → fine-tuning (finetune.strategy=lora adapts the LM) → Trainer → run dir, returning
# the final metrics: the shared path `mm-ptft train` takes; recipes/text_classification/train.py writes it out.
main = recipe_main(CausalLMSFTConfig)

if __name__ == "__main__":
    main(sys.argv[1:])
