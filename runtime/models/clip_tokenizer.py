"""CLIP byte-level BPE tokenizer, as `open_clip.get_tokenizer('ViT-H-14-378-quickgelu')` runs it
(spec §2.2): OpenAI's `SimpleTokenizer` with `clean='lower'` and a context of 77 tokens.

The merges are OpenAI's `bpe_simple_vocab_16e6.txt.gz` (MIT, see `runtime/assets/README.md`).
"""

import gzip
import html
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import regex
import torch

from ..errors import PromptError

VOCAB_PATH = Path(__file__).parents[1] / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CONTEXT_LENGTH = 77
SOT, EOT = "<start_of_text>", "<end_of_text>"
_NUM_MERGES = 49152 - 256 - 2  # the file holds more merges than the 49408-token vocabulary uses
_CACHE_LIMIT = 1 << 16  # words kept in the BPE cache; cleared when full

# The special tokens come first so a prompt that spells them out gets the special ids, as in
# open_clip. Letters group into words, every digit is its own word, other symbols run together.
_WORDS = regex.compile(
    rf"{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
    regex.IGNORECASE,
)


def _byte_alphabet() -> list[str]:
    """One printable character per byte value: printable Latin-1 bytes stand for themselves,
    the rest are moved to 256 and up, so BPE never sees whitespace or control characters."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    moved = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(moved)) for b in range(256)]


# ftfy.fix_text changes only non-ASCII text, HTML entities and control characters: printable
# ASCII without '&' passes unchanged (tests/test_gpu_check.py checks it), so such prompts need no
# ftfy, which GPU render nodes often lack.
_PLAIN = regex.compile(r"[ -%'-~]*")


def clean(text: str) -> str:
    """open_clip's 'lower' cleaning: fix mojibake, unescape HTML twice, collapse whitespace,
    lowercase."""
    if not _PLAIN.fullmatch(text):
        text = _ftfy().fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _ftfy():
    try:
        import ftfy
    except ImportError:
        raise PromptError(
            "this prompt has non-ASCII text, '&' or control characters, which CLIP's tokenizer "
            "cleans with the package ftfy; install it with pip install ftfy"
        ) from None
    return ftfy


class ClipTokenizer:
    """Text -> CLIP token ids: `[SOT] + BPE + [EOT]`, zero-padded to 77; a longer prompt is cut
    to 77 tokens and its last token replaced by EOT (silently, as open_clip does)."""

    def __init__(self, vocab_path: str | Path = VOCAB_PATH, context_length: int = CONTEXT_LENGTH):
        lines = gzip.open(vocab_path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
        self.byte_chars = _byte_alphabet()
        # Vocabulary order: the byte characters by code point (printable bytes first), the same
        # with the end-of-word mark, the merges, then the two special tokens.
        chars = sorted(self.byte_chars)
        vocab = [*chars, *(c + "</w>" for c in chars)]
        vocab += ["".join(m) for m in merges] + [SOT, EOT]
        self.ids = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id, self.eot_id = self.ids[SOT], self.ids[EOT]
        self.context_length = context_length
        self._cache: dict[str, list[int]] = {}

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-split word (already mapped to byte characters)."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        unmergeable = len(self.ranks)
        while len(parts) > 1:
            ranks = [self.ranks.get(pair, unmergeable) for pair in pairwise(parts)]
            best = min(range(len(ranks)), key=ranks.__getitem__)
            if ranks[best] == unmergeable:
                break
            first, second = parts[best], parts[best + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.ids[p] for p in parts]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without SOT/EOT and without truncation."""
        ids = []
        for word in _WORDS.findall(clean(text)):
            if word in (SOT, EOT):
                ids.append(self.ids[word])
            else:
                ids += self._bpe("".join(self.byte_chars[b] for b in word.encode("utf-8")))
        return ids

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of each text: [B, 77] int64."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise PromptError("prompts must be a list of strings")
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length - 1] + [self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
