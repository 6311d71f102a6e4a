"""hfmm's CLIP: ViT and timm-ConvNeXt image towers, a causal text tower, and the dual encoder.

Module and parameter names follow transformers' `CLIPModel` (so PEFT targets and native exports are 1:1);
numerics follow OpenCLIP. Self-contained: imports only torch, transformers, timm and its siblings, so that
`save_pretrained` can ship it to the Hub as remote code.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_clip import (
    HfmmCLIPConfig,
    HfmmCLIPTextConfig,
    HfmmCLIPVisionConfig,
    HfmmConvNextVisionConfig,
    HfmmSigLIPConfig,
)


@dataclass
class HfmmCLIPOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `return_loss` is `True`):
        Contrastive loss (softmax for CLIP, sigmoid for SigLIP) over the batch.
    logits_per_image (`torch.FloatTensor` of shape `(image_batch_size, text_batch_size)`):
        Scaled cosine similarities (plus the logit bias, when the model has one).
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, image_batch_size)`):
        Transpose of `logits_per_image`.
    text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        L2-normalised projected text embeddings.
    image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        L2-normalised projected image embeddings.
    logit_scale (`torch.FloatTensor` of shape `(1,)`):
        The logit multiplier `exp(logit_scale)` (read inside `forward`, so FSDP has gathered it).
    logit_bias (`torch.FloatTensor` of shape `(1,)`, *optional*):
        The learned logit bias, when the model has one.
    """

    loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None
    logit_bias: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self):
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def drop_path(hidden_states: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch per sample with probability `rate`, rescaling the survivors."""
    if rate == 0.0 or not training:
        return hidden_states
    keep = hidden_states.new_empty((hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)).bernoulli_(1 - rate)
    return hidden_states * keep / (1 - rate)


class HfmmCLIPVisionEmbeddings(nn.Module):
    """Patch embedding, `class_token_length` class tokens, learned positions and (training-only) patch dropout."""

    def __init__(self, config: HfmmCLIPVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_class_tokens = config.class_token_length
        # One class token keeps transformers' `(hidden_size,)` shape, so native exports are 1:1.
        shape = (self.embed_dim,) if self.num_class_tokens == 1 else (self.num_class_tokens, self.embed_dim)
        self.class_embedding = nn.Parameter(torch.randn(shape))
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            self.embed_dim,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.patch_embedding_bias,
        )
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.num_positions = self.num_patches + self.num_class_tokens
        self.position_embedding = nn.Embedding(self.num_positions, self.embed_dim)
        self.position_ids = nn.Buffer(torch.arange(self.num_positions).expand((1, -1)), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        batch_size, _, height, width = pixel_values.shape
        if height != self.config.image_size or width != self.config.image_size:
            raise ValueError(
                f"Input image size ({height}x{width}) does not match the model ({self.config.image_size}x"
                f"{self.config.image_size}); preprocess with the model's image processor."
            )
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, W, G, G)
        patches = patches.flatten(2).transpose(1, 2)  # (B, N, W)
        class_tokens = self.class_embedding.view(-1, self.embed_dim).expand(batch_size, -1, -1)  # (B, K, W)
        embeddings = torch.cat([class_tokens.to(patches.dtype), patches], dim=1)  # (B, K+N, W)
        embeddings = embeddings + self.position_embedding(self.position_ids)
        if self.training and self.config.drop_patch_rate > 0:
            embeddings = self.drop_patches(embeddings)
        return embeddings

    def drop_patches(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Keeps the class tokens and a random `int(N * (1 - rate))` patches per image (OpenCLIP's PatchDropout)."""
        class_tokens, patches = embeddings.split([self.num_class_tokens, self.num_patches], dim=1)
        num_keep = max(1, int(self.num_patches * (1 - self.config.drop_patch_rate)))
        keep = torch.randn(patches.shape[:2], device=patches.device).topk(num_keep, dim=-1).indices  # (B, n)
        patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))  # (B, n, W)
        return torch.cat([class_tokens, patches], dim=1)


class HfmmCLIPTextEmbeddings(nn.Module):
    def __init__(self, config: HfmmCLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.position_ids = nn.Buffer(torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False)

    def forward(self, input_ids: torch.LongTensor, position_ids: torch.LongTensor | None = None) -> torch.Tensor:
        seq_length = input_ids.shape[-1]
        if seq_length > self.position_ids.shape[-1]:
            raise ValueError(
                f"Sequence length {seq_length} exceeds the context length {self.position_ids.shape[-1]}; "
                "tokenize with truncation=True."
            )
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_length]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, T, T)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, H, D)
    return attn_output, attn_weights


