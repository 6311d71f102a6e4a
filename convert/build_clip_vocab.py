"""Regenerate the CLIP BPE vocabulary that hfmm ships (`vocab.json` + `merges.txt`).

The source is the `bpe_simple_vocab_16e6.txt.gz` file of an installed `open_clip_torch` or `openai-clip`
(byte-identical in both, MIT licensed). The vocabulary is built exactly as OpenCLIP's `SimpleTokenizer` builds it:
the 256 byte symbols, the same 256 with `</w>`, one token per merge (the first 48,894 merges of the file) and the
two special tokens `<start_of_text>` (49406) and `<end_of_text>` (49407): 49,408 tokens in all.

Usage:

    python convert/build_clip_vocab.py                 # writes src/hfmm/models/clip/tokenizer/{vocab.json,merges.txt}
    python convert/build_clip_vocab.py --check         # exits 1 if the shipped files differ from a fresh build
    python convert/build_clip_vocab.py --out DIR
"""

import argparse
import gzip
import json
import sys
from pathlib import Path

NUM_MERGES = 49152 - 256 - 2  # OpenCLIP keeps merges[1 : 49152 - 256 - 2 + 1] (line 0 is the version header)
SPECIAL_TOKENS = ["<start_of_text>", "<end_of_text>"]
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "hfmm" / "models" / "clip" / "tokenizer"


def load_reference():
    """Returns `(bpe_path, bytes_to_unicode)` from open_clip, else from openai-clip."""
    try:
        from open_clip.tokenizer import bytes_to_unicode, default_bpe
    except ImportError:
        try:
            from clip.simple_tokenizer import bytes_to_unicode, default_bpe
        except ImportError:
            sys.exit("Neither open_clip_torch nor openai-clip is installed: pip install open_clip_torch")
    return default_bpe(), bytes_to_unicode


def build(bpe_path: str, bytes_to_unicode) -> tuple[str, str]:
    """Returns the text of `vocab.json` and `merges.txt`."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m.split()) for m in merges] + SPECIAL_TOKENS
    if len(tokens) != 49408 or len(set(tokens)) != len(tokens):
        raise ValueError(f"Unexpected vocabulary: {len(tokens)} tokens, {len(set(tokens))} distinct (expected 49408)")
    vocab = json.dumps({token: i for i, token in enumerate(tokens)}, ensure_ascii=False)
    return vocab + "\n", "#version: 0.2\n" + "\n".join(merges) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args()

    files = dict(zip(["vocab.json", "merges.txt"], build(*load_reference())))
    if args.check:
        stale = [name for name, text in files.items() if (args.out / name).read_text(encoding="utf-8") != text]
        sys.exit(f"Out of date: {', '.join(stale)}" if stale else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
