"""The `hfmm` command line: `hfmm demo | zero-shot | chat | eval | soup | card | push`."""

import argparse
import logging
import sys
from pathlib import Path

from hfmm.conversion.cli import add_convert_command
from hfmm.training.cli import add_train_command

CLIP_KIND = "a CLIP (zero-shot image classification) model"
NEVA_KIND = "a NeVA (image-text-to-text) model"
ZERO_SHOT_BATCH = 32  # images per forward pass of `hfmm zero-shot`


def _kind_of(config) -> tuple[str | None, str]:
    """`(CLIP_KIND or NEVA_KIND or None, words)` for a config: `(CLIP_KIND, "a CLIP (model_type hfmm_clip)")`."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
        MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING,
    )

    if type(config) in MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING:
        kind, words = CLIP_KIND, "a CLIP"
    elif type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:  # NeVA, or transformers' Llava and kin
        kind, words = NEVA_KIND, "a NeVA" if config.model_type == "neva" else "an image-text-to-text model"
    else:
        kind, words = None, "another kind of model"
    return kind, f"{words} (model_type {config.model_type})"


def check_model(path: str, needs: str) -> None:
    """Refuses, in one line, a missing local model folder or a model of the wrong kind for the command.

    Args:
        path (`str`): a model folder or Hub id.
        needs (`str`): `CLIP_KIND` or `NEVA_KIND`.
    """
    from transformers import AutoConfig

    import hfmm  # noqa: F401  (registers hfmm's classes)
    from hfmm.training.arguments import check_model_path

    check_model_path(path, "model")
    kind, words = _kind_of(AutoConfig.from_pretrained(path))
    if kind != needs:
        raise ValueError(f"this needs {needs}; {path} is {words}.")


def image_files(paths: list[str]) -> list[Path]:
    """The image files named: a folder stands for the images in it (sorted, by extension), a file for itself."""
    from hfmm.evaluation import IMAGE_EXTENSIONS

    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                logging.getLogger("hfmm").warning("Skipping %s: no images (extensions %s)", path, IMAGE_EXTENSIONS)
            files += found
        else:
            files.append(path)
    return files


def zero_shot(args: argparse.Namespace) -> int:
    """Prints the labels of each image, most probable first; unreadable images are skipped with a warning.

    Images go to hfmm's processor as they are (not through the pipeline, which converts them to RGB first), so
    16-bit images are scaled to 8 bit and transparent or palette images get OpenCLIP's exact pixels.
    """
    import torch
    from transformers import AutoModelForZeroShotImageClassification, AutoProcessor

    from hfmm.evaluation import load_images

    if not args.label:
        raise ValueError("Give at least one --label.")
    check_model(args.model, CLIP_KIND)
    files = image_files(args.images)
    images, kept = load_images(files)  # a warning per unreadable file, as `hfmm eval`
    if not images:
        raise ValueError(f"None of the {len(files)} image(s) given could be read.")
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForZeroShotImageClassification.from_pretrained(args.model).eval()
    texts = [args.template.format(label) for label in args.label]
    sigmoid = "siglip" in model.config.model_type  # as the pipeline: independent probabilities for SigLIP
    for start in range(0, len(images), ZERO_SHOT_BATCH):
        batch = images[start : start + ZERO_SHOT_BATCH]
        inputs = processor(images=batch, text=texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            logits = model(**inputs).logits_per_image  # (images, labels)
        probs = logits.sigmoid() if sigmoid else logits.softmax(dim=-1)
        for index, row in zip(kept[start : start + ZERO_SHOT_BATCH], probs.tolist()):
            print(files[index])
            for score, label in sorted(zip(row, args.label), key=lambda pair: -pair[0]):
                print(f"  {score:.4f}  {label}")
    return 0


def chat(args: argparse.Namespace) -> int:
    """Answers one question about one image with a NeVA, printing the answer as it is generated."""
    from PIL import Image, UnidentifiedImageError
    from transformers import AutoModelForImageTextToText, AutoProcessor, TextStreamer

    if not args.question.strip():
        raise ValueError('the question is empty; ask something, e.g. "What is in the picture?"')
    check_model(args.model, NEVA_KIND)
    try:
        image = Image.open(args.image)
        image.load()
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"Cannot read image {args.image}: {error}") from error
    processor = AutoProcessor.from_pretrained(args.model)
    if processor.chat_template is None:
        raise ValueError(f"{args.model} has no chat template; save its processor with one (NevaProcessor).")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": args.question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # the image as it is: NeVA's processor refuses modes that lose meaning in RGB (16-bit, 32-bit, float)
    inputs = processor(images=image, text=prompt)
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer)
    return 0


def demo(args: argparse.Namespace) -> int:
    if args.neva:
        from hfmm.demo.neva import run_neva_demo

        run_neva_demo(Path(args.out) / "neva")
        return 0
    from hfmm.demo.clip import run_clip_demo

    run_clip_demo(Path(args.out), n_train=args.train_size, epochs=args.epochs)
    return 0


def soup(args: argparse.Namespace) -> int:
    import hfmm  # noqa: F401
    from hfmm.training.soup import make_soup

    print(
        f"wrote the average of {len(args.checkpoints)} checkpoints to {make_soup(args.checkpoints, args.out, force=args.force)}"
    )
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Runs each `--task` on its `--data`, prints the metrics and writes the eval JSON."""
    from hfmm.evaluation import run_eval

    if len(args.task) != len(args.data):
        raise ValueError(f"Give one --data per --task (got {len(args.task)} tasks and {len(args.data)} datasets).")
    if args.task:
        check_model(args.model, NEVA_KIND if "vqa" in args.task else CLIP_KIND)
    report = run_eval(
        args.model, list(zip(args.task, args.data)), args.out, templates=args.template, batch_size=args.batch_size
    )
    for result in report["results"]:
        dataset = result["dataset"]
        metrics = "  ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
        print(f"{result['task']} on {dataset['name']}/{dataset['split']}: {metrics}")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _card_options(args: argparse.Namespace) -> dict:
    return dict(
        eval_report=args.eval,
        recipe=args.recipe,
        license=args.license,
        base_model=args.base_model,
        datasets=args.dataset or None,
    )


