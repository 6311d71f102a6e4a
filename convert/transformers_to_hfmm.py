"""Convert a transformers-native `CLIPModel` folder into an hfmm CLIP folder, exactly: `hfmm convert transformers`,
as a script.

    python convert/transformers_to_hfmm.py SRC DST [--force] [--no-verify] [--max-shard-size 5GB]

The command's code and its full description (`--help`) are in `hfmm.conversion.commands.transformers_to_hfmm`.
"""

from hfmm.conversion.commands.transformers_to_hfmm import main
from hfmm.conversion.common.script import run_script

if __name__ == "__main__":
    run_script(main)
