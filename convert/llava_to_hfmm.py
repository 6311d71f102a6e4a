"""Convert a LLaVA checkpoint into an hfmm NeVA folder, exactly: `hfmm convert llava`, as a script.

    python convert/llava_to_hfmm.py SRC DST [--llm LLM] [--vision CLIP] [--force] [--no-verify] [--max-shard-size 5GB]

The command's code and its full description (`--help`) are in `hfmm.conversion.commands.llava_to_hfmm`.
"""

from hfmm.conversion.commands.llava_to_hfmm import main
from hfmm.conversion.common.script import run_script

if __name__ == "__main__":
    run_script(main)
