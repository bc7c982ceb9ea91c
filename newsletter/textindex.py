"""Text side of matching: tokens, light stemming, acronyms learned from the papers, and a
positional index over the whole collection whose look-ups are memoised per distinct term.

Folding rules, the same for papers and for the user's terms:
- a token is a run of letters and digits, so hyphens and spaces fold ("model-based" = "model
  based") and matches are whole words ("PAC" never hits "space", "RL" never hits "world");
- ordinary words are lower-cased and lightly stemmed (plural, -ing/-ed, British spelling);
- all-caps tokens (RL, LLMs) are also indexed under a case-sensitive acronym key, which is the
  only key an all-caps term looks up;
- a derived form meets the base word the collection uses ("robotics"/"robotic" = "robot",
  "exploration"/"exploratory" = "explore", "curiosity" = "curious"), through a few
  derivational suffixes, and only when that base occurs in some stored paper;
- "reinforcement learning (RL)" in any paper teaches the index that RL = reinforcement learning
  (both ways), and "pre-training" in any paper that it = "pretraining";
- a multi-word term also matches, at half weight, with up to two content words inserted
  ("offline goal-conditioned reinforcement learning"), never across punctuation;
- a two-word term also matches, at a quarter weight, with its words near each other in either
  order ("policy-guided diffusion", "diffusion models ... as policies"): the unordered window
  of Metzler & Croft's sequential dependence model. Not for a term that is one word in
  disguise (an acronym's expansion, a compound the collection hyphenates: "model-based"), and
  these loose matches do not count towards its document frequency (its idf).
Everything here is pure; the `selection` package turns the postings into scores.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from newsletter.models import Paper

_WORD = re.compile(r"[^\W_]+(?:['’]s\b)?")
_HYPHENS = frozenset("-‐‑–")  # ASCII hyphen, Unicode hyphens and the en dash of "A–B" compounds
_ACRONYM = re.compile(r"[A-Z][A-Z0-9]*[A-Z][A-Z0-9]*")  # at least two capitals, no lower case
_PARENS = re.compile(r"\(([A-Za-z][A-Za-z0-9\-]{1,15})\)")
_CLAUSE_END = re.compile(r"[.;:!?()\[\],]")
_MAX_VARIANTS = 16

# BM25F with the textbook parameters (not fitted to our eval set); a title is short and written
# to say what the paper is about, so a title hit counts as TITLE_WEIGHT abstract hits.
K1 = 1.2
B = 0.75
TITLE_WEIGHT = 2.0
# A phrase whose words come in order with up to MAX_SLACK words between them counts as a
# WINDOW_TF occurrence: "offline goal-conditioned reinforcement learning" is about offline RL.
MAX_SLACK = 2
WINDOW_TF = 0.5
# Two words within LOOSE_WINDOW positions (SDM's unordered window for a pair), in any order,
# count as LOOSE_TF of an occurrence: half of an ordered window, as that is half of a phrase.
LOOSE_TF = 0.25
LOOSE_WINDOW = 8
_BREAK = MAX_SLACK + 2
_PUNCT = re.compile(r"[.,;:!?()\[\]{}\"/|]")

# British -ise/-yse spellings become -ize/-yze (every form of a word alike, so no exceptions).
_BRITISH = re.compile(r"(?<=\w{4})(i|y)s(?=(e|es|ed|ing|er|ers|ation|ations)$)")
_BRITISH_OUR = {"behaviour": "behavior", "colour": "color", "favour": "favor", "labour": "labor"}
_VOWELS = frozenset("aeiouy")

_STOPWORDS_TEXT = """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each either etc few
    for from further had has have having how however i if in into is it its itself just like may
    might more most much must no nor not of off on once only or other our out over own per same
    should so some such than that the their them then there these they this those through thus
    to too under until up upon us very via was we were what when where whether which while who
    whom why will with within without would you your"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def stem(word: str) -> str:
    """Light, conservative stemmer for a lower-case word: equal stems mean "same word".

    Only inflection and spelling are folded (plural, -ing/-ed, British spelling), never
    derivation, so "general" and "generative" stay apart.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    word = _BRITISH.sub(lambda m: m.group(1) + "z", word)
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        word = word[:-1]  # approaches -> approache -> (final e) approach
    elif word.endswith("s") and not word.endswith(("us", "ss", "is")):
        word = word[:-1]
    word = _BRITISH_OUR.get(word, word)
    for suffix in ("ing", "ed"):
        base = word[: -len(suffix)]
        if word.endswith(suffix) and len(base) >= 3 and not _VOWELS.isdisjoint(base):
            word = base
            break
    if word.endswith("e") and len(word) >= 4:
        word = word[:-1]  # tune/tuned/tuning and base/based all meet
    if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in _VOWELS:
        word = word[:-1]  # planning -> plan, modelling -> model (and skill -> skil, consistently)
    return word


_STOP_KEYS = frozenset(stem(w) for w in STOPWORDS)

# Derivational suffixes of a stemmed key -> what the base ends in instead. Deliberately few
# (no "-al", "-ive", "-ity"), so "general"/"generative" and "causal"/"cause" stay apart.
_DERIVATIONS = (
    ("ically", ""),
    ("ical", ""),
    ("ic", ""),  # robotic(s) -> robot
    ("atory", ""),  # exploratory -> explor(e)
    ("ation", ""),  # exploration -> explor(e), optimization -> optimiz(e)
    ("ation", "at"),  # simulation -> simulat(e)
    ("ion", ""),  # prediction -> predict
    ("osity", "ous"),  # curiosity -> curious
    ("ment", ""),  # alignment -> align
)
_MIN_BASE = 4


def derivation_bases(key: str) -> tuple[str, ...]:
    """Candidate base keys of a stemmed key by the derivational suffixes above."""
    if not key.isalpha() or not key.islower():
        return ()
    return tuple(
        key[: -len(suffix)] + repl
        for suffix, repl in _DERIVATIONS
        if key.endswith(suffix) and len(key) - len(suffix) + len(repl) >= _MIN_BASE
    )


def derivation_families(vocabulary: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """base key -> the keys of the collection derived from it, for each base the collection
    itself uses ("robot" -> ("robotic",) when both occur)."""
    vocab = set(vocabulary)
    families: dict[str, set[str]] = defaultdict(set)
    for key in vocab:
        for base in derivation_bases(key):
            if base in vocab and base != key:
                families[base].add(key)
    return {base: tuple(sorted(keys)) for base, keys in sorted(families.items())}


class Token(NamedTuple):  # a NamedTuple: millions are made per index build, and cheaply
    start: int
    end: int
    key: str  # lower-cased, stemmed
    acronym: str | None  # case-sensitive key for an all-caps surface ("LLMs" -> "LLM")
    hyphen_before: bool  # glued to the previous token by a hyphen ("based" in "model-based")


def acronym_key(surface: str) -> str | None:
    """The case-sensitive key of an acronym surface, plural "s" dropped; None for other words."""
    if surface.endswith("s") and _ACRONYM.fullmatch(surface[:-1]):
        return surface[:-1]
    return surface if _ACRONYM.fullmatch(surface) else None


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    prev_end = -2
    for m in _WORD.finditer(text):
        start, end = m.span()
        surface = m.group()
        if surface[-2:-1] in ("'", "’"):
            surface, end = surface[:-2], end - 2  # possessive: "RL's" is "RL"
        key, acronym = _keys(surface)
        glued = start == prev_end + 1 and text[prev_end] in _HYPHENS
        tokens.append(Token(start, end, key, acronym, glued))
        prev_end = end
    return tokens


def word_spans(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, hyphen_before) of each token `tokenize` would make, without folding the
    words (for callers that only cut text; `tokenize` is kept apart since the index build
    runs it over every paper)."""
    spans: list[tuple[int, int, bool]] = []
    prev_end = -2
    for m in _WORD.finditer(text):
        start, end = m.span()
        if text[end - 2 : end - 1] in ("'", "’") and end - start > 2:
            end -= 2  # possessive: "RL's" is "RL"
        spans.append((start, end, start == prev_end + 1 and text[prev_end] in _HYPHENS))
        prev_end = end
    return spans


