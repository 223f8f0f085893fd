"""E2E NLG Challenge scorer: the numbers of tuetschek/e2e-metrics ``measure_scores.py REFS SYS -p``.

Five corpus-level metrics, with the names and raw scales the official script prints
(BLEU 0.7203, not 72.03):

- **BLEU** and **NIST** are computed here, in pure Python, following the official script's Python
  MTEval port (``-p``): mteval-v13a tokenisation (:func:`mteval_tokenize`), case-insensitive n-grams,
  corpus BLEU-4 and NIST-5 (:func:`corpus_bleu`, :func:`corpus_nist`). No Java needed.
- **METEOR 1.5**, **ROUGE-L** and **CIDEr** come from the ``pycocoevalcap==1.2`` package, fed as the
  official script feeds its vendored copy: every reference and output goes through the Stanford
  PTBTokenizer (``-preserveLines -lowerCase``, punctuation tokens dropped), references and outputs in
  two separate tokenizer runs, all references of an instance passed together; METEOR, ROUGE-L and
  CIDEr all score that tokenised text. These need Java and the jars inside the installed package.

Input files follow the official plain-text format: :func:`read_references` (references of one
instance on consecutive lines, a blank line between instances; a file without blank lines is one
reference per instance) and :func:`read_predictions` (one output per line).

Where the official script fails, this module does not: trailing blank lines in a reference file are
ignored (the official script asserts on two or more), an empty reference group is a ``ValueError``, and a
NIST term with a zero denominator counts as 0 (see :func:`corpus_nist`). Everything else is the same
computation, to the last printed digit (``tests/e2e``).

Command line (prints what ``measure_scores.py`` prints, so the two can be diffed)::

    python -m experiments.metrics.e2e REFS SYS
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

METRICS: tuple[str, ...] = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
JAVA_METRICS: frozenset[str] = frozenset({"METEOR", "ROUGE_L", "CIDEr"})

JAVA_HINT = "apt-get install -y openjdk-17-jre-headless"
JARS_HINT = "pip install --no-deps pycocoevalcap==1.2"


class JavaDependencyError(RuntimeError):
    """METEOR, ROUGE_L or CIDEr were asked for, but Java or the pycocoevalcap jars are missing."""


# --------------------------------------------------------------------------------------------------
# mteval-v13a tokenisation
# --------------------------------------------------------------------------------------------------

# (pattern, replacement) steps, applied in order. First the language-independent clean-up
# (mteval's <skipped> tags, end-of-line hyphenation, SGML entities), then the "western" tokenisation:
# ASCII symbols (everything printable except letters, digits and ' - . ,) become separate tokens;
# "." and "," split off unless they sit between/next to digits (3.5, 1,000 stay whole); a "-" after a
# digit splits off. Non-ASCII symbols (£, curly quotes, accented letters) are left inside words.
_MTEVAL_STEPS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"<skipped>", ""),
        (r"-\n", ""),
        (r"\n", " "),
        (r"&quot;", '"'),
        (r"&amp;", "&"),
        (r"&lt;", "<"),
        (r"&gt;", ">"),
        (r"([ !\"#$%&()*+/:;<=>?@\[\\\]^_`{|}~])", r" \1 "),
        (r"([^0-9])([.,])", r"\1 \2 "),
        (r"([.,])([^0-9])", r" \1 \2"),
        (r"([0-9])(-)", r"\1 \2 "),
        (r"\s+", " "),
    )
)


def mteval_tokenize(text: str) -> list[str]:
    """Tokens of ``text`` as mteval-v13a (and the official Python port) splits it.

    Case is kept (matching lowercases later). An empty or all-space text gives ``[""]``: one empty
    token, which counts as length 1 in BLEU and NIST, as in the official port.
    """
    padded = f" {text} "
    for pattern, replacement in _MTEVAL_STEPS:
        padded = pattern.sub(replacement, padded)
    return padded.strip().split(" ")


# --------------------------------------------------------------------------------------------------
# BLEU and NIST (official Python MTEval port)
# --------------------------------------------------------------------------------------------------

Ngram = tuple[str, ...]


def ngram_counts(tokens: Sequence[str], n: int) -> Counter[Ngram]:
    """Counts of the lowercased n-grams of ``tokens`` (empty when ``len(tokens) < n``)."""
    lowered = [token.lower() for token in tokens]
    return Counter(tuple(lowered[i : i + n]) for i in range(len(lowered) - n + 1))


def clipped_hits(hypothesis: Sequence[str], references: Sequence[Sequence[str]], n: int) -> Counter[Ngram]:
    """Clipped matches ``min(c_hyp(g), max_r c_r(g))`` of each hypothesis n-gram g with a match."""
    best_ref: Counter[Ngram] = Counter()
    for reference in references:
        best_ref |= ngram_counts(reference, n)
    return ngram_counts(hypothesis, n) & best_ref


def corpus_bleu(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], max_n: int = 4
) -> float:
    """Corpus BLEU of token lists, as the official port computes it.

    BLEU = BP · exp((1/N) Σ_{n=1..N} log(max(h_n, 1e-15) / max(c_n, 1e-9))), where
    h_n = Σ_segments Σ_g clipped_hits(g) and c_n = Σ_segments (|hyp| − n + 1) (the port does not
    clip this at 0, so short outputs lower c_n). Brevity penalty BP = exp(1 − R / C) when C ≤ R, else 1,
    with C = c_1 (1e-5 if 0) and R = Σ |closest reference| (closest in length, the shorter on ties).
    """
    hits = [0] * max_n
    lengths = [0] * max_n
    closest_len = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        for n in range(1, max_n + 1):
            hits[n - 1] += sum(clipped_hits(hypothesis, refs, n).values())
            lengths[n - 1] += len(hypothesis) - n + 1
        closest_len += min((abs(len(ref) - len(hypothesis)), len(ref)) for ref in refs)[1]
    log_precision = 0.0
    for h_n, c_n in zip(hits, lengths):
        log_precision += math.log(max(h_n, 1e-15) / max(c_n, 1e-9))
    brevity = 1.0
    if lengths[0] <= closest_len:
        brevity = math.exp(1.0 - closest_len / (lengths[0] or 1e-5))
    return brevity * math.exp(log_precision / max_n)


NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2  # BP = 0.5 when the length ratio is 2/3


def nist_brevity_penalty(system_len: float, mean_ref_len: float) -> float:
    """exp(−β · log²(L_sys / L̄_ref)) for a ratio in (0, 1); 1 at or above 1, 0 at or below 0."""
    ratio = system_len / mean_ref_len
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-NIST_BETA * math.log(ratio) ** 2)


def corpus_nist(
    hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]], max_n: int = 5
) -> float:
    """Corpus NIST of token lists, as the official port computes it.

    NIST = BP · Σ_{n=1..N} [Σ_segments Σ_g hits(g) · info(g)] / Σ_segments (|hyp| − n + 1), with
    hits(g) the clipped matches of :func:`clipped_hits` and the information weight
    info(g) = log2(#(g without its last word) / #(g)), # counting over every reference sentence of the
    corpus (#(empty) = total reference words). BP is :func:`nist_brevity_penalty` of the total output
    length and L̄_ref = Σ_segments (mean reference length of the segment). A term whose denominator is
    0 counts as 0 (the official port raises ZeroDivisionError there, e.g. on all-empty outputs).
    """
    ref_counts: list[Counter[Ngram]] = [Counter() for _ in range(max_n + 1)]
    segment_hits: list[list[Counter[Ngram]]] = [[] for _ in range(max_n + 1)]
    lengths = [0] * (max_n + 1)
    mean_ref_len = 0.0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        for n in range(1, max_n + 1):
            segment_hits[n].append(clipped_hits(hypothesis, refs, n))
            lengths[n] += len(hypothesis) - n + 1
            for ref in refs:
                ref_counts[n].update(ngram_counts(ref, n))
        ref_words = sum(len(ref) for ref in refs)
        ref_counts[0][()] += ref_words
        mean_ref_len += ref_words / len(refs)

    def info(ngram: Ngram) -> float:
        return math.log2(ref_counts[len(ngram) - 1][ngram[:-1]] / ref_counts[len(ngram)][ngram])

    total = 0.0
    for n in range(1, max_n + 1):
        weighted = 0.0
        for hits in segment_hits[n]:
            weighted += sum(info(ngram) * count for ngram, count in hits.items())
        if lengths[n]:  # 0 when the mean output length is n - 1 (all-empty outputs: n = 2); the port divides by it
            total += weighted / lengths[n]
    return nist_brevity_penalty(lengths[1], mean_ref_len) * total


# --------------------------------------------------------------------------------------------------
# METEOR, ROUGE-L, CIDEr (pycocoevalcap, Java)
# --------------------------------------------------------------------------------------------------


def _module_dir(module: str) -> Path:
    """Folder of an installed pycocoevalcap module (where the package keeps its jars)."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        raise JavaDependencyError(f"METEOR, ROUGE_L and CIDEr need the pycocoevalcap package ({module} not found); "
                                  f"install it with `{JARS_HINT}`")
    return Path(spec.origin).parent


def required_jars() -> list[Path]:
    """The files pycocoevalcap runs with Java: METEOR 1.5, its paraphrase table, Stanford CoreNLP."""
    meteor = _module_dir("pycocoevalcap.meteor.meteor")
    tokenizer = _module_dir("pycocoevalcap.tokenizer.ptbtokenizer")
    return [meteor / "meteor-1.5.jar", meteor / "data" / "paraphrase-en.gz", tokenizer / "stanford-corenlp-3.4.1.jar"]


def check_java_metrics() -> None:
    """Raise :class:`JavaDependencyError` unless ``java`` and the pycocoevalcap jars are present."""
    if shutil.which("java") is None:
        raise JavaDependencyError(
            "METEOR, ROUGE_L and CIDEr need Java (pycocoevalcap runs the METEOR 1.5 and Stanford "
            f"PTBTokenizer jars), but no `java` is on PATH. Install a JRE, e.g. `{JAVA_HINT}`, "
            "or score only metrics=('BLEU', 'NIST')."
        )
    missing = [str(path) for path in required_jars() if not path.is_file()]
    if missing:
        raise JavaDependencyError(
            f"pycocoevalcap is installed without its jars (missing: {', '.join(missing)}); "
            f"reinstall the full wheel with `{JARS_HINT}`"
        )


def _ptb_tokenize(groups: Sequence[Sequence[str]]) -> dict[int, list[str]]:
    """PTB-tokenised, lowercased, punctuation-free text per instance, in one tokenizer run."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {i: [{"caption": text} for text in group] for i, group in enumerate(groups)}
    return PTBTokenizer().tokenize(captions)


class E2EScorer:
    """Scores E2E outputs; keeps one METEOR process alive across :meth:`score` calls.

    Use as a context manager (or call :meth:`close`) to stop the METEOR process; :func:`score_e2e`
    does this for a single call.
    """

    def __init__(self) -> None:
        self._meteor = None

    def __enter__(self) -> E2EScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the METEOR process (pycocoevalcap's ``Meteor`` kills it when collected)."""
        self._meteor = None

    def score(self, references: Sequence[Sequence[str]], predictions: Sequence[str],
              metrics: Iterable[str] = METRICS) -> dict[str, float]:
        """Corpus scores of ``predictions[i]`` against ``references[i]`` (all references of instance i).

        Strings are scored as given (the file readers strip lines, as the official script does).
        Returns ``{metric: value}`` in :data:`METRICS` order, for the requested metrics only.
        """
        wanted = _validate(references, predictions, metrics)
        if JAVA_METRICS & set(wanted):
            check_java_metrics()
        scores: dict[str, float] = {}
        if "BLEU" in wanted or "NIST" in wanted:
            hyp_tokens = [mteval_tokenize(text) for text in predictions]
            ref_tokens = [[mteval_tokenize(text) for text in group] for group in references]
            if "BLEU" in wanted:
                scores["BLEU"] = corpus_bleu(hyp_tokens, ref_tokens)
            if "NIST" in wanted:
                scores["NIST"] = corpus_nist(hyp_tokens, ref_tokens)
        if JAVA_METRICS & set(wanted):
            scores.update(self._coco_scores(references, predictions, [m for m in wanted if m in JAVA_METRICS]))
        return {metric: scores[metric] for metric in wanted}

    def _coco_scores(self, references: Sequence[Sequence[str]], predictions: Sequence[str],
                     metrics: Sequence[str]) -> dict[str, float]:
        """METEOR / ROUGE_L / CIDEr on PTB-tokenised text, as the official COCO wrapper runs them."""
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge

        gts = _ptb_tokenize(references)
        res = _ptb_tokenize([[text] for text in predictions])
        scores: dict[str, float] = {}
        for metric in metrics:
            if metric == "METEOR":
                if self._meteor is None:
                    self._meteor = Meteor()
                scorer = self._meteor
            else:
                scorer = Rouge() if metric == "ROUGE_L" else Cider()
            scores[metric] = float(scorer.compute_score(gts, res)[0])
        return scores


def _validate(references: Sequence[Sequence[str]], predictions: Sequence[str],
              metrics: Iterable[str]) -> list[str]:
    """Requested metric names in :data:`METRICS` order; ValueError on bad metrics or inputs."""
    requested = set(metrics)
    unknown = requested - set(METRICS)
    if unknown or not requested:
        raise ValueError(f"unknown or no metrics {sorted(unknown)}; valid: {list(METRICS)}")
    if isinstance(predictions, str) or any(isinstance(group, str) for group in references):
        raise ValueError("predictions must be a list of strings and references a list of lists of strings")
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} reference groups but {len(predictions)} predictions; "
                         "they must pair up one to one")
    if not predictions:
        raise ValueError("nothing to score: no predictions")
    empty = [i for i, group in enumerate(references) if not group]
    if empty:
        raise ValueError(f"instances {empty[:10]} have no reference")
    return [metric for metric in METRICS if metric in requested]


