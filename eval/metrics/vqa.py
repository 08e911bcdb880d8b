"""TextVQA / VQAv2 accuracy with lmms-eval's EvalAI answer processing (docs/metrics.md).

The quirks of the reference are reproduced on purpose: the period regex deletes "." before a
non-digit even after a digit ("5." -> "5"), at most 32 times, and the digit-comma test disables
every punctuation-to-space replacement.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

from .conventions import prepare

VARIANTS = ("textvqa", "vqav2")

# Order matters: each character is handled in turn on the working text.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")
# The reference pattern `(?!<=\d)(\.)(?!\d)` has a malformed look-behind that never restricts anything,
# and passes re.UNICODE (32) where the count goes.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX_COUNT = 32

NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Verbatim from the reference, including the reversed "somebody'd" entry and capital-I keys that never fire.
CONTRACTIONS = {
    'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've", 'couldnt': "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", 'didnt': "didn't", 'doesnt': "doesn't",
    'dont': "don't", 'hadnt': "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't",
    'havent': "haven't", 'hed': "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's", 'howd': "how'd",
    'howll': "how'll", 'hows': "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm", 'Ive': "I've",
    'isnt': "isn't", 'itd': "it'd", "itd've": "it'd've", "it'dve": "it'd've", 'itll': "it'll", "let's": "let's",
    'maam': "ma'am", 'mightnt': "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    'mightve': "might've", 'mustnt': "mustn't", 'mustve': "must've", 'neednt': "needn't", 'notve': "not've",
    'oclock': "o'clock", 'oughtnt': "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    'shant': "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", 'shouldve': "should've",
    'shouldnt': "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd',
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", 'somebodyll': "somebody'll",
    'somebodys': "somebody's", 'someoned': "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    'someonell': "someone'll", 'someones': "someone's", 'somethingd': "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", 'somethingll': "something'll",
    'thats': "that's", 'thered': "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    'therere': "there're", 'theres': "there's", 'theyd': "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    'theyll': "they'll", 'theyre': "they're", 'theyve': "they've", 'twas': "'twas", 'wasnt': "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", 'weve': "we've", 'werent': "weren't", 'whatll': "what'll",
    'whatre': "what're", 'whats': "what's", 'whatve': "what've", 'whens': "when's", 'whered': "where'd",
    'wheres': "where's", 'whereve': "where've", 'whod': "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    'wholl': "who'll", 'whos': "who's", 'whove': "who've", 'whyll': "why'll", 'whyre': "why're", 'whys': "why's",
    'wont': "won't", 'wouldve': "would've", 'wouldnt': "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", 'yall': "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", 'youd': "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", 'youll': "you'll", 'youre': "you're", 'youve': "you've",
}


def _tokenise(text: str) -> str:
    """T (TextVQA only): lowercase, drop every comma and "?", split off "'s", strip."""
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _whitespace(text: str) -> str:
    """W: newlines and tabs become spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def _punctuation(text: str) -> str:
    """P: delete or space out punctuation; the conditions always test the input, not the working text."""
    out = text
    digit_comma = _DIGIT_COMMA.search(text) is not None
    for char in PUNCTUATION:
        if char + " " in text or " " + char in text or digit_comma:
            out = out.replace(char, "")
        else:
            out = out.replace(char, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_COUNT)


def _digits_articles(text: str) -> str:
    """D: number words to digits, articles dropped, contractions restored, single spaces."""
    words = [NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalise_vqa_answer(text: str, variant: str = "textvqa") -> str:
    """EvalAI answer processing: D(P(W(T(x)))) for TextVQA, D(P(W(x))) for VQAv2."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown VQA variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if variant == "textvqa":
        text = _tokenise(text)
    return _digits_articles(_punctuation(_whitespace(text)))


def vqa_accuracy(prediction: str | None, answers: str | Sequence[str], *, variant: str = "textvqa") -> float:
    """VQA accuracy: mean over golds i of min(1, #{j != i : gold_j == prediction} / 3), after normalisation.

    The leave-one-out is by position, so duplicate golds each count once per other position.
    """
    prediction, golds = prepare(prediction, answers)
    predicted = normalise_vqa_answer(prediction, variant)
    matches = [normalise_vqa_answer(gold, variant) == predicted for gold in golds]
    total = sum(matches)
    return sum(min(1.0, (total - hit) / 3) for hit in matches) / len(matches)
