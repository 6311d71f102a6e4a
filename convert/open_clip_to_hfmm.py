"""Convert an OpenCLIP checkpoint into an hfmm CLIP folder, exactly: `hfmm convert open-clip`, as a script.

    python convert/open_clip_to_hfmm.py SRC DST [--model NAME] [--quick-gelu | --no-quick-gelu] [--no-verify] [--force]
        [--max-shard-size 5GB]

The command's code and its full description (`--help`) are in `hfmm.conversion.commands.open_clip_to_hfmm`.
"""

from hfmm.conversion.commands.open_clip_to_hfmm import main
from hfmm.conversion.common.script import run_script

if __name__ == "__main__":
    run_script(main)