@functools.lru_cache(maxsize=1 << 16)
def _keys(surface: str) -> tuple[str, str | None]:
    """(folded key, acronym key) of one word; cached, since a vocabulary is small and reused."""
    return stem(surface.lower()), acronym_key(surface)


def query_keys(term: str) -> tuple[tuple[str, ...], ...]:
    """Key sequences of a user's term: as typed, and with a two-part hyphenated word joined
    ("pre-training" also as "pretraining")."""
    tokens = tokenize(term)
    keys = tuple(t.acronym or t.key for t in tokens)
    joined = list(keys)
    for i in range(len(tokens) - 1, 0, -1):
        a, b = tokens[i - 1], tokens[i]
        if _two_part(tokens, i) and a.acronym is None and b.acronym is None:
            joined[i - 1 : i + 1] = [
                stem(term[a.start : a.end].lower() + term[b.start : b.end].lower())
            ]
    return (keys, tuple(joined)) if len(joined) < len(keys) else (keys,)


def _two_part(tokens: Sequence[Token], i: int) -> bool:
    """Token i is the second half of a hyphenated pair ("multi-armed", not "state-of-the-art")."""
    glued = tokens[i].hyphen_before and not tokens[i - 1].hyphen_before
    return glued and (i + 1 == len(tokens) or not tokens[i + 1].hyphen_before)


