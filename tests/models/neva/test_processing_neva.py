"""NeVA processor: chat templates, image-token expansion, the image-text-to-text pipeline, bad input, 4-bit loading."""

import numpy as np
import pytest
import torch
from neva_fixtures import save_tiny_neva, tiny_neva
from PIL import Image
from transformers import AutoProcessor, pipeline

from hfmm.models.neva.processing_neva import CHAT_TEMPLATES, NevaProcessor

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}]
EXPECTED_PROMPTS = {
    "v1": "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <image>\nWhat colour is the square? ASSISTANT:",
    "llama_2": "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the "
    "visual content that the user provides, and assist the user with a variety of tasks using natural language.\n"
    "<</SYS>>\n\n<image>\nWhat colour is the square? [/INST]",
    "nvgpt": "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant. The "
    "assistant gives helpful, detailed, and polite answers to the user's questions.\n\n<extra_id_1>User\n<image>\n"
    "What colour is the square?\n<extra_id_1>Assistant\n<extra_id_2>quality:4,toxicity:0,humor:0,creativity:0,"
    "helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4\n",
    "plain": "<image>",
}


def red_square() -> Image.Image:
    image = Image.new("RGB", (40, 30), "white")
    image.paste((220, 20, 20), (10, 5, 30, 25))
    return image


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_chat_templates_render_nemo_formats_and_expand_images(template):
    _, processor = tiny_neva()
    chat_template = NevaProcessor.chat_template_for(template)
    prompt = processor.apply_chat_template(QUESTION, chat_template=chat_template, add_generation_prompt=True)
    assert prompt == EXPECTED_PROMPTS[template]
    inputs = processor(images=red_square(), text=prompt)
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == processor.image_seq_length == 4
    assert inputs["pixel_values"].shape == (1, 3, 28, 28)


def test_multi_turn_v1_and_llama_2():
    _, processor = tiny_neva()
    chat = [
        *QUESTION,
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": [{"type": "text", "text": "Where is it?"}]},
    ]
    v1 = processor.apply_chat_template(chat, chat_template=NevaProcessor.chat_template_for("v1"))
    assert v1.endswith("ASSISTANT: Red.</s>USER: Where is it? ")
    llama_2 = processor.apply_chat_template(chat, chat_template=NevaProcessor.chat_template_for("llama_2"))
    assert llama_2.endswith("[/INST] Red. </s><s>[INST] Where is it? [/INST]")
    plain = [*QUESTION, {"role": "assistant", "content": "a red square"}]
    assert processor.apply_chat_template(plain, chat_template=NevaProcessor.chat_template_for("plain")) == (
        "<image>a red square\n"
    )


def test_start_end_tokens_wrap_each_image():
    _, processor = tiny_neva(use_im_start_end=True)
    inputs = processor(images=[red_square(), red_square()], text="<image> and <image>")
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    assert tokens.count("<image>") == 8 and tokens.count("<im_start>") == 2 and tokens.count("<im_end>") == 2
    first = tokens.index("<im_start>")
    assert tokens[first : first + 6] == ["<im_start>", *["<image>"] * 4, "<im_end>"]


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_image_text_to_text_pipeline(tmp_path, template):
    folder = save_tiny_neva(tmp_path / "neva", conv_template=template)
    generator = pipeline("image-text-to-text", model=str(folder))
    messages = [{"role": "user", "content": [{"type": "image", "image": red_square()}, {"type": "text", "text": "?"}]}]
    (result,) = generator(text=messages, max_new_tokens=6, generate_kwargs={"do_sample": False})
    model, processor = tiny_neva(conv_template=template)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=red_square(), text=prompt)
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    answer = result["generated_text"][-1]["content"]
    assert answer == processor.decode(expected, skip_special_tokens=True)


def test_processor_round_trip_through_auto_processor(tmp_path):
    folder = save_tiny_neva(tmp_path / "neva", use_im_start_end=True)
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, NevaProcessor)
    assert (processor.image_seq_length, processor.im_start_token, processor.im_end_token) == (
        4,
        "<im_start>",
        "<im_end>",
    )
    assert processor.chat_template == NevaProcessor.chat_template_for("v1")


def test_image_count_mismatch_is_a_value_error():
    _, processor = tiny_neva()
    with pytest.raises(ValueError, match="Found total 2 <image> tokens and 1 images"):
        processor(images=red_square(), text="<image> <image>")
    with pytest.raises(ValueError, match="Found total 1 <image> tokens and 2 images"):
        processor(images=[red_square(), red_square()], text="<image>")
    with pytest.raises(ValueError, match="but no images were passed"):
        processor(text="<image> what?")


def test_images_of_the_wrong_mode_are_value_errors():
    _, processor = tiny_neva()
    with pytest.raises(ValueError, match="Image mode 'F' is not supported"):
        processor(images=Image.new("F", (28, 28)), text="<image>")
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        processor(images=np.zeros((28, 28, 2), dtype=np.uint8), text="<image>")
    # modes that convert to RGB without losing meaning are accepted
    for mode in ("L", "RGBA", "P", "CMYK"):
        assert processor(images=red_square().convert(mode), text="<image>")["pixel_values"].shape == (1, 3, 28, 28)


def test_a_prompt_longer_than_the_context_is_a_value_error():
    _, processor = tiny_neva()
    with pytest.raises(ValueError, match="model_max_length"):
        processor(images=red_square(), text="<image>" + " red" * 600)


def test_four_bit_loading_keeps_vision_projector_and_head_in_full_precision(tmp_path):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes (the `quant` extra) is not installed")
    from transformers import BitsAndBytesConfig

    folder = save_tiny_neva(tmp_path / "neva")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = NevaForConditionalGenerationFromAuto(folder, quantization)
    language = model.model.language_model
    assert isinstance(language.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(language.layers[1].mlp.down_proj, bnb.nn.Linear4bit)
    full_precision = [
        model.lm_head,
        model.model.multi_modal_projector.linear_1,
        model.model.multi_modal_projector.linear_2,
    ]
    full_precision += [model.model.vision_tower.encoder.layers[0].self_attn.q_proj]
    for module in full_precision:
        assert type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
    _, processor = tiny_neva()
    inputs = processor(images=red_square(), text="<image> What colour?")
    output = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 5)


def NevaForConditionalGenerationFromAuto(folder, quantization):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(folder, quantization_config=quantization, device_map="cpu")


def test_hfmm_chat_prints_the_greedy_answer(tmp_path, capsys):
    from hfmm.cli import main

    folder = save_tiny_neva(tmp_path / "neva")
    red_square().save(tmp_path / "square.png")
    assert main(["chat", "--model", str(folder), "--image", str(tmp_path / "square.png"), "--max-new-tokens", "6",
                 "What colour is the square?"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    model, processor = tiny_neva()
    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = processor(images=Image.open(tmp_path / "square.png").convert("RGB"), text=prompt)
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert printed.strip() == processor.decode(expected, skip_special_tokens=True).strip()
    assert main(["chat", "--model", str(folder), "--image", str(tmp_path / "missing.png"), "hi"]) == 2
