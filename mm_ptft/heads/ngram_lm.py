"""Word n-gram language models for CTC beam search: an ARPA writer (orders 1-3, absolute discounting with
Katz-style backoff weights so every context's distribution sums to one), an ARPA reader/scorer, and the
checks that an LM file fits a CTC character vocabulary. ``kenlm``'s ``lmplz`` is not on PyPI; this writer
stands in for it, and flashlight (torchaudio's ``ctc_decoder``) reads its files like KenLM's."""
from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SPECIAL = (BOS, EOS, UNK)
log = logging.getLogger("mm_ptft")
NEG_INF_LOG10 = -99.0  # ARPA convention for log10(0), used for <s> (never predicted)


@dataclass
class NGramLM:
    """log10 probabilities and backoff weights by n-gram tuple; ``order`` the longest n."""

    order: int
    logp: dict[tuple[str, ...], float]
    backoff: dict[tuple[str, ...], float]

    def words(self) -> list[str]:
        return sorted(g[0] for g in self.logp if len(g) == 1 and g[0] not in SPECIAL)

    def log10_prob(self, word: str, context: Sequence[str]) -> float:
        """log10 P(word | context) with backoff (unknown words score as ``<unk>``)."""
        word = word if (word,) in self.logp else UNK
        ctx = tuple(c if (c,) in self.logp else UNK for c in context)[-(self.order - 1):] if self.order > 1 else ()
        penalty = 0.0
        while True:
            gram = ctx + (word,)
            if gram in self.logp:
                return penalty + self.logp[gram]
            penalty += self.backoff.get(ctx, 0.0)
            ctx = ctx[1:]

    def sentence_log10(self, words: Sequence[str]) -> float:
        """log10 P(words </s> | <s>) (what KenLM's ``Model.score(s, bos=True, eos=True)`` returns)."""
        hist, total = [BOS], 0.0
        for w in [*words, EOS]:
            total += self.log10_prob(w, hist)
            hist.append(w)
        return total


def estimate(sentences: Iterable[Sequence[str]], order: int = 3, discount: float = 0.5) -> NGramLM:
    """Absolute discounting with backoff. Unigrams: add-one over the words, ``</s>`` and ``<unk>``.
    Order k>1: P(w|h) = (c(h w) - D) / c(h ·) for seen h w; the left-over mass goes to the lower order over the
    unseen continuations, alpha(h) = (1 - Σ_seen P(w|h)) / (1 - Σ_seen P_lower(w|h'))."""
    if not 1 <= order <= 3:
        raise ValueError(f"order={order}: the built-in ARPA writer supports orders 1-3")
    if not 0 < discount < 1:
        raise ValueError(f"discount={discount}: must lie in (0, 1)")
    counts: list[Counter] = [Counter() for _ in range(order + 1)]  # counts[k][gram of length k]
    n_sent = 0
    for s in sentences:
        toks = [BOS, *s, EOS]
        n_sent += 1
        for k in range(1, order + 1):
            for i in range(max(1, k - 1), len(toks)):  # unigrams skip <s>; higher orders start at <s>
                counts[k][tuple(toks[i - k + 1:i + 1])] += 1
    if not n_sent or not counts[1]:
        raise ValueError("no sentences to estimate a language model from")
    lm = NGramLM(order, {}, {})
    vocab = [w for (w,) in counts[1]] + [UNK]
    total = sum(counts[1].values()) + len(vocab)
    for w in vocab:
        lm.logp[(w,)] = math.log10((counts[1][(w,)] + 1) / total)
    lm.logp[(BOS,)] = NEG_INF_LOG10
    for k in range(2, order + 1):
        _add_order(lm, counts[k], discount)
    return lm


def _add_order(lm: NGramLM, grams: Counter, discount: float) -> None:
    """Discounted order-k probabilities, then each context's backoff weight (computed before adding them)."""
    by_ctx: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for g, c in grams.items():
        by_ctx[g[:-1]].append((g[-1], c))
    new: dict[tuple[str, ...], float] = {}
    for ctx, conts in by_ctx.items():
        n = sum(c for _, c in conts)
        seen = sum((c - discount) / n for _, c in conts)
        lower = sum(10 ** lm.log10_prob(w, ctx[1:]) for w, _ in conts)
        if ctx not in lm.logp:
            raise AssertionError(f"context {ctx} missing from the lower order")  # prefixes are always counted
        lm.backoff[ctx] = math.log10((1 - seen) / (1 - lower))
        new.update({ctx + (w,): math.log10((c - discount) / n) for w, c in conts})
    lm.logp.update(new)


def write_arpa(lm: NGramLM, path: str | Path) -> Path:
    """``lm`` as an ARPA file (log10 probabilities, backoff weights on every context)."""
    path = Path(path)
    by_order = [sorted(g for g in lm.logp if len(g) == k) for k in range(1, lm.order + 1)]
    lines = ["\\data\\", *(f"ngram {k + 1}={len(gs)}" for k, gs in enumerate(by_order)), ""]
    for k, gs in enumerate(by_order, 1):
        lines.append(f"\\{k}-grams:")
        for g in gs:
            row = f"{lm.logp[g]:.6f}\t{' '.join(g)}"
            if k < lm.order and g in lm.backoff:
                row += f"\t{lm.backoff[g]:.6f}"
            lines.append(row)
        lines.append("")
    lines.append("\\end\\")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")  # renamed when complete: never a half-written LM under its name
    part.write_text("\n".join(lines) + "\n", encoding="utf-8")
    part.replace(path)
    return path