def _spells(letters: str, words: Sequence[str], inner: bool) -> bool:
    """Do `words` spell `letters` by word initials? With `inner`, a word may add later letters
    of its own ("DIstribution" for DI). Stop words may be skipped, content words may not."""
    if not words:
        return not letters
    word, rest = words[0], words[1:]
    if word in STOPWORDS and _spells(letters, rest, inner):
        return True
    if not letters or word[0] != letters[0]:
        return False
    for n in range(len(letters), 0, -1) if inner else (1,):
        if _subsequence(letters[1:n], word[1:]) and _spells(letters[n:], rest, inner):
            return True
    return False


def _subsequence(needle: str, hay: str) -> bool:
    it = iter(hay)
    return all(c in it for c in needle)


def _long_form(short: str, candidate: str) -> str | None:
    """The long form of `short` at the end of `candidate`: by word initials when possible, else
    Schwartz & Hearst (2003), the shortest tail whose letters spell `short` in order."""
    letters = "".join(c.lower() for c in short if c.isalnum())
    words = [(m.start(), m.group().lower()) for m in re.finditer(r"[^\W_]+", candidate)]
    for inner in (False, True):  # pure initials first: "Self-Supervised Learning" for SSL
        for j in range(len(words) - 1, -1, -1):
            tail = [w for _, w in words[j:]]
            if tail[0] not in STOPWORDS and _spells(letters, tail, inner):
                return candidate[words[j][0] :]
    s, l_ = len(letters) - 1, len(candidate) - 1
    while s >= 0:
        c = letters[s]
        while l_ >= 0 and (
            candidate[l_].lower() != c or (s == 0 and l_ > 0 and candidate[l_ - 1].isalnum())
        ):
            l_ -= 1
        if l_ < 0:
            return None
        l_ -= 1
        s -= 1
    start = max(candidate.rfind(" ", 0, l_ + 1), candidate.rfind("-", 0, l_ + 1)) + 1
    return candidate[start:].strip()


def find_definitions(text: str) -> Iterable[tuple[str, tuple[str, ...]]]:
    """Yield (acronym key, expansion keys) for each "long form (ACRONYM)" in `text`."""
    for m in _PARENS.finditer(text):
        short = acronym_key(m.group(1))
        if short is None:
            continue
        before = text[: m.start()]
        clause_start = max((c.end() for c in _CLAUSE_END.finditer(before)), default=0)
        words = before[clause_start:].split()
        max_words = min(len(short) + 5, 2 * len(short))
        long_form = _long_form(short, " ".join(words[-max_words:]))
        if not long_form:
            continue
        keys = tuple(t.acronym or t.key for t in tokenize(long_form))
        if 1 <= len(keys) <= max_words and short not in keys and len(long_form) > len(short):
            yield short, keys


@dataclass(frozen=True, slots=True)
class Postings:
    """One user term over the collection: its idf, the BM25F term-frequency part (in
    [0, K1 + 1)) for each paper that contains it, and the (first, last) positions of each
    occurrence (see `positioned`)."""

    idf: float  # Robertson/Spärck Jones, floored at 0: no weight for a term in half the papers
    tf: dict[int, float]
    spans: dict[int, tuple[tuple[int, int], ...]]
    exact: frozenset[int]  # papers with at least one exact (gap-free) occurrence
    soft_idf: float = 0.0  # log(1 + (N - df + 0.5) / (df + 0.5)): small but never 0 (Lucene)