def score_e2e(references: Sequence[Sequence[str]], predictions: Sequence[str],
              metrics: Iterable[str] = METRICS) -> dict[str, float]:
    """One-shot :meth:`E2EScorer.score`; ``metrics=("BLEU", "NIST")`` runs without Java."""
    with E2EScorer() as scorer:
        return scorer.score(references, predictions, metrics)


# --------------------------------------------------------------------------------------------------
# Files and command line
# --------------------------------------------------------------------------------------------------


def _stripped_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 file, each stripped; split like Python's ``str.splitlines`` (as ``codecs``)."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]


def read_predictions(path: str | Path) -> list[str]:
    """One system output per line (an empty line is an empty output)."""
    return _stripped_lines(path)


def read_references(path: str | Path) -> list[list[str]]:
    """Reference groups: consecutive non-empty lines, groups separated by one blank line.

    A file without any blank line holds one reference per instance. Trailing blank lines are
    ignored; a blank line at the start or two in a row (an instance with no reference) is an error.
    """
    groups: list[list[str]] = [[]]
    for line in _stripped_lines(path):
        if line:
            groups[-1].append(line)
        else:
            groups.append([])
    while len(groups) > 1 and not groups[-1]:
        groups.pop()
    if len(groups) == 1:
        return [[line] for line in groups[0]]
    empty = [i for i, group in enumerate(groups) if not group]
    if empty:
        raise ValueError(f"{path}: reference groups {empty[:10]} are empty (a leading blank line, or two "
                         "blank lines in a row); separate instances with exactly one blank line")
    return groups