class HfmmCLIPAttention(nn.Module):
    """Multi-head self-attention; the kernel is chosen by `config._attn_implementation`."""

    def __init__(self, config: HfmmCLIPTextConfig | HfmmCLIPVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.head_dim = self.embed_dim // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)  # -1: local heads under tensor parallelism
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H, T, D)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=self.scale,
            dropout=self.config.attention_dropout if self.training else 0.0,
            **kwargs,
        )
        attn_output = self.out_proj(attn_output.reshape(*input_shape, -1).contiguous())  # (B, T, W)
        return attn_output, attn_weights


class HfmmCLIPMLP(nn.Module):
    def __init__(self, config: HfmmCLIPTextConfig | HfmmCLIPVisionConfig):
        super().__init__()
        self.config = config
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


class HfmmCLIPEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x)), each branch under stochastic depth."""

    def __init__(self, config: HfmmCLIPTextConfig | HfmmCLIPVisionConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.self_attn = HfmmCLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = HfmmCLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        attn_output, _ = self.self_attn(self.layer_norm1(hidden_states), attention_mask=attention_mask, **kwargs)
        hidden_states = hidden_states + drop_path(attn_output, self.drop_path_rate, self.training)
        mlp_output = self.mlp(self.layer_norm2(hidden_states))
        return hidden_states + drop_path(mlp_output, self.drop_path_rate, self.training)


class HfmmCLIPEncoder(nn.Module):
    def __init__(self, config: HfmmCLIPTextConfig | HfmmCLIPVisionConfig):
        super().__init__()
        steps = max(config.num_hidden_layers - 1, 1)
        rates = [config.drop_path_rate * i / steps for i in range(config.num_hidden_layers)]  # linear ramp from 0
        self.layers = nn.ModuleList([HfmmCLIPEncoderLayer(config, rate) for rate in rates])

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        hidden_states = inputs_embeds
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        return BaseModelOutput(last_hidden_state=hidden_states)


class HfmmCLIPPreTrainedModel(PreTrainedModel):
    config: HfmmCLIPConfig
    base_model_prefix = "clip"
    input_modalities = ("image", "text")
    # Not the text embeddings: accelerate's FSDP2 shards the token embedding (`get_input_embeddings`) as a unit of its
    # own, which fails inside an already sharded parent.
    _no_split_modules = ["HfmmCLIPEncoderLayer", "HfmmCLIPVisionEmbeddings"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": HfmmCLIPEncoderLayer, "attentions": HfmmCLIPAttention}

    @torch.no_grad()
    def _init_weights(self, module):
        """OpenCLIP's initialisation for the parts it defines; transformers' defaults elsewhere (timm trunk)."""
        super()._init_weights(module)
        factor = self.config.initializer_factor
        if isinstance(module, HfmmCLIPTextEmbeddings):
            nn.init.normal_(module.token_embedding.weight, std=0.02 * factor)
            nn.init.normal_(module.position_embedding.weight, std=0.01 * factor)
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, HfmmCLIPVisionEmbeddings):
            scale = module.embed_dim**-0.5 * factor
            nn.init.normal_(module.class_embedding, std=scale)
            nn.init.normal_(module.position_embedding.weight, std=scale)
            module.position_ids.copy_(torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, HfmmCLIPAttention):
            layers = module.config.num_hidden_layers
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                nn.init.normal_(proj.weight, std=module.embed_dim**-0.5 * factor)
            nn.init.normal_(module.out_proj.weight, std=module.embed_dim**-0.5 * (2 * layers) ** -0.5 * factor)
        elif isinstance(module, HfmmCLIPMLP):
            width, layers = module.config.hidden_size, module.config.num_hidden_layers
            nn.init.normal_(module.fc1.weight, std=(2 * width) ** -0.5 * factor)
            nn.init.normal_(module.fc2.weight, std=width**-0.5 * (2 * layers) ** -0.5 * factor)
        elif isinstance(module, HfmmCLIPModel):
            nn.init.constant_(module.logit_scale, self.config.logit_scale_init_value)
            if module.logit_bias is not None:
                nn.init.constant_(module.logit_bias, self.config.logit_bias_init_value)


class HfmmCLIPTextModel(HfmmCLIPPreTrainedModel):
    """The CLIP text tower; `pooler_output` is the final-LayerNorm state at the end-of-text token."""

    config: HfmmCLIPTextConfig
    input_modalities = ("text",)
    _input_embed_layer = "token_embedding"

    def __init__(self, config: HfmmCLIPTextConfig):
        super().__init__(config)
        self.embeddings = HfmmCLIPTextEmbeddings(config)
        self.encoder = HfmmCLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module):
        self.embeddings.token_embedding = value

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids from the CLIP tokenizer, each row holding one end-of-text token.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for real tokens, 0 for padding (padding after the end-of-text token never reaches the pooled state).
        """
        if input_ids is None:
            raise ValueError("`input_ids` are required.")
        hidden_states = self.embeddings(input_ids, position_ids)  # (B, T, W)
        # no cache: positional, since the parameter is `past_key_values` before transformers 5.25 and `cache` after
        causal_mask = create_causal_mask(self.config, hidden_states, attention_mask, None)
        kwargs.pop("is_causal", None)
        encoder_outputs = self.encoder(hidden_states, causal_mask, is_causal=True, **kwargs)
        last_hidden_state = self.final_layer_norm(encoder_outputs.last_hidden_state)
        # OpenCLIP pools at argmax(input_ids): the first end-of-text token, the largest id of the vocabulary.
        eot_positions = (input_ids == self.config.eos_token_id).int().argmax(dim=-1)  # (B,)
        pooled_output = last_hidden_state[torch.arange(input_ids.shape[0], device=input_ids.device), eot_positions]
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


