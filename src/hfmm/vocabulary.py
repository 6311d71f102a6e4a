"""New tokens in a language model: one policy for the `<image>` (and `<pad>`) token a NeVA adds to its language
model's vocabulary, wherever hfmm adds it — the LLaVA and NeMo NeVA converters and NeVA stage 1's assembly.

The policy is transformers' LLaVA converter's: the embeddings grow to the new vocabulary padded to a multiple of 64
(never shrink), and every new row is drawn from N(μ, 1e-5·Σ) of the old rows with a fixed seed, so a conversion or an
assembly is reproducible bit for bit. Unlike that converter, new `lm_head` rows are drawn from `lm_head`'s own rows
(it uses the input embeddings' statistics for both), so a new token's logit stays near an average token's. These rows
are a choice, not data: `<image>`'s input row is always replaced by image features, and the padding rows are never
produced by the tokenizer.
"""

import torch

IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"
RESIZE_SEED = 0  # new embedding rows are drawn from this seed
PAD_TO_MULTIPLE_OF = 64  # LLaVA's embedding padding (tensor-core friendly shapes)


def add_image_tokens(tokenizer) -> int:
    """Adds `<image>` (and `<pad>` when the tokenizer has none) as special tokens; returns how many were new."""
    added = tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return added


def rows_like(rows: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` draws from N(μ, 1e-5·Σ), μ and Σ the mean and covariance of `rows` (transformers' LLaVA converter)."""
    rows64 = rows.double()
    mean = rows64.mean(0)
    centered = rows64 - mean
    covariance = 1e-5 * centered.T @ centered / rows.shape[0]  # (hidden, hidden)
    factor, info = torch.linalg.cholesky_ex(covariance)
    if info.item() != 0:  # fewer rows than dimensions, or a degenerate matrix: the mean itself
        return mean.expand(count, -1).to(rows.dtype).clone()
    noise = torch.randn(count, rows.shape[1], generator=generator, dtype=torch.float64)
    return (mean + noise @ factor.T).to(rows.dtype)


def grow_embeddings(model, vocab_size: int) -> tuple[int, int]:
    """Input embeddings and `lm_head` of `model` grown to hold `vocab_size` tokens, padded to a multiple of 64, new
    rows drawn as the module docstring says; never shrinks. Returns the row counts `(old, new)`."""
    old = model.get_input_embeddings().num_embeddings
    if vocab_size <= old:
        return old, old
    model.resize_token_embeddings(vocab_size, pad_to_multiple_of=PAD_TO_MULTIPLE_OF, mean_resizing=False)
    new = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(RESIZE_SEED)
    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        for weight in (embeddings,) if head is embeddings else (embeddings, head):
            weight[old:] = rows_like(weight[:old], new - old, generator)
    return old, new