def card(args: argparse.Namespace) -> int:
    from hfmm.hub.cards import write_card
    from hfmm.training.arguments import check_model_path

    check_model_path(args.dir, "DIR")
    path = write_card(args.dir, repo_id=args.repo_id, **_card_options(args))
    print(f"wrote {path}")
    return 0


def push(args: argparse.Namespace) -> int:
    from hfmm.hub.push import PushError, push

    try:
        result = push(
            args.dir, args.repo, private=args.private, fmt=args.format, dry_run=args.dry_run, **_card_options(args)
        )
    except PushError as error:
        print(f"hfmm push: error: {error}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"would upload {len(result.files)} files to {args.repo} in one commit:")
        print("\n".join(f"  {name}" for name in result.files))
    else:
        print(f"uploaded {len(result.files)} files to {args.repo}: {result.commit_url}")
    return 0


def _add_card_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--eval", help="an `hfmm eval` JSON (default: DIR/eval.json when present)")
    command.add_argument("--recipe", help="the recipe YAML the model was trained with")
    command.add_argument("--license", help="license identifier for the card, e.g. mit, apache-2.0")
    command.add_argument("--base-model", help="Hub id of the model this one was converted or fine-tuned from")
    command.add_argument("--dataset", action="append", default=[], help="a training dataset's Hub id (repeat)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfmm", description="CLIP and NeVA models, native to transformers.")
    commands = parser.add_subparsers(dest="command", required=True)

    shot = commands.add_parser("zero-shot", help="rank text labels for images with a CLIP model")
    shot.add_argument("--model", required=True, help="model folder or Hub id")
    shot.add_argument("--label", action="append", default=[], help="a candidate label (repeat)")
    shot.add_argument("--template", default="a photo of {}.", help="prompt template for each label")
    shot.add_argument("images", nargs="+", help="image files or folders of images")
    shot.set_defaults(func=zero_shot)

    talk = commands.add_parser("chat", help="ask a NeVA a question about an image (greedy, streamed)")
    talk.add_argument("--model", required=True, help="NeVA folder or Hub id")
    talk.add_argument("--image", required=True, help="image file")
    talk.add_argument("--max-new-tokens", type=int, default=128, help="longest answer, in tokens")
    talk.add_argument("question", help="the question")
    talk.set_defaults(func=chat)

    average = commands.add_parser("soup", help="average checkpoints of one architecture (a model soup)")
    average.add_argument("checkpoints", nargs="+", help="model folders")
    average.add_argument("--out", required=True, help="output folder")
    average.add_argument("--force", action="store_true", help="replace an existing output folder")
    average.set_defaults(func=soup)

    score = commands.add_parser("eval", help="zero-shot/retrieval metrics of a CLIP, VQA exact match of a NeVA")
    score.add_argument("--model", required=True, help="model folder or Hub id")
    score.add_argument(
        "--task",
        action="append",
        default=[],
        choices=["zero-shot", "retrieval", "vqa"],
        help="a task (repeat, with --data)",
    )
    score.add_argument(
        "--data",
        action="append",
        default=[],
        help="the task's data: a folder of class folders or image,label CSV (zero-shot); image,caption CSV/JSONL "
        "(retrieval); a LLaVA-style JSON of questions with reference answers (vqa, a NeVA)",
    )
    score.add_argument(
        "--template", action="append", help='zero-shot prompt template, e.g. "a photo of a {}." (repeat)'
    )
    score.add_argument("--batch-size", type=int, default=64, help="images or texts per forward pass")
    score.add_argument("--out", help="write the results as JSON here")
    score.set_defaults(func=evaluate)

    describe = commands.add_parser("card", help="write DIR/README.md: a model card from the folder and its results")
    describe.add_argument("dir", help="a saved hfmm model folder")
    describe.add_argument("--repo-id", help="the Hub id the usage snippet loads (default: the folder name)")
    _add_card_arguments(describe)
    describe.set_defaults(func=card)

    upload = commands.add_parser("push", help="upload a model folder to the Hub in one commit, with its card")
    upload.add_argument("dir", help="a saved hfmm model folder")
    upload.add_argument("--repo", required=True, help="the Hub repository, org/name")
    upload.add_argument("--private", action="store_true", help="create the repository private")
    upload.add_argument(
        "--format",
        choices=["hfmm", "transformers"],
        default="hfmm",
        help="hfmm: the folder as is (remote code for transformers-only users); transformers: the native export",
    )
    upload.add_argument("--dry-run", action="store_true", help="list what would be uploaded; no token or network")
    _add_card_arguments(upload)
    upload.set_defaults(func=push)

    show = commands.add_parser("demo", help="train a tiny CLIP on generated shapes and evaluate it zero-shot")
    show.add_argument("--out", default="demo_output", help="output folder")
    show.add_argument("--train-size", type=int, default=2000, help="number of generated training images")
    show.add_argument("--epochs", type=float, default=None, help="override the recipe's num_train_epochs")
    show.add_argument(
        "--neva", action="store_true", help="the NeVA demo instead: two recipe stages, then held-out answer accuracy"
    )
    show.set_defaults(func=demo)

    add_train_command(commands)
    add_convert_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: the shell's status for SIGINT, without a traceback
        print(file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:  # OSError: also transformers' "not a valid model folder" family
        print(f"hfmm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
