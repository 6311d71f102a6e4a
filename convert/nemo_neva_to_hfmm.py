"""Convert a NeMo NeVA checkpoint into an hfmm NeVA folder: `hfmm convert nemo-neva`, as a script.

    python convert/nemo_neva_to_hfmm.py SRC DST --vision CLIP [--llm LLM] [--tokenizer TOK] [--force]

The command's code and its full description (`--help`) are in `hfmm.conversion.commands.nemo_neva_to_hfmm`.
"""

from hfmm.conversion.commands.nemo_neva_to_hfmm import main
from hfmm.conversion.common.script import run_script

if __name__ == "__main__":
    run_script(main)