def soft_idf(n: int, df: int) -> float:
    """BM25 idf as Lucene computes it: a word in most papers weighs little, never nothing, so
    a reader whose own subject is "reinforcement learning" still gets evidence from it."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


class PaperIndex:
    """Positional index over the whole collection, built once, tokenising each paper once (its
    token stream is kept for `surfaces`); term look-ups are memoised."""

    def __init__(
        self,
        papers: tuple[Paper, ...],
        positions: dict[str, dict[int, tuple[int, ...]]],
        title_lens: tuple[int, ...],
        abstract_lens: tuple[int, ...],
        abstract_starts: tuple[int, ...],
        stop_positions: tuple[tuple[int, ...], ...],
        acronyms: dict[str, tuple[tuple[str, ...], ...]],
        compounds: dict[str, tuple[str, str]],
        token_places: tuple[array[int], ...],
        token_spans: tuple[array[int], ...],
        families: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        self.papers = papers
        self.families = families if families is not None else derivation_families(positions)
        # Each paper's token stream, kept from the one tokenisation in `build`: the position of
        # each token (ascending) and its (start, end) offsets in the title, then the abstract.
        self.token_places = token_places
        self.token_spans = token_spans
        self.positions = positions
        self.abstract_starts = abstract_starts
        self.stop_positions = stop_positions
        self.title_lens = title_lens
        self.abstract_lens = abstract_lens
        self.avg_title = max(1.0, sum(title_lens) / max(1, len(papers)))
        self.avg_abstract = max(1.0, sum(abstract_lens) / max(1, len(papers)))
        self.acronyms = acronyms
        self.compounds = compounds
        self._compound_pairs = frozenset(compounds.values())
        self.expansions_by_first: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)
        for short, expansions in sorted(acronyms.items()):
            for exp in expansions:
                self.expansions_by_first[exp[0]].append((exp, short))
        self.id_to_index = {p.id: i for i, p in enumerate(papers)}
        self._cache: dict[str, Postings] = {}
        self._variants: dict[str, tuple[tuple[str, ...], ...]] = {}
        self._vectors: dict[int, dict[str, float]] = {}

    @classmethod
    def build(cls, papers: Sequence[Paper]) -> PaperIndex:
        unique = tuple({p.id: p for p in papers}.values())  # a paper listed on two days counts once
        positions: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        definitions: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
        compounds: dict[str, tuple[str, str]] = {}
        lens: list[tuple[int, int, int]] = []  # title tokens, abstract tokens, abstract start
        stops: list[tuple[int, ...]] = []  # positions of stop words, which windows may not skip
        places: list[array[int]] = []
        spans: list[array[int]] = []
        for i, paper in enumerate(unique):
            title, title_pos, abstract, abstract_pos = _streams(paper)
            start = (title_pos[-1] if title_pos else 0) + _BREAK
            paper_stops = []
            paper_spans = array("I")
            for toks, at in ((title, title_pos), (abstract, abstract_pos)):
                for tok, pos in zip(toks, at, strict=True):
                    positions[tok.key][i].append(pos)
                    if tok.acronym:
                        positions[tok.acronym][i].append(pos)
                    if tok.key in _STOP_KEYS:
                        paper_stops.append(pos)
                    paper_spans.extend((tok.start, tok.end))
            stops.append(tuple(paper_stops))
            places.append(array("I", title_pos + abstract_pos))
            spans.append(paper_spans)
            lens.append((len(title), len(abstract), start))
            _learn_compounds(title, paper.title, compounds)
            _learn_compounds(abstract, paper.abstract, compounds)
            for short, keys in {
                d for t in (paper.title, paper.abstract) for d in find_definitions(t)
            }:
                definitions[short][keys] += 1
        frozen = {k: {i: tuple(p) for i, p in v.items()} for k, v in positions.items()}
        title_lens, abstract_lens, starts = (
            (tuple(col) for col in zip(*lens, strict=True)) if lens else ((), (), ())
        )
        return cls(
            unique,
            frozen,
            title_lens,
            abstract_lens,
            starts,
            tuple(stops),
            _acronym_map(definitions),
            compounds,
            tuple(places),
            tuple(spans),
            derivation_families(frozen),
        )

    # ---- term look-up --------------------------------------------------------------------

    def kept_terms(self) -> int:
        """How many terms' look-ups (`lookup`, `variants`) it keeps: one per distinct term
        ever asked for, so they grow with the subscribers' vocabulary."""
        return len(self._cache) + len(self._variants)

    def forget_terms(self) -> None:
        """Drop the kept look-ups (the same term gives the same result when asked again)."""
        self._cache.clear()
        self._variants.clear()

    def variants(self, term: str) -> tuple[tuple[str, ...], ...]:
        """Every key sequence that counts as `term`: acronyms expanded or contracted, hyphenated
        compounds joined or split, derived forms and their base. Sorted, so matching is deterministic."""
        cached = self._variants.get(term)
        if cached is None:
            cached = self._variants[term] = self._find_variants(term)
        return cached

    def _find_variants(self, term: str) -> tuple[tuple[str, ...], ...]:
        found = set(query_keys(term))
        if not any(found):
            return ()
        frontier = list(found)
        while frontier and len(found) < _MAX_VARIANTS:
            nxt = []
            for v in frontier:
                for alt in self._rewrites(v):
                    if alt not in found and len(found) < _MAX_VARIANTS:
                        found.add(alt)
                        nxt.append(alt)
            frontier = nxt
        return tuple(sorted(found))

    def _rewrites(self, keys: tuple[str, ...]) -> Iterable[tuple[str, ...]]:
        for i, key in enumerate(keys):
            for exp in self.acronyms.get(key, ()):
                yield keys[:i] + exp + keys[i + 1 :]
            if key in self.compounds:
                yield keys[:i] + self.compounds[key] + keys[i + 1 :]
            for exp, short in self.expansions_by_first.get(key, ()):
                if keys[i : i + len(exp)] == exp:
                    yield (*keys[:i], short, *keys[i + len(exp) :])
            for alt in self.related(key):
                yield (*keys[:i], alt, *keys[i + 1 :])

    def related(self, key: str) -> tuple[str, ...]:
        """The keys of the collection that share a derivational base with `key` (not itself)."""
        found: set[str] = set()
        for base in (key, *derivation_bases(key)):
            if base in self.positions:
                found.add(base)
            found.update(self.families.get(base, ()))
        found.discard(key)
        return tuple(sorted(found))

    def lookup(self, term: str) -> Postings:
        """Occurrences of one user term over the whole collection (memoised per distinct term)."""
        cached = self._cache.get(term)
        if cached is not None:
            return cached
        merged: dict[int, dict[tuple[int, int], bool]] = defaultdict(dict)
        variants = self.variants(term)
        for variant in variants:
            for i, found in self._match(variant).items():
                for span, exact in found:
                    merged[i][span] = merged[i].get(span, False) or exact
        n, df = len(self.papers), len(merged)
        loose: dict[int, list[tuple[int, int]]] = defaultdict(list)
        # Loose pairs only refine a phrase the collection uses: a pair that never occurs as a
        # phrase would get the idf of a term found nowhere, and junk pairs of a description
        # ("proposing yet") would count as its rarest evidence.
        for variant in variants if df and self._loose_ok(variants) else ():
            if len(variant) == 2:
                for i, pairs in self._loose(variant).items():
                    taken = merged.get(i, {})  # the pair's own phrase occurrences count once
                    loose[i] += [
                        pair
                        for pair in pairs
                        if not any(a <= pair[0] <= b or a <= pair[1] <= b for a, b in taken)
                    ]
        saturated: dict[int, float] = {}
        spans: dict[int, tuple[tuple[int, int], ...]] = {}
        exact_in: set[int] = set()
        for i in sorted(merged.keys() | loose.keys()):
            words = {(p, p) for pair in loose.get(i, ()) for p in pair}
            spans[i] = tuple(sorted({*merged.get(i, {}), *words}))
            tf = [0.0, 0.0]  # title, abstract
            for span, exact in merged.get(i, {}).items():
                tf[not self.in_title(i, span)] += 1.0 if exact else WINDOW_TF
            for span in set(loose.get(i, ())):
                tf[not self.in_title(i, span)] += LOOSE_TF
            saturated[i] = self._saturate(i, tf[0], tf[1])
            if any(merged.get(i, {}).values()):
                exact_in.add(i)
        idf = max(0.0, math.log((n - df + 0.5) / (df + 0.5)))
        result = Postings(idf, saturated, spans, frozenset(exact_in), soft_idf(n, df))
        self._cache[term] = result
        return result

    def _saturate(self, i: int, tf_title: float, tf_abstract: float) -> float:
        """BM25F term-frequency part: per-field length normalisation, a boosted title, one
        saturation over the sum (Robertson & Zaragoza 2009), so the result is below K1 + 1."""
        tf = TITLE_WEIGHT * tf_title / (1 - B + B * self.title_lens[i] / self.avg_title)
        tf += tf_abstract / (1 - B + B * self.abstract_lens[i] / self.avg_abstract)
        return tf * (K1 + 1) / (tf + K1)

    def vector(self, i: int) -> dict[str, float]:
        """Paper i as a unit-length tf-idf vector over its content keys (title words count
        TITLE_WEIGHT times): what a reader's votes are compared with."""
        cached = self._vectors.get(i)
        if cached is None:
            paper, n = self.papers[i], len(self.papers)
            counts: dict[str, float] = {}
            for text, weight in ((paper.title, TITLE_WEIGHT), (paper.abstract, 1.0)):
                for tok in tokenize(text):
                    key = tok.acronym or tok.key
                    if len(key) > 2 and key not in _STOP_KEYS:
                        counts[key] = counts.get(key, 0.0) + weight
            raw = {k: c * soft_idf(n, len(self.positions.get(k, ()))) for k, c in counts.items()}
            norm = math.sqrt(sum(w * w for w in raw.values())) or 1.0
            cached = self._vectors[i] = {k: w / norm for k, w in raw.items()}
        return cached

    def in_title(self, paper_index: int, span: tuple[int, int]) -> bool:
        return span[0] < self.abstract_starts[paper_index]

    def _match(self, keys: tuple[str, ...]) -> dict[int, list[tuple[tuple[int, int], bool]]]:
        """Papers where `keys` occur in order, as (span, exact) pairs: exact when adjacent,
        else with at most MAX_SLACK other words in between ("offline goal-conditioned RL")."""
        lists = [self.positions.get(k) for k in keys]
        if not all(lists):
            return {}
        postings = [d for d in lists if d is not None]
        out: dict[int, list[tuple[tuple[int, int], bool]]] = {}
        for i in min(postings, key=len):
            if all(i in d for d in postings):
                found = [
                    m for p in postings[0][i] if (m := self._window(i, p, postings)) is not None
                ]
                if found:
                    out[i] = found
        return out

    def _loose_ok(self, variants: tuple[tuple[str, ...], ...]) -> bool:
        """Whether a term's words may match loosely: not when it is one word in disguise (an
        acronym, a compound the collection writes hyphenated: "RL", "model-based")."""
        return all(len(v) > 1 and v not in self._compound_pairs for v in variants)

    def _loose(self, keys: tuple[str, ...]) -> dict[int, list[tuple[int, int]]]:
        """Papers where the two `keys` occur within LOOSE_WINDOW positions of each other in
        one clause of one field, in either order: (first, last) position of each occurrence of
        the first key with the second one nearest it."""
        first, second = (self.positions.get(k) for k in keys)
        if not first or not second:
            return {}
        out: dict[int, list[tuple[int, int]]] = {}
        for i in sorted(first.keys() & second.keys()):
            theirs, places = second[i], self.token_places[i]
            found = []
            for p in first[i]:
                k = bisect.bisect_left(theirs, p)
                near = [
                    q
                    for q in theirs[max(0, k - 1) : k + 2]
                    if q != p
                    and abs(q - p) <= LOOSE_WINDOW
                    and _unbroken(places, min(p, q), max(p, q))
                ]
                if near:
                    q = min(near, key=lambda q: (abs(q - p), q))
                    found.append((min(p, q), max(p, q)))
            if found:
                out[i] = found
        return out

    def _window(
        self, i: int, start: int, postings: list[dict[int, tuple[int, ...]]]
    ) -> tuple[tuple[int, int], bool] | None:
        pos, slack = start, 0
        for later in postings[1:]:
            positions = later[i]
            k = bisect.bisect_right(positions, pos)
            if k == len(positions) or positions[k] - pos - 1 + slack > MAX_SLACK:
                return None
            slack += positions[k] - pos - 1
            if positions[k] > pos + 1 and self._stop_between(i, pos, positions[k]):
                return None  # "model that is based" is not "model-based"
            pos = positions[k]
        return (start, pos), slack == 0

    def _stop_between(self, i: int, after: int, before: int) -> bool:
        stops = self.stop_positions[i]
        k = bisect.bisect_right(stops, after)
        return k < len(stops) and stops[k] < before

    def surfaces(self, paper_index: int, spans: Iterable[tuple[int, int]]) -> tuple[str, ...]:
        """The exact text of each span, from the token stream kept at build time."""
        paper = self.papers[paper_index]
        places, offsets = self.token_places[paper_index], self.token_spans[paper_index]
        in_title = self.title_lens[paper_index]
        out = []
        for first, last in spans:
            k, m = bisect.bisect_left(places, first), bisect.bisect_left(places, last)
            text = paper.title if k < in_title else paper.abstract
            out.append(text[offsets[2 * k] : offsets[2 * m + 1]])
        return tuple(out)


