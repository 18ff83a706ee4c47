"""Train, load and fingerprint tokenizers in the PEGASUS vocabulary layout (shared/GSG.md §4).

Layout (pegasus_gsg.data.vocab): `<pad>`=0, `</s>`=1, `<mask_1>`=2, `<mask_2>`=3,
`<unk_2>`..`<unk_102>`=4..104 (reserved, as in google/pegasus-large), `<unk>`=105, ordinary
pieces from 106 on. Any tokenizer directory with that layout -- ours or a downloaded
`google/pegasus-large` -- is accepted by `load_tokenizer`.

The trained tokenizer is a SentencePiece-style Unigram model built with `tokenizers`:

- normaliser: NFKC, CR/CRLF -> LF, every other run of whitespace -> one space. `normalize_text`
  (that, minus a leading space) is what `decode(encode(text))` gives back.
- pre-tokeniser: `\\n` is cut out as a token of its own (SentencePiece's default turns newlines
  into spaces, which would merge the lines of a multi-line summary and break rougeLsum), then
  runs of CJK sentence terminators (after NFKC: `。!?` plus closing quotes/brackets) are cut out
  so that no piece straddles a Chinese sentence boundary, then Metaspace (`▁` marks a preceding
  space; only the text start gets a dummy prefix, so a line start decodes without a space).
- model: Unigram with byte fallback. Chinese alone has thousands of distinct characters, more
  than a small vocabulary holds, and `tokenizers`' Unigram trainer refuses an alphabet bigger
  than the vocabulary (it has no `character_coverage`). So, as SentencePiece does, the most
  frequent characters covering `character_coverage` (0.9995) of the text become pieces -- capped
  at half of the non-reserved vocabulary so multi-character pieces keep room -- and every
  other character is spelled with the 256 byte pieces `<0x00>`..`<0xFF>` (ids 106..361). Nothing
  ever becomes `<unk>`, so decode(encode(x)) == normalize(x) for Chinese too.
- post-processor: `</s>` appended, as PegasusTokenizer does (`add_special_tokens=False` omits it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import Unigram
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pegasus_gsg.data.vocab import (
    EOS_ID,
    EOS_TOKEN,
    FIRST_PIECE_ID,
    MASK1_ID,
    MASK1_TOKEN,
    MASK2_ID,
    MASK2_TOKEN,
    NUM_RESERVED,
    PAD_ID,
    PAD_TOKEN,
    UNK_ID,
    UNK_TOKEN,
)

logger = logging.getLogger(__name__)

RESERVED_UNK_TOKENS = [f"<unk_{i}>" for i in range(2, NUM_RESERVED)]
"""`<unk_2>`..`<unk_102>`, ids 4..104."""
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, MASK1_TOKEN, MASK2_TOKEN, *RESERVED_UNK_TOKENS, UNK_TOKEN]
"""Ids 0..105 in order."""
BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
NEWLINE = "\n"
CHARACTER_COVERAGE = 0.9995
"""Fraction of (normalised) training characters that get a piece of their own (SentencePiece's
default for CJK-heavy corpora); the rest are spelled with byte pieces."""
MODEL_MAX_LENGTH = 1024
"""As google/pegasus-large; the model's position table, not a truncation rule of this module."""

# CJK terminators after NFKC (！？ become !?; 。 stays) and the closing quotes/brackets that stay
# with the ending sentence (shared/GSG.md §1).
_CJK_TERMINATOR_RUN = r"[。!?]+[”’」』)]*"


def _check_layout_ids() -> None:
    assert SPECIAL_TOKENS.index(UNK_TOKEN) == UNK_ID
    assert len(SPECIAL_TOKENS) == FIRST_PIECE_ID


