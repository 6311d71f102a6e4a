"""Convert a NeMo CLIP checkpoint into an hfmm CLIP folder, exactly: `hfmm convert nemo-clip`, as a script.

    python convert/nemo_clip_to_hfmm.py SRC DST [--force] [--max-shard-size 5GB]

The command's code and its full description (`--help`) are in `hfmm.conversion.commands.nemo_clip_to_hfmm`.
"""

from hfmm.conversion.commands.nemo_clip_to_hfmm import main
from hfmm.conversion.common.script import run_script

if __name__ == "__main__":
    run_script(main)