class HfmmCLIPVisionModel(HfmmCLIPPreTrainedModel):
    """The ViT image tower; `pooler_output` is the LayerNorm-ed first class token (or the NeMo token average)."""

    config: HfmmCLIPVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _input_embed_layer = "patch_embedding"

    def __init__(self, config: HfmmCLIPVisionConfig):
        super().__init__(config)
        self.embeddings = HfmmCLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # transformers' spelling
        self.encoder = HfmmCLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.FloatTensor | None = None, **kwargs) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
            Images from the model's image processor.
        """
        if pixel_values is None:
            raise ValueError("`pixel_values` are required.")
        hidden_states = self.pre_layrnorm(self.embeddings(pixel_values))  # (B, K+N, W)
        last_hidden_state = self.encoder(hidden_states, **kwargs).last_hidden_state
        if self.config.global_average_pool:  # NeMo: mean over every token, after the final LayerNorm
            pooled_output = self.post_layernorm(last_hidden_state).mean(dim=1)
        else:
            pooled_output = self.post_layernorm(last_hidden_state[:, 0])
        return BaseModelOutputWithPooling(last_hidden_state=last_hidden_state, pooler_output=pooled_output)


class HfmmConvNextVisionModel(HfmmCLIPPreTrainedModel):
    """A timm ConvNeXt trunk as OpenCLIP's `TimmModel` builds it: classifier removed, average pool + head norm."""

    config: HfmmConvNextVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["ConvNeXtStage"]
    _can_record_outputs = {}

    def __init__(self, config: HfmmConvNextVisionConfig):
        super().__init__(config)
        import timm  # only ConvNeXt towers need timm

        kwargs = dict(config.timm_model_kwargs or {})
        self.trunk = timm.create_model(
            config.timm_model_name, pretrained=False, drop_path_rate=config.drop_path_rate, **kwargs
        )
        self.trunk.reset_classifier(0)
        if self.trunk.num_features != config.hidden_size:
            raise ValueError(
                f"`hidden_size`={config.hidden_size} does not match {config.timm_model_name}'s "
                f"{self.trunk.num_features} features."
            )
        self.post_init()

    def forward(self, pixel_values: torch.FloatTensor | None = None, **kwargs) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images from the model's image processor.
        """
        if pixel_values is None:
            raise ValueError("`pixel_values` are required.")
        features = self.trunk.forward_features(pixel_values.to(self.trunk.stem[0].weight.dtype))  # (B, C, h, w)
        pooled_output = self.trunk.forward_head(features, pre_logits=True)  # (B, C)
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=pooled_output)


VISION_TOWERS = {
    HfmmCLIPVisionConfig.model_type: HfmmCLIPVisionModel,
    HfmmConvNextVisionConfig.model_type: HfmmConvNextVisionModel,
}


class HfmmMLPProjection(nn.Module):
    """OpenCLIP's `timm_proj: mlp` head: Linear (bias) -> GELU -> Linear (no bias), hidden width 2 x output."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 2 * out_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * out_features, out_features, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


def build_projection(projection_type: str, in_features: int, out_features: int) -> nn.Module:
    if projection_type == "mlp":
        return HfmmMLPProjection(in_features, out_features)
    return nn.Linear(in_features, out_features, bias=False)


