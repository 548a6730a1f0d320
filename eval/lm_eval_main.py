"""lm-eval's own command line with the `megatron_mamba` model registered:

    python eval/lm_eval_main.py --model megatron_mamba \
        --model_args pretrained=runs/student,tokenizer=hf/pythia-160m,dtype=bfloat16 --tasks piqa
"""

from lm_eval.__main__ import cli_evaluate

import megatron_mamba.evaluation  # noqa: F401  (registers the model)

if __name__ == "__main__":
    cli_evaluate()