def _empty_tokenizer() -> Tokenizer:
    tok = Tokenizer(Unigram())
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex(r"\r\n?"), NEWLINE),
            normalizers.Replace(Regex(r"[^\S\n]+"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(NEWLINE), behavior="isolated"),
            pre_tokenizers.Split(Regex(_CJK_TERMINATOR_RUN), behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        ]
    )
    tok.decoder = decoders.Sequence(
        [decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")]
    )
    return tok


def _choose_alphabet(texts: list[str], budget: int) -> set[str]:
    """The most frequent characters covering CHARACTER_COVERAGE of `texts`, at most `budget`."""
    counts = Counter(ch for text in texts for ch in text)
    counts.pop(NEWLINE, None)  # always a piece of its own
    total = sum(counts.values())
    kept: set[str] = set()
    covered = 0
    for ch, n in counts.most_common():
        if covered >= CHARACTER_COVERAGE * total or len(kept) >= budget:
            break
        kept.add(ch)
        covered += n
    if total and covered < CHARACTER_COVERAGE * total:
        logger.warning(
            "vocabulary too small for %.2f%% character coverage: %d of %d distinct characters "
            "get a piece (%.2f%% of the text); the rest are spelled with byte pieces",
            100 * CHARACTER_COVERAGE,
            len(kept),
            len(counts),
            100 * covered / total,
        )
    return kept


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a Unigram tokenizer in the PEGASUS layout on `texts`; save it to `out_dir` if given.

    The whole (normalised) corpus is held in memory once: the character-coverage cut needs a
    counting pass before training. `vocab_size` counts every id, the 106 reserved ones and the
    256 byte pieces included.

    Raises:
        ValueError: `vocab_size` leaves fewer than 64 ordinary pieces, or `texts` is empty.
    """
    _check_layout_ids()
    fixed = len(SPECIAL_TOKENS) + len(BYTE_PIECES) + 1  # + the newline piece
    if vocab_size < fixed + 64:
        raise ValueError(
            f"vocab_size must be at least {fixed + 64} (106 reserved ids, 256 byte pieces, the "
            f"newline piece and 64 learnt pieces), got {vocab_size}"
        )
    tok = _empty_tokenizer()
    normalized = [tok.normalizer.normalize_str(t) for t in texts]
    normalized = [t for t in normalized if t.strip()]
    if not normalized:
        raise ValueError("cannot train a tokenizer on no text (every input text was empty)")
    learnt = vocab_size - len(SPECIAL_TOKENS) - len(BYTE_PIECES)
    alphabet = _choose_alphabet(normalized, budget=learnt // 2)
    # Characters without a piece are replaced by a newline for training: the newline is cut out
    # by the pre-tokeniser, so no learnt piece spans a rare character.
    corpus = (
        "".join(ch if ch in alphabet or ch == NEWLINE else NEWLINE for ch in text)
        for text in normalized
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - len(BYTE_PIECES),
        special_tokens=SPECIAL_TOKENS,
        unk_token=UNK_TOKEN,
        initial_alphabet=[NEWLINE],
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(normalized))

    # Re-build the model with the byte pieces at 106..361 and byte fallback switched on.
    trained = json.loads(tok.to_str())["model"]["vocab"]
    assert [p for p, _ in trained[:FIRST_PIECE_ID]] == SPECIAL_TOKENS, "trainer reordered ids"
    lowest = min(score for _, score in trained[FIRST_PIECE_ID:])
    vocab = [
        *[(p, 0.0) for p in SPECIAL_TOKENS],
        *[(p, lowest - 10.0) for p in BYTE_PIECES],
        *[(p, s) for p, s in trained[FIRST_PIECE_ID:] if p not in BYTE_PIECES],
    ]
    tok.model = Unigram(vocab, unk_id=UNK_ID, byte_fallback=True)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, EOS_ID)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        mask_token=MASK2_TOKEN,
        additional_special_tokens=[MASK1_TOKEN, *RESERVED_UNK_TOKENS],
        model_max_length=MODEL_MAX_LENGTH,
    )
    check_layout(hf, "the trained tokenizer")
    if out_dir is not None:
        hf.save_pretrained(str(out_dir))
        logger.info("saved a %d-id tokenizer to %s", len(hf), out_dir)
    return hf


def normalize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """What decode(encode(text)) returns for a tokenizer trained here: the backend's normaliser
    applied, minus one leading space (the Metaspace dummy prefix drops it on decode)."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    normalized = normalizer.normalize_str(text) if normalizer is not None else text
    return normalized.removeprefix(" ")


def check_layout(tokenizer: PreTrainedTokenizerBase, where: str) -> None:
    """Raise ValueError unless `tokenizer` uses the PEGASUS id layout (shared/GSG.md §4)."""
    expected = {
        PAD_TOKEN: PAD_ID,
        EOS_TOKEN: EOS_ID,
        MASK1_TOKEN: MASK1_ID,
        MASK2_TOKEN: MASK2_ID,
        RESERVED_UNK_TOKENS[0]: MASK2_ID + 1,
        RESERVED_UNK_TOKENS[-1]: UNK_ID - 1,
        UNK_TOKEN: UNK_ID,
    }
    wrong = []
    for token, want in expected.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != want:
            wrong.append(f"{token} has id {got}, expected {want}")
    for attr, want in (
        ("pad_token_id", PAD_ID),
        ("eos_token_id", EOS_ID),
        ("unk_token_id", UNK_ID),
    ):
        got_id = getattr(tokenizer, attr, None)
        if got_id != want:
            wrong.append(f"{attr} is {got_id}, expected {want}")
    if len(tokenizer) <= FIRST_PIECE_ID:
        wrong.append(f"only {len(tokenizer)} ids, expected ordinary pieces from {FIRST_PIECE_ID}")
    if wrong:
        raise ValueError(
            f"{where} does not use the PEGASUS vocabulary layout (pad 0, eos 1, <mask_1> 2, "
            f"<mask_2> 3, <unk_2>..<unk_102> 4-104, <unk> 105): " + "; ".join(wrong)
        )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer directory with AutoTokenizer and check its PEGASUS id layout.

    Raises:
        FileNotFoundError: `path` is not a directory.
        ValueError: it holds no loadable tokenizer, or one with another id layout.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path} holds no loadable tokenizer: {err}") from err
    check_layout(tokenizer, f"tokenizer {path}")
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable sha256 (hex) of everything that decides which ids a text gets.

    Covers the backend's model (vocab and scores), normaliser, pre-tokeniser and added tokens,
    plus the special ids; leaves out run-time padding/truncation settings, so setting
    `tokenizer.padding_side` or padding on the backend does not change it. The same directory
    loaded twice gives the same fingerprint.
    """
    parts: dict[str, object] = {
        "special_ids": [
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
            tokenizer.unk_token_id,
            tokenizer.convert_tokens_to_ids(MASK1_TOKEN),
            tokenizer.convert_tokens_to_ids(MASK2_TOKEN),
        ],
        "num_ids": len(tokenizer),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for volatile in ("truncation", "padding", "version"):
            spec.pop(volatile, None)
        parts["backend"] = spec
    else:  # a slow (Python) tokenizer: the vocabulary is what we can see
        parts["vocab"] = sorted(tokenizer.get_vocab().items())
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
