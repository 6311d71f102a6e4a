"""HfmmCLIPTokenizer gives OpenCLIP's token ids (`open_clip.get_tokenizer("ViT-B-32")`)."""

import random

import pytest
import torch

from hfmm.models.clip.processing_clip import HfmmCLIPTokenizer, clean_text

open_clip = pytest.importorskip("open_clip")

FRAGMENTS = {
    "ascii": [
        "a photo of a dog",
        "The Quick Brown Fox",
        "HELLO",
        "it's",
        "we're",
        "I'LL",
        "she'd",
        "they've",
        "x",
        "42",
    ],
    "punctuation": [
        "!",
        "!!",
        "?!",
        "...",
        "(",
        ")",
        "[note]",
        "#tag",
        "@user",
        "a-b_c",
        "50%",
        "$3.14",
        "1,000",
        "--",
    ],
    "html": [
        "&amp;",
        "&lt;b&gt;",
        "&quot;hi&quot;",
        "&#39;",
        "&nbsp;",
        "&eacute;",
        "&amp;amp;",
        "&#128512;",
        "&#x301;",
    ],
    "accents": ["café", "naïve", "résumé", "Ångström", "e\u0301", "Ñandú", "crème brûlée", "İstanbul", "STRASSE ß"],
    "emoji": ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "🐱🐶", "✨"],
    "cjk": ["猫が好き", "中文字符", "漢字", "一只猫"],
    "kana": ["カタカナ", "ひらがな", "ｶﾀｶﾅ", "ラーメン"],
    "hangul": ["한국어", "\u1100\u1161\u11a8", "안녕하세요"],
    "arabic": ["مرحبا بالعالم", "كِتَابٌ", "١٢٣"],
    "devanagari": ["नमस्ते दुनिया", "हिन्दी", "१२३"],
    "other_scripts": ["ΟΔΟΣ σοφία", "Привет мир", "שלום", "ไทย", "ǅemal"],
    "fullwidth": ["ＡＢＣ１２３！", "Ｈｅｌｌｏ", "（ｘ）"],
    "ligatures": ["ﬁsh", "ﬂower", "ﬀ", "Ĳ"],
    "quotes": ["“quoted”", "‘single’", "don’t", "«guillemets»", "„low“"],
    "mojibake": ["â€™", "Ã©", "cafÃ©", "â€œhelloâ€\x9d", "Ã¢â‚¬â„¢"],
    "control": ["\x00", "\x07", "\u200b", "\u200d", "\ufeff", "\t", "\n", "\r\n", "\x1c", "\x85", "\xa0", "\u3000"],
    "specials": ["<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>", "<START_OF_TEXT>", "</w>"],
    "quirks": ["'ſ", "<ſtart_of_text>", "a\u0345b", "!\u0345!"],  # OpenCLIP's IGNORECASE oddities
}
SEPARATORS = [" ", " ", " ", "", "  ", "\n", "\t"]
EDGE_CASES = [
    "",
    " ",
    "\n\t ",
    "!",
    "!!!!",
    "a" * 300,
    "word " * 100,  # truncated: 75 tokens, then EOT
    "🐱" * 80,
    "<start_of_text>",
    "<end_of_text>",
    "a <start_of_text> b <end_of_text> c",
    "<start_of_text><end_of_text>",
    "x(<end_of_text>",  # glued to punctuation: not a special token in OpenCLIP
    "'<start_of_text>",
    "!!<end_of_text>!!",
    "<end_of_text>(<end_of_text>",
    "abc<end_of_text>",
    "1<end_of_text>",
    "&lt;start_of_text&gt; hi",
    "<b>e&#x301;</b>",
]


def corpus(count: int = 1500, seed: int = 0) -> list[str]:
    """`count` varied strings (deterministic): random mixes of every fragment family, plus edge cases."""
    rng = random.Random(seed)
    families = list(FRAGMENTS)
    texts = list(EDGE_CASES)
    while len(texts) < count:
        parts = []
        for _ in range(rng.randint(1, 12)):
            family = rng.choice(families)
            # special tokens glued to anything are covered by EDGE_CASES; here a space separates them
            separator = " " if family == "specials" else rng.choice(SEPARATORS)
            parts += [separator, rng.choice(FRAGMENTS[family])]
        text = "".join(parts)
        texts.append(text.upper() if rng.random() < 0.1 else text)
    return texts


@pytest.fixture(scope="module")
def tokenizer():
    return HfmmCLIPTokenizer.from_package()


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


def openclip_ids(reference, text: str) -> list[int]:
    """OpenCLIP's ids without padding (up to and including EOT)."""
    ids = reference([text])[0].tolist()
    return ids[: ids.index(49407) + 1]


def test_constants(tokenizer):
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 0)
    assert tokenizer.model_max_length == 77


def test_ids_match_openclip(tokenizer, reference):
    texts = corpus()
    ours = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    theirs = reference(texts)
    mismatches = [t for t, a, b in zip(texts, ours, theirs) if not torch.equal(a, b)]
    assert not mismatches, f"{len(mismatches)}/{len(texts)} mismatches, e.g. {mismatches[:5]!r}"
    assert ours.dtype == theirs.dtype == torch.long


def test_truncation_keeps_eot_last(tokenizer):
    ids = tokenizer(["word " * 100], padding="max_length", max_length=77, truncation=True)["input_ids"][0]
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407 and 49407 not in ids[:-1]


def test_every_entry_point_cleans(tokenizer, reference):
    """`__call__` (single, batch, pipeline-style padding), `encode` and `tokenize` all apply OpenCLIP's cleaning."""
    text = "ＡＢＣ &amp; “Hi” ﬁsh x(<end_of_text> Ã©"
    expected = openclip_ids(reference, text)
    assert tokenizer(text)["input_ids"] == expected
    assert tokenizer([text, "a"])["input_ids"][0] == expected
    assert tokenizer.encode(text) == expected
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) == expected[1:-1]
    batch = tokenizer([text, "a dog"], padding=True, return_tensors="pt")  # as the zero-shot pipeline calls it
    assert batch["input_ids"][0].tolist() == expected
    assert batch["input_ids"][1].tolist() == openclip_ids(reference, "a dog") + [0] * (len(expected) - 4)
    assert batch["attention_mask"][1].tolist() == [1] * 4 + [0] * (len(expected) - 4)


def test_pairs_are_cleaned(tokenizer):
    pair = tokenizer("ＡＢＣ &amp;", "“Hi”")["input_ids"]
    assert pair == tokenizer(clean_text("ＡＢＣ &amp;"), clean_text("“Hi”"))["input_ids"]
    assert pair == tokenizer.encode("abc &", '"hi"')


def test_exclamation_mark_is_an_ordinary_token(tokenizer, reference):
    """ "!" pads (id 0) but is not split out of texts as a special token."""
    assert tokenizer("wow!!")["input_ids"] == openclip_ids(reference, "wow!!") == [49406, 2781, 748, 49407]
    assert (
        tokenizer.decode(tokenizer("hi!")["input_ids"], skip_special_tokens=False)
        == "<start_of_text>hi ! <end_of_text>"
    )


def test_save_and_reload(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = HfmmCLIPTokenizer.from_pretrained(tmp_path)
    texts = corpus(200, seed=1)
    kwargs = {"padding": "max_length", "max_length": 77, "truncation": True}
    assert reloaded(texts, **kwargs)["input_ids"] == tokenizer(texts, **kwargs)["input_ids"]
    assert (reloaded.pad_token_id, reloaded.model_max_length) == (0, 77)


def test_from_package_needs_the_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="vocab.json"):
        HfmmCLIPTokenizer.from_package(tmp_path)