def read_arpa(path: str | Path) -> NGramLM:
    """Parse an ARPA file (ours or KenLM's/SRILM's); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"language model {path} does not exist")
    lm, k = NGramLM(0, {}, {}), 0
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("ngram ") or line == "\\data\\":
            continue
        if line == "\\end\\":
            break
        if line.startswith("\\") and line.endswith("-grams:"):
            k = int(line[1:].split("-")[0])
            lm.order = max(lm.order, k)
            continue
        parts = line.split()
        if k == 0 or len(parts) not in (k + 1, k + 2):
            raise ValueError(f"{path}:{no}: not an ARPA {k}-gram line: {line[:80]!r}")
        gram = tuple(parts[1:k + 1])
        lm.logp[gram] = float(parts[0])
        if len(parts) == k + 2:
            lm.backoff[gram] = float(parts[-1])
    if not lm.logp:
        raise ValueError(f"{path}: no n-grams found; is it an ARPA file?")
    return lm


def is_arpa(path: str | Path) -> bool:
    """Whether ``path`` is an ARPA text file (its ``\\data\\`` header near the start), not a KenLM binary."""
    with open(path, "rb") as f:
        return b"\\data\\" in f.read(4096)


def lm_words(path: str | Path) -> list[str]:
    """The words of an ARPA LM: its unigrams less ``<s> </s> <unk>``, read without loading the higher orders
    (an LM of millions of n-grams lists its words in seconds). KenLM binary files cannot list theirs."""
    words, in_unigrams = [], False
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif in_unigrams and (line.startswith("\\") or not line):
                break
            elif in_unigrams:
                parts = line.split()
                if len(parts) not in (2, 3):
                    raise ValueError(f"{path}:{no}: not an ARPA 1-gram line: {line[:80]!r}")
                words.append(parts[1])
    if not in_unigrams:
        raise ValueError(f"{path}: no \\1-grams: section; is it an ARPA file?")
    return sorted(set(words) - set(SPECIAL))


#: the share of an LM's (or lexicon's) words that may use characters outside the CTC vocabulary before it is
#: refused (below it they are skipped and counted in the log), as the recipe allows for training transcripts
MAX_UNSPELLABLE = 0.05


def spellable(words: Sequence[str], chars: Iterable[str], where: str,
              max_unspellable: float = MAX_UNSPELLABLE) -> list[str]:
    """The ``words`` spellable with the CTC characters ``chars``. A few that are not (a stray digit or symbol in
    an LM built from outside text) are skipped and logged; more than ``max_unspellable`` of them means the LM
    and the acoustic model normalise text differently (case, punctuation), which is an error naming both."""
    chars = set(chars)
    if not words:
        raise ValueError(f"{where}: no words (an empty language model or lexicon)")
    bad = [w for w in words if not set(w) <= chars]
    if len(bad) > max_unspellable * len(words):
        missing = sorted({c for w in bad for c in w} - chars)
        raise ValueError(f"{where}: {len(bad)} of its {len(words)} words use characters outside the CTC vocabulary "
                         f"{missing[:10]} (e.g. {bad[:3]}); build the LM from transcripts normalised like the "
                         f"training data (data.lowercase / data.strip_punctuation), e.g. with mm-ptft build-lm")
    if bad:
        log.warning("%s: skipped %d of %d words with characters outside the CTC vocabulary (e.g. %s)", where,
                    len(bad), len(words), bad[:3])
    return [w for w in words if set(w) <= chars]


def check_lexicon_in_lm(lexicon: Sequence[str], lm: Sequence[str], where: str) -> None:
    """A lexicon given beside an ARPA LM: its words that the LM lacks score as ``<unk>`` (logged); none in common
    means the two come from different texts or normalisations (an error)."""
    known = set(lm)
    missing = [w for w in lexicon if w not in known]
    if len(missing) == len(lexicon):
        raise ValueError(f"{where}: none of the lexicon's {len(lexicon)} words is in the language model (e.g. "
                         f"{missing[:3]} vs the LM's {sorted(known)[:3]}); build both from the same normalised text")
    if missing:
        log.warning("%s: %d of the lexicon's %d words are not in the language model and score as <unk> (e.g. %s)",
                    where, len(missing), len(lexicon), missing[:3])


def build_lm(texts: Iterable[str], out: str | Path, order: int = 3, discount: float = 0.5) -> Path:
    """An ARPA file from (already normalised) transcripts, one sentence per text, words split on spaces (empty
    texts skipped). Orders 2-3: KenLM, which flashlight's decoder loads the file with, refuses unigram models."""
    if order not in (2, 3):
        raise ValueError(f"order={order}: build an order 2 or 3 model (KenLM, which the CTC decoder loads it with, "
                         f"needs at least bigrams; the built-in writer stops at trigrams)")
    return write_arpa(estimate((t.split() for t in texts if t.strip()), order, discount), out)
