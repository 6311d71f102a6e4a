"""NeVA (NeMo's LLaVA) for transformers: vision tower, projector, causal language model, generation.

Module and parameter names follow transformers' Llava (`model.vision_tower`, `model.multi_modal_projector`,
`model.language_model`, `lm_head`), so PEFT targets, `device_map` and exports to a native Llava checkpoint map 1:1.
Self-contained (imports only torch, transformers and its sibling config) for remote-code loading.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, CausalLMOutputWithPast

from .configuration_neva import NevaConfig

# Under 4/8-bit loading these stay in full precision unless the caller names other modules.
QUANTIZATION_SKIP_MODULES = ("model.vision_tower", "model.multi_modal_projector", "lm_head")
# transformers 5.25 renamed the key-value cache, argument and output field, from `past_key_values` to `cache` (the old
# name warns until 5.40). NeVA accepts either and speaks to its language model and to `generate` in the installed one.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class NevaModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(num_images, image_seq_length, hidden_size)`, *optional*):
        The projected image features that replaced the image-token embeddings.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class NevaCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        Next-token cross-entropy over the positions whose label is not -100.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        Language-model logits.
    image_hidden_states (`torch.FloatTensor`, *optional*):
        The projected image features.
    """

    image_hidden_states: torch.FloatTensor | None = None


class NevaMultiModalProjector(nn.Module):
    """`linear`: one Linear (NeMo's NeVA). `mlp2x_gelu`: Linear, GELU, Linear (LLaVA-1.5)."""

    def __init__(self, config: NevaConfig):
        super().__init__()
        vision_width, text_width = config.vision_config.hidden_size, config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = nn.Linear(vision_width, text_width, bias=bias)
        if config.projector_type == "mlp2x_gelu":
            self.act = ACT2FN[config.projector_hidden_act]
            self.linear_2 = nn.Linear(text_width, text_width, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear_1(image_features)
        if hasattr(self, "linear_2"):
            hidden_states = self.linear_2(self.act(hidden_states))
        return hidden_states


class NevaPreTrainedModel(PreTrainedModel):
    config_class = NevaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    @classmethod
    def from_pretrained(cls, *args, quantization_config=None, **kwargs):
        """As `PreTrainedModel.from_pretrained`; with a bitsandbytes `quantization_config` that names no skip modules,
        the vision tower, the projector and `lm_head` stay in full precision (`QUANTIZATION_SKIP_MODULES`)."""
        if quantization_config is not None and getattr(quantization_config, "llm_int8_skip_modules", ()) is None:
            quantization_config.llm_int8_skip_modules = list(QUANTIZATION_SKIP_MODULES)
        return super().from_pretrained(*args, quantization_config=quantization_config, **kwargs)


class NevaModel(NevaPreTrainedModel):
    """The vision tower, the projector and the language model without its head."""

    def __init__(self, config: NevaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = NevaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Runs the vision tower; `pooler_output` holds the projected features, `(num_images, tokens, text_width)`."""
        config = self.config
        if pixel_values.ndim != 4:
            raise ValueError(
                f"`pixel_values` must be (num_images, channels, height, width), got {tuple(pixel_values.shape)}."
            )
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        outputs = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        selected = outputs.hidden_states[config.vision_feature_layer]
        if config.vision_feature_select_strategy == "default":
            selected = selected[:, config.num_class_tokens :]
        features = self.multi_modal_projector(selected)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state, pooler_output=features, hidden_states=outputs.hidden_states
        )

    def merge_image_features(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Writes the image features over the embeddings of the image tokens, in order."""
        if input_ids is not None:
            mask = input_ids == self.config.image_token_id
        else:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embedding).all(-1)
        n_tokens, n_features = int(mask.sum()), image_features.shape[0] * image_features.shape[1]
        if n_tokens != n_features:
            raise ValueError(
                f"The prompt has {n_tokens} image tokens but the images give {n_features} features "
                f"({image_features.shape[0]} images x {image_features.shape[1]}); each <image> must expand to "
                f"{self.config.image_seq_length} image tokens (use NevaProcessor)."
            )
        features = image_features.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1).to(inputs_embeds.device), features)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> NevaModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        if cache is not None and past_key_values is not None:
            raise ValueError("Pass the key-value cache once, as `cache` or as `past_key_values`.")
        cache = cache if cache is not None else past_key_values
        self._check_context_length(input_ids if input_ids is not None else inputs_embeds, cache)
        if inputs_embeds is None:
            token_ids = input_ids
            if self.config.image_token_id >= self.get_input_embeddings().num_embeddings:
                token_ids = input_ids.masked_fill(input_ids == self.config.image_token_id, 0)  # overwritten below
            inputs_embeds = self.get_input_embeddings()(token_ids)
        image_features = None
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values).pooler_output
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_NAME: cache},
            **kwargs,
        )
        return NevaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )

    def _check_context_length(self, inputs: torch.Tensor, cache: Cache | None) -> None:
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        past = cache.get_seq_length() if cache is not None else 0
        length = past + inputs.shape[1]
        if limit is not None and length > limit:
            raise ValueError(
                f"The sequence has {length} tokens (image tokens included) but the language model's context is "
                f"{limit} (`text_config.max_position_embeddings`)."
            )


class NevaForConditionalGeneration(NevaPreTrainedModel, GenerationMixin):
    """NeVA with its language-model head: `forward` with `labels` gives the shifted LM loss; `generate` works."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: NevaConfig):
        super().__init__(config)
        self.model = NevaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers records one Auto class per class in `auto_map`; remote-code users of `AutoModel` need the
        # headless model too.
        if self._auto_class is not None:
            headless = {"AutoModel": "modeling_neva.NevaModel"}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **headless}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        return self.model.get_image_features(pixel_values, **kwargs)

    def freeze_vision_tower(self) -> None:
        """Stops gradients to the vision tower (both NeVA stages keep it frozen)."""
        self.model.vision_tower.requires_grad_(False)

    def freeze_language_model(self) -> None:
        """Stops gradients to the language model and its head (stage 1 trains only the projector)."""
        self.model.language_model.requires_grad_(False)
        self.lm_head.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> NevaCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return NevaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )


__all__ = [
    "NevaCausalLMOutputWithPast",
    "NevaForConditionalGeneration",
    "NevaModel",
    "NevaModelOutputWithPast",
    "NevaMultiModalProjector",
    "NevaPreTrainedModel",
]
