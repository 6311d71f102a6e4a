"""`hfmm demo --neva` / `make demo-neva`: a tiny NeVA learns to answer "What colour is the shape?" on 2 CPU cores.

1. render captioned coloured shapes with Pillow (train and held-out) and write them as LLaVA-style conversations:
   captions for stage 1, questions with their answers for stage 2;
2. build the parts: a fresh tiny CLIP vision tower, a fresh tiny LLaMA and a byte-level BPE tokenizer trained on the
   demo's own text with `tokenizers`;
3. run the real recipes, `hfmm train neva-stage1` (projector only, `plain` template) then `hfmm train neva-stage2`
   (projector + language model, `v1` template), with `recipes/neva/tiny_demo_stage{1,2}.yaml`;
4. `hfmm eval --task vqa` on the held-out questions: the saved NeVA answers each through its chat template with greedy
   decoding, scored by normalised exact match (chance: 1 / 8 colours); the eval JSON is saved beside the model.
"""

import csv
import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from hfmm.demo.synthetic import COLOURS, IMAGE_SIZE, make_shapes_dataset
from hfmm.evaluation import run_eval
from hfmm.models.neva.processing_neva import NevaProcessor
from hfmm.resources import recipes_dir
from hfmm.training.neva import recipe

QUESTION = "What colour is the shape?"


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_conversations(data: Path, n_train: int, n_eval: int) -> dict[str, Path]:
    """Rendered images as LLaVA-style JSON: captions (stage 1), questions (stage 2) and held-out questions."""
    train, held_out = (
        make_shapes_dataset(data, n_train, seed=0),
        make_shapes_dataset(data, n_eval, seed=1, split="test"),
    )
    captions = [
        {"id": row["image"], "image": row["image"],
         "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": row["caption"]}]}
        for row in _rows(train)
    ]  # fmt: skip

    def questions(rows):
        return [
            {"id": row["image"], "image": row["image"], "answer": row["colour"],
             "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": row["colour"]}]}
            for row in rows
        ]  # fmt: skip

    paths = {
        "captions": data / "captions.json",
        "questions": data / "questions.json",
        "held_out": data / "held_out.json",
    }
    paths["captions"].write_text(json.dumps(captions))
    paths["questions"].write_text(json.dumps(questions(_rows(train))))
    paths["held_out"].write_text(json.dumps(questions(_rows(held_out))))
    return paths


def build_parts(parts: Path, texts: list[str]) -> None:
    """A fresh tiny CLIP vision tower (64 px, patch 16: 16 image tokens), a tokenizer trained on the demo's text and a
    fresh tiny LLaMA with its vocabulary."""
    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=16))  # fmt: skip
    tower.save_pretrained(parts / "clip")
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(parts / "clip")
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>", model_max_length=256)  # fmt: skip
    tokenizer.save_pretrained(parts / "llm")
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=256,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id))  # fmt: skip
    llm.save_pretrained(parts / "llm")


def _stage(text: str) -> None:
    """A status line before each long, otherwise silent step (flushed: the demo runs under `make`, piped)."""
    print(f"\n==> {text}", flush=True)


def run_neva_demo(
    out: Path, *, n_train: int = 1600, n_eval: int = 160, epochs: tuple[float, float] | None = None
) -> dict:
    """Runs the NeVA demo into `out`; returns `{"accuracy", "chance", "stage1", "stage2"}`."""
    out = Path(out)
    data, parts = out / "data", out / "parts"
    print(f"rendering {n_train} training and {n_eval} held-out images into {data}")
    paths = write_conversations(data, n_train, n_eval)
    # the tokenizer learns the demo's words: captions, the question, the answers and the v1 template's own text
    conversations = [turn["value"] for k in ("captions", "questions") for row in json.loads(paths[k].read_text())
                     for turn in row["conversations"]]  # fmt: skip
    rendered = NevaProcessor.chat_template_for("v1")
    system = rendered[rendered.index('system="') + 8 : rendered.index('") -%}')]
    texts = conversations + [f"{system} USER: {QUESTION} ASSISTANT:"] * 200
    _stage(f"building the parts into {parts}: a tiny CLIP vision tower, a tokenizer and a tiny LLaMA")
    build_parts(parts, texts)
    stage1_out, stage2_out = out / "stage1", out / "stage2"
    common = ["--image_folder", str(data)]
    first = ["--vision_tower", str(parts / "clip"), "--language_model", str(parts / "llm"), "--train_data",
             str(paths["captions"]), "--output_dir", str(stage1_out), *common]  # fmt: skip
    second = ["--model_name_or_path", str(stage1_out), "--pretrained_projector", str(stage1_out / "projector.safetensors"),
              "--train_data", str(paths["questions"]), "--output_dir", str(stage2_out), *common]  # fmt: skip
    if epochs is not None:
        first += ["--num_train_epochs", str(epochs[0])]
        second += ["--num_train_epochs", str(epochs[1])]
    recipes = recipes_dir() / "neva"
    _stage(f"stage 1 of 2, feature alignment (hfmm train neva-stage1): training the projector into {stage1_out}")
    stage1 = recipe.main(["--config", str(recipes / "tiny_demo_stage1.yaml"), *first], stage=1)
    _stage(f"stage 2 of 2, fine-tuning (hfmm train neva-stage2): projector + language model into {stage2_out}")
    stage2 = recipe.main(["--config", str(recipes / "tiny_demo_stage2.yaml"), *second], stage=2)
    _stage(f"evaluating: greedy answers to {n_eval} held-out questions (hfmm eval --task vqa)")
    report = run_eval(stage2_out, [("vqa", paths["held_out"])], output=stage2_out / "eval.json", progress=False)
    accuracy = report["results"][0]["metrics"]["exact_match"]
    chance = 1 / len(COLOURS)
    print(
        f"\nheld-out answers to {QUESTION!r}: {accuracy:.1%} correct (chance {chance:.1%}); NeVA saved in {stage2_out}"
    )
    return {"accuracy": accuracy, "chance": chance, "stage1": stage1["train"], "stage2": stage2["train"]}