def _normalize(features: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows, in the dtype of `features`."""
    return nn.functional.normalize(features, dim=-1).to(features.dtype)


class HfmmCLIPModel(HfmmCLIPPreTrainedModel):
    """CLIP dual encoder with transformers' `CLIPModel` API and OpenCLIP's numerics."""

    config: HfmmCLIPConfig

    def __init__(self, config: HfmmCLIPConfig):
        super().__init__(config)
        vision_config, text_config = config.vision_config, config.text_config
        self.text_model = HfmmCLIPTextModel._from_config(text_config)
        self.vision_model = VISION_TOWERS[vision_config.model_type]._from_config(vision_config)
        self.visual_projection = build_projection(
            vision_config.projection_type, vision_config.hidden_size, config.projection_dim
        )
        self.text_projection = nn.Linear(text_config.hidden_size, config.projection_dim, bias=False)
        # Shape (1,), not (): FSDP2 refuses 0-dim parameters. Clamp it after the optimizer step, not here.
        self.logit_scale = nn.Parameter(torch.full((1,), config.logit_scale_init_value))
        self.logit_bias = None
        if config.logit_bias_init_value is not None:
            self.logit_bias = nn.Parameter(torch.full((1,), config.logit_bias_init_value))
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers records one Auto class per class in `auto_map`; remote-code users of the zero-shot pipeline
        # need `AutoModelForZeroShotImageClassification` too.
        if self._auto_class is not None:
            zero_shot = {"AutoModelForZeroShotImageClassification": f"modeling_clip.{type(self).__name__}"}
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **zero_shot}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding, as `CLIPTextModelWithProjection`'s (accelerate's FSDP2 and `resize_token_embeddings`
        ask every model for it; transformers cannot infer it through the two towers)."""
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.text_model.set_input_embeddings(value)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text tower outputs whose `pooler_output` is the projected (unnormalised) text embedding."""
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, return_dict=True, **kwargs
        )
        text_outputs.pooler_output = self.text_projection(text_outputs.pooler_output)  # (B, E)
        return text_outputs

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """Image tower outputs whose `pooler_output` is the projected (unnormalised) image embedding."""
        vision_outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        vision_outputs.pooler_output = self.visual_projection(vision_outputs.pooler_output)  # (B, E)
        return vision_outputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        return_logits: bool = True,
        **kwargs,
    ) -> HfmmCLIPOutput:
        r"""
        return_loss (`bool`, *optional*):
            Whether to return the (untiled, single-process) contrastive loss of the batch; training uses
            `hfmm.losses` through `hfmm.training.CLIPTrainer` instead.
        return_logits (`bool`, *optional*, defaults to `True`):
            Whether to compute the `(image_batch_size, text_batch_size)` logits; the tiled training loss needs only
            the embeddings and `logit_scale`, so it passes `False`.
        """
        vision_outputs = self.get_image_features(pixel_values=pixel_values, **kwargs)
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        # Under autocast the norm runs in fp32 and would promote the embeddings; they keep the projection's dtype
        # (bf16 in mixed precision), so the loss gathers and reads half the bytes and does its own math in fp32.
        image_embeds = _normalize(vision_outputs.pooler_output)  # (Bi, E)
        text_embeds = _normalize(text_outputs.pooler_output)  # (Bt, E)
        logit_scale = self.logit_scale.exp()
        logits_per_text, loss = None, None
        if return_logits or return_loss:
            logits_per_text = logit_scale * text_embeds @ image_embeds.t()  # (Bt, Bi)
            if self.logit_bias is not None:
                logits_per_text = logits_per_text + self.logit_bias
            loss = self.contrastive_loss(logits_per_text) if return_loss else None
        return HfmmCLIPOutput(
            loss=loss,
            logits_per_image=logits_per_text.t() if logits_per_text is not None else None,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            logit_scale=logit_scale,
            logit_bias=self.logit_bias,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    @staticmethod
    def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over a square batch of matching pairs."""
        labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
        ce = nn.functional.cross_entropy
        return (ce(logits_per_text, labels) + ce(logits_per_text.t(), labels)) / 2


class HfmmSigLIPModel(HfmmCLIPModel):
    """[`HfmmCLIPModel`] trained with the sigmoid loss; registered as `hfmm_siglip` so pipelines use a sigmoid."""

    config: HfmmSigLIPConfig

    @staticmethod
    def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
        """Sigmoid loss summed over all pairs, divided by the batch size (OpenCLIP's `SigLipLoss`)."""
        signs = 2 * torch.eye(logits_per_text.shape[0], device=logits_per_text.device) - 1
        return -nn.functional.logsigmoid(signs * logits_per_text).sum() / logits_per_text.shape[0]


__all__ = [
    "HfmmCLIPModel",
    "HfmmCLIPOutput",
    "HfmmCLIPPreTrainedModel",
    "HfmmCLIPTextModel",
    "HfmmCLIPVisionModel",
    "HfmmConvNextVisionModel",
    "HfmmSigLIPModel",
]