def _unbroken(places: array[int], first: int, last: int) -> bool:
    """Whether no punctuation or field boundary lies between positions `first` and `last`:
    positions jump by _BREAK there, so the tokens between would be fewer than the gap."""
    return bisect.bisect_left(places, last) - bisect.bisect_left(places, first) == last - first


def _streams(paper: Paper) -> tuple[list[Token], list[int], list[Token], list[int]]:
    """The one tokenisation of a paper: title tokens and positions, abstract tokens and
    positions, numbered as `positioned` describes."""
    title, abstract = tokenize(paper.title), tokenize(paper.abstract)
    title_pos = _positions(title, paper.title, 0)
    start = (title_pos[-1] if title_pos else 0) + _BREAK
    return title, title_pos, abstract, _positions(abstract, paper.abstract, start)


def positioned(paper: Paper) -> list[tuple[int, Token, bool]]:
    """(position, token, in title?) for the title then the abstract, as the index numbers them:
    positions jump by more than MAX_SLACK at punctuation and between the fields, so neither a
    phrase nor a window ever spans "dynamics. The model" or runs from title into abstract."""
    title, title_pos, abstract, abstract_pos = _streams(paper)
    return [(p, t, True) for p, t in zip(title_pos, title, strict=True)] + [
        (p, t, False) for p, t in zip(abstract_pos, abstract, strict=True)
    ]


