"""`CLIPTrainer`: transformers' `Trainer` with hfmm's exact tiled contrastive loss, and GradCache; its settings are
`CLIPTrainingArguments`.

The loss is taken over the global batch (every rank's embeddings; the mode follows the process group), each rank
returning its share, so DDP/FSDP gradient averaging gives the exact gradients of the global loss.

GradCache (`grad_cache_chunk_size`): the device batch is the contrastive batch; it is embedded in chunks without
gradients, the loss and its gradient w.r.t. the embeddings are taken once, then each chunk is re-embedded with
gradients (same RNG state, so dropout and patch dropout repeat exactly) and back-propagated with that cached
gradient. Gradients equal the full batch's; activation memory is that of one chunk.
"""

import contextlib
import math

import torch
from transformers import TrainerCallback

from hfmm.losses import clip_loss, siglip_loss
from hfmm.training.clip.arguments import CLIPTrainingArguments
from hfmm.training.trainer import HfmmTrainer

MIXED_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class LogitScaleClampCallback(TrainerCallback):
    """Clamps `logit_scale` to [0, log(max_logit_scale)] after each optimizer step (OpenCLIP's rule).

    Clamping inside `forward` would zero its gradient once it saturates; after the step it only bounds the value.
    """

    def __init__(self, max_logit_scale: float = 100.0):
        self.max_log = math.log(max_logit_scale)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.logit_scale.clamp_(0, self.max_log)


class CLIPTrainer(HfmmTrainer):
    """Trainer for hfmm CLIP models; batches are `{"pixel_values", "input_ids"}` dicts.

    Args:
        args (`CLIPTrainingArguments`):
            Transformers' settings plus the loss's: `loss`, `loss_mode`, `loss_tile_size`, `grad_cache_chunk_size`,
            `max_logit_scale`.
        **kwargs:
            Passed to [`~transformers.Trainer`].
    """

    args_class = CLIPTrainingArguments
    # The contrastive loss is a per-batch mean, never normalised by a token count: Trainer divides it by the
    # number of gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(LogitScaleClampCallback(self.args.max_logit_scale))
        self._logit_scale = None

    # --- loss ---------------------------------------------------------------------------------------------------

    def contrastive_loss(self, image_embeds, text_embeds, logit_scale, logit_bias) -> torch.Tensor:
        # Under mixed precision accelerate hands the model's outputs back in fp32, but the embeddings were computed
        # in bf16/fp16: casting them back is exact, and the loss then gathers and holds half the bytes (its tile
        # math is fp32 whatever the input dtype).
        dtype = MIXED_PRECISION_DTYPES.get(self.accelerator.mixed_precision)
        if dtype is not None:
            image_embeds, text_embeds = image_embeds.to(dtype), text_embeds.to(dtype)
        kwargs = {"mode": self.args.loss_mode, "tile_size": self.args.loss_tile_size}
        if self.args.loss == "siglip":
            if logit_bias is None:
                raise ValueError("loss='siglip' needs a model with a logit bias (HfmmSigLIPConfig).")
            return siglip_loss(image_embeds, text_embeds, logit_scale, logit_bias, **kwargs)
        return clip_loss(image_embeds, text_embeds, logit_scale, logit_bias=logit_bias, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], return_logits=False)
        loss = self.contrastive_loss(
            outputs.image_embeds, outputs.text_embeds, outputs.logit_scale, outputs.logit_bias
        )
        self._logit_scale = outputs.logit_scale.detach()
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self._logit_scale is not None and "loss" in logs:
            logs["logit_scale"] = round(self._logit_scale.float().mean().item(), 4)
        super().log(logs, *args, **kwargs)

    # --- GradCache ----------------------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.grad_cache_chunk_size is None:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        chunks = self._chunks(inputs)
        rng_states, image_embeds, text_embeds = [], [], []
        with torch.no_grad():  # 1. embeddings of every chunk, no graph kept
            for chunk in chunks:
                rng_states.append(_RandomState())
                out = model(**chunk, return_logits=False)
                image_embeds.append(out.image_embeds)
                text_embeds.append(out.text_embeds)
            logit_scale, logit_bias = out.logit_scale, out.logit_bias
        # 2. the loss over the whole batch and its gradient w.r.t. the embeddings, scale and bias
        leaves = [torch.cat(image_embeds), torch.cat(text_embeds), logit_scale]
        if logit_bias is not None:
            leaves.append(logit_bias.detach())
        leaves = [leaf.detach().requires_grad_() for leaf in leaves]
        with self.compute_loss_context_manager():
            loss = self.contrastive_loss(*leaves[:3], leaves[3] if len(leaves) > 3 else None)
        scale = 1.0 / self.current_gradient_accumulation_steps
        grads = torch.autograd.grad(loss * scale, leaves, allow_unused=True)
        # 3. re-embed each chunk with gradients and back-propagate the cached gradient through it
        offsets = torch.tensor([0] + [len(c["input_ids"]) for c in chunks]).cumsum(0).tolist()
        for i, chunk in enumerate(chunks):
            sync = contextlib.nullcontext() if i == len(chunks) - 1 else self.accelerator.no_sync(model)
            with sync, rng_states[i].restored(), self.compute_loss_context_manager():
                out = model(**chunk, return_logits=False)
                start, end = offsets[i], offsets[i + 1]
                surrogate = (out.image_embeds * grads[0][start:end]).sum() + (
                    out.text_embeds * grads[1][start:end]
                ).sum()
                if i == len(chunks) - 1:  # scale and bias gradients enter once, in the synchronising backward
                    surrogate = surrogate + _dot(out.logit_scale, grads[2])
                    if out.logit_bias is not None:
                        surrogate = surrogate + _dot(out.logit_bias, grads[3])
                self.accelerator.backward(surrogate)
        self._logit_scale = logit_scale.detach()
        return (loss * scale).detach()

    def _chunks(self, inputs) -> list[dict]:
        size = self.args.grad_cache_chunk_size
        batch = len(inputs["input_ids"])
        if batch % size:
            raise ValueError(f"grad_cache_chunk_size={size} must divide the device batch size {batch}.")
        keys = ("pixel_values", "input_ids")
        return [{k: inputs[k][i : i + size] for k in keys} for i in range(0, batch, size)]


def _dot(value: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    return (value * grad).sum() if grad is not None else value.sum() * 0


class _RandomState:
    """CPU (and current CUDA device) RNG state, restorable so a recomputed forward draws the same randomness."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    @contextlib.contextmanager
    def restored(self):
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda)
            yield
