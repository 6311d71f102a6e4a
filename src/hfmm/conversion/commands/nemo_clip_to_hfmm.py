"""Convert a NeMo CLIP checkpoint into an hfmm CLIP folder, exactly.

    hfmm convert nemo-clip SRC DST [--force] [--max-shard-size 5GB]
    python convert/nemo_clip_to_hfmm.py SRC DST ...   (the same command)

SRC is a NeMo 1 `.nemo` file (tar, plain or gzip) or its extracted folder, with the weights as `model_weights.ckpt`,
`mp_rank_XX/`, `tp_rank_XX_pp_rank_YYY/` or a megatron-core `torch_dist` checkpoint in `model_weights/`; or a NeMo 2
folder (`context/model.yaml` + `weights/`). Legacy (`query_key_value`, `megatron_legacy` true or false) and
megatron-core (`linear_qkv`) models, any tensor-parallel size, 1 or 8 class tokens, `global_average_pool`, the old
patch embedding with bias. The activation follows NeMo's rules (`activation`, `openai_gelu`, `bias_activation_fusion`).

DST gets `config.json`, `model.safetensors`, and the tokenizer (the checkpoint's own vocab/merges files when it
carries them, else hfmm's CLIP BPE) and image processor files. Pickles are read with `weights_only=True`, archives
are checked before anything is extracted (into a temporary folder), and DST appears only once complete; an existing
DST needs --force. Errors are one line and exit with status 1.
"""

import argparse

from hfmm.conversion.common.script import add_common_arguments, print_report, script_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, ".nemo file, extracted .nemo folder or NeMo 2 checkpoint folder")


def run(args: argparse.Namespace, arguments: list[str]) -> None:
    # Imported here, not at the top: `hfmm --help` and the other commands do not load the converters.
    from hfmm.conversion.nemo.clip import convert_nemo_clip_checkpoint

    result = convert_nemo_clip_checkpoint(
        args.src, args.dst, force=args.force, max_shard_size=args.max_shard_size, arguments=arguments
    )
    print_report(result, "an hfmm CLIP")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)