def _positions(tokens: list[Token], text: str, start: int) -> list[int]:
    out = []
    pos, prev_end = start, None
    for tok in tokens:
        if prev_end is not None:
            pos += _BREAK if _PUNCT.search(text, prev_end, tok.start) else 1
        out.append(pos)
        prev_end = tok.end
    return out


def _learn_compounds(tokens: list[Token], text: str, out: dict[str, tuple[str, str]]) -> None:
    for i in range(1, len(tokens)):
        a, b = tokens[i - 1], tokens[i]
        if _two_part(tokens, i) and a.acronym is None and b.acronym is None:
            joined = stem(text[a.start : a.end].lower() + text[b.start : b.end].lower())
            out.setdefault(joined, (a.key, b.key))


def _acronym_map(
    definitions: dict[str, Counter[tuple[str, ...]]],
) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Keep each acronym's dominant expansions (ties and near-ties kept, at most three), then
    expand acronyms nested inside expansions once ("MBRL" -> "model based RL" -> "... learn")."""
    direct: dict[str, tuple[tuple[str, ...], ...]] = {}
    for short, counts in sorted(definitions.items()):
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = ranked[0][1]
        direct[short] = tuple(exp for exp, n in ranked[:3] if 2 * n >= top)
    result: dict[str, tuple[tuple[str, ...], ...]] = {}
    for short, expansions in direct.items():
        more = list(expansions)
        for exp in expansions:
            for i, key in enumerate(exp):
                for inner in direct.get(key, ()) if key != short else ():
                    more.append(exp[:i] + inner + exp[i + 1 :])
        result[short] = tuple(dict.fromkeys(more))
    return result
