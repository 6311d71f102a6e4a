"""What every converter returns."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ConversionResult:
    """
    What a conversion wrote and how it was checked.

    Args:
        dst (`Path`):
            The written folder.
        notes (`list[str]`, *optional*, defaults to `[]`):
            Decisions worth telling the user: where the architecture, activation, preprocessing or tokenizer came
            from, added tokens, skipped checks.
        differences (`dict[str, float]`, *optional*):
            Largest difference from the source implementation per output compared: the `"image"` and `"text"`
            embeddings of a CLIP (relative to the largest reference value when that exceeds 1), the `"logits"` of a
            NeVA. `None` when the conversion was not verified.
        weights (`str`, *optional*):
            The weight layout that was read, for sources that have several (NeMo: e.g. `mp_rank_XX/ (TP=2, PP=1)`).
    """

    dst: Path
    notes: list[str] = field(default_factory=list)
    differences: dict[str, float] | None = None
    weights: str | None = None

    def provenance(self, converter: str, source: str | Path, arguments: Sequence[str] | None) -> dict:
        """The keywords of `write_provenance` that record this conversion in `conversion.json`: the `converter`
        script, its command-line `arguments` (`None` when called as a library), the `source`, the notes and the
        differences."""
        return dict(
            converter=converter, source=source, notes=self.notes, differences=self.differences, arguments=arguments
        )