def score_files(ref_path: str | Path, sys_path: str | Path, metrics: Iterable[str] = METRICS) -> dict[str, float]:
    """Scores of the system file ``sys_path`` against the reference file ``ref_path``."""
    references, predictions = read_references(ref_path), read_predictions(sys_path)
    if len(references) != len(predictions):
        raise ValueError(f"{ref_path} has {len(references)} instances (reference groups) but {sys_path} has "
                         f"{len(predictions)} outputs (lines)")
    return score_e2e(references, predictions, metrics)


def format_scores(scores: dict[str, float]) -> str:
    """The official script's report: a header, then ``NAME: value`` to 4 decimals, then a blank line."""
    lines = ["SCORES:", "=============="] + [f"{metric}: {value:.4f}" for metric, value in scores.items()]
    return "\n".join(lines) + "\n\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m experiments.metrics.e2e REFS SYS``: print the scores as measure_scores.py does."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ref_file", help="references: one per line, a blank line between instances")
    parser.add_argument("sys_file", help="system outputs: one per line")
    parser.add_argument("-p", "--python", action="store_true",
                        help="accepted for command-line parity with measure_scores.py; BLEU/NIST always use "
                             "the Python MTEval port")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS),
                        help="metrics to compute (BLEU NIST need no Java)")
    args = parser.parse_args(argv)
    try:
        scores = score_files(args.ref_file, args.sys_file, args.metrics)
    except (ValueError, JavaDependencyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(format_scores(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
