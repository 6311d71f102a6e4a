"""Export an hfmm CLIP or NeVA folder as a transformers-native checkpoint: `hfmm convert to-transformers`, as a
script.

    python convert/to_transformers.py SRC DST [--force] [--no-verify]

The command's code and its full description (`--help`) are in `hfmm.conversion.commands.to_transformers`.
"""

from hfmm.conversion.commands.to_transformers import main
from hfmm.conversion.common.script import run_script

if __name__ == "__main__":
    run_script(main)
