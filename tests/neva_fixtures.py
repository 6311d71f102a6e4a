"""Tiny NeVA parts built in-process (no downloads): tokenizer, config, model, processor, saved folder."""

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

from hfmm.models.neva import NevaConfig, NevaForConditionalGeneration
from hfmm.models.neva.processing_neva import NevaProcessor

SPECIAL = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<image>",
    "<im_start>",
    "<im_end>",
    *[f"<extra_id_{i}>" for i in range(8)],
]
CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: ASSISTANT: System User Assistant quality toxicity humor creativity helpfulness correctness coherence",
    "complexity verbosity [INST] <<SYS>> <</SYS>> [/INST] You are a helpful language and vision assistant.",
    "What colour is the square? The square is red. green blue yellow circle triangle left right centre.",
    "Describe the image briefly. a red square on the left of a white background 0 1 2 3 4 5 6 7 8 9 , : ?",
]


def tiny_tokenizer(vocab_size: int = 320, image_token: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few sentences, with LLaMA-like and NeVA special tokens (each a single id);
    `image_token=False` leaves `<image>` out, as an original LLaVA tokenizer."""
    special = SPECIAL if image_token else [token for token in SPECIAL if token != "<image>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special[4:]})
    return tokenizer


def tiny_neva_config(tokenizer=None, **overrides) -> NevaConfig:
    """CLIP vision 2 layers (28 px, patch 14: 4 image tokens), LLaMA 2 layers with GQA; vocab = the tokenizer's."""
    tokenizer = tokenizer or tiny_tokenizer()
    vision = dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
        hidden_act="quick_gelu",
    )
    text = dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings = dict(
        vision_config=vision,
        text_config=text,
        projector_type="mlp2x_gelu",
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        conv_template="v1",
    )
    if overrides.get("use_im_start_end"):
        settings["im_start_token_id"] = tokenizer.convert_tokens_to_ids("<im_start>")
        settings["im_end_token_id"] = tokenizer.convert_tokens_to_ids("<im_end>")
    return NevaConfig(**(settings | overrides))


def tiny_image_processor(size: int = 28) -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def tiny_neva(seed: int = 0, **overrides) -> tuple[NevaForConditionalGeneration, NevaProcessor]:
    tokenizer = tiny_tokenizer()
    config = tiny_neva_config(tokenizer, **overrides)
    torch.manual_seed(seed)
    model = NevaForConditionalGeneration(config).eval()
    processor = NevaProcessor.from_model_config(config, tiny_image_processor(), tokenizer)
    return model, processor


def save_tiny_neva(directory: str | Path, seed: int = 0, **overrides) -> Path:
    model, processor = tiny_neva(seed, **overrides)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return Path(directory)


def save_tiny_parts(root: str | Path) -> None:
    """Stage 1's parts, as transformers saves them: a tiny CLIP vision tower with its image processor in
    `root/clip` and a tiny LLaMA with its tokenizer (no `<image>` token yet) in `root/llm` (seeded)."""
    root = Path(root)
    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=28, patch_size=14))  # fmt: skip
    tower.save_pretrained(root / "clip")
    tiny_image_processor().save_pretrained(root / "clip")
    tokenizer = tiny_tokenizer(image_token=False)
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                                       pad_token_id=tokenizer.pad_token_id))  # fmt: skip
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
