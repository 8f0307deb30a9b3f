"""A small synthetic world in plain English words: evaluation suites and the training corpus.

Tiny models can learn it. The reasoning suites need their own context (a fresh random instance each
time); `facts` and `text` need the world's habits, hundreds of fixed facts the corpus' prose states
(Zipf-distributed, so a bigger or longer-trained model knows more of them). Each reasoning family has
a `difficulty` knob (hops, pattern period, addend size, filler length) that grades it.

Train/eval separation is by construction: every instance is assigned to the training corpus or to
evaluation by a hash of its full text (`is_eval_instance`), the corpus generator emits only
training instances and the suites only evaluation ones, so no evaluation item appears verbatim in
the corpus (a test checks it with n-gram overlap). The exception is knowledge (`KNOWLEDGE`): `facts`
asks for what the corpus states, by design.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator

NAMES = (
    "alice bob carol dave eve frank grace heidi ivan judy mallory oscar peggy trent victor walter wendy zoe"
).split()
ANIMALS = "cat dog fox owl bear wolf frog duck goat horse mouse tiger".split()
VERBS = "sings runs jumps sleeps hides eats swims dances waits laughs".split()
OBJECTS = "key coin book lamp ring cup hat map shell stone bell apple".split()
PLACES = "river forest garden kitchen market hill cave bridge field tower".split()
COLORS = "red blue green yellow black white pink gray".split()
NONCE = "blicket dax wug fep toma zorp kiki mip".split()
COMPARATIVES = [("taller", "tallest"), ("older", "oldest"), ("faster", "fastest"), ("heavier", "heaviest")]
NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
EVAL_SHARE = 0.1  # fraction of the instance space reserved for evaluation


def is_eval_instance(text: str) -> bool:
    """True if this instance text belongs to evaluation (never to the training corpus)."""
    return hashlib.blake2b(text.encode(), digest_size=2).digest()[0] < int(256 * EVAL_SHARE)


# Each generator draws one instance: (context, answer, distractors). The solved text is
# f"{context} {answer} ." and is what the corpus contains and what the hash partitions.


def logic(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """Transitive comparisons (a chain of `difficulty + 1` facts, shuffled) or a syllogism."""
    if rng.random() < 0.3:
        who, kind, color = rng.choice(NAMES), rng.choice(NONCE), rng.choice(COLORS)
        others = rng.sample([c for c in COLORS if c != color], 3)
        facts = [f"every {kind} is {color} .", f"{who} is a {kind} ."]
        filler = [
            f"every {k} is {c} ."
            for k, c in zip(rng.sample([n for n in NONCE if n != kind], difficulty), others, strict=False)
        ]
        lines = facts + filler
        rng.shuffle(lines)
        return f"{' '.join(lines)} so {who} is", color, others
    comp, top = rng.choice(COMPARATIVES)
    chain = rng.sample(NAMES, difficulty + 2)
    facts = [f"{a} is {comp} than {b} ." for a, b in zip(chain, chain[1:], strict=False)]
    rng.shuffle(facts)
    outsiders = [p for p in NAMES if p not in chain]
    distractors = rng.sample(chain[1:], min(2, len(chain) - 1))
    distractors += rng.sample(outsiders, 3 - len(distractors))
    return f"{' '.join(facts)} so the {top} is", chain[0], distractors


def causal(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """If-then chains: one chain of `difficulty + 1` hops is triggered, `difficulty + 1` others are not
    (their ends are the distractors, topped up with events that are not in the context)."""
    hops, n_chains = difficulty + 1, min(difficulty + 2, 4)
    pairs = rng.sample([(a, v) for a in ANIMALS for v in VERBS], n_chains * (hops + 1) + 3)
    events = [f"{a} {v}" for a, v in pairs]
    chains = [events[i * (hops + 1) : (i + 1) * (hops + 1)] for i in range(n_chains)]
    rules = [f"if the {a} then the {b} ." for chain in chains for a, b in zip(chain, chain[1:], strict=False)]
    rng.shuffle(rules)
    start = chains[0][0]
    distractors = [c[-1] for c in chains[1:]] + events[n_chains * (hops + 1) :]
    return f"{' '.join(rules)} the {start} . so the", chains[0][-1], distractors[:3]


def induction(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """Continue a repeating pattern of period `difficulty + 2` (distinct words)."""
    period = difficulty + 2
    # Words from every class: with one class per pattern (8 colors: 336 patterns of three) a model
    # memorizes the training patterns, and since evaluation patterns are never among them, the
    # memory points at a wrong word; from 50 words a pattern is new and must be copied in context.
    pool = COLORS + ANIMALS + OBJECTS + NAMES
    pattern = rng.sample(pool, period)
    shown = 3 * period - 1  # fixed by the period, so no instance is a prefix of another
    seq = [pattern[i % period] for i in range(shown)]
    answer = pattern[shown % period]
    distractors = [w for w in pattern if w != answer][:3]
    distractors += rng.sample([w for w in pool if w not in pattern], 3 - len(distractors))
    return f"pattern : {' '.join(seq)}", answer, distractors


def arithmetic(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """A two-step story sum with addends up to 3 * difficulty + 2 (answers stay within twenty).

    The sums are facts to learn (25 at difficulty 1, 64 at 2): a bigger model holds more of them
    after the same number of tokens, so this suite grades with size smoothly, not all at once."""
    top = min(3 * difficulty + 2, 10)
    a, b = rng.randint(1, top), rng.randint(1, top)
    who, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    total = a + b
    near = [n for n in range(max(0, total - 3), min(20, total + 3) + 1) if n != total]
    distractors = [NUMBERS[n] for n in rng.sample(near, 3)]
    verb = rng.choice(["finds", "gets", "buys", "wins"])
    context = f"{who} has {NUMBERS[a]} {obj}s . {who} {verb} {NUMBERS[b]} more {obj}s . now {who} has"
    return context, NUMBERS[total], distractors


def cloze(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """A passage whose last word names the object introduced at its start, after some filler."""
    who, obj, place = rng.choice(NAMES), rng.choice(OBJECTS), rng.choice(PLACES)
    other_objs = rng.sample([o for o in OBJECTS if o != obj], 3)
    filler = [
        f"then {who} walked to the {rng.choice(PLACES)} ."
        if rng.random() < 0.5
        else f"{who} saw a {rng.choice(ANIMALS)} near the {rng.choice(PLACES)} ."
        for _ in range(difficulty)
    ]
    context = (
        f"{who} put a {obj} in the box at the {place} . {' '.join(filler)} later {who} opened the box "
        f"and took out the"
    )
    return " ".join(context.split()), obj, other_objs


def _fact(pool: list[str], *keys: str) -> str:
    """A fixed fact of the world: the member of `pool` that `keys` point at (a stable hash)."""
    digest = hashlib.blake2b(" ".join(keys).encode(), digest_size=4).digest()
    return pool[int.from_bytes(digest, "big") % len(pool)]


def _zipf(rng: random.Random, pool: list[str]) -> str:
    """A member of `pool`, the k-th drawn with weight 1/k (Zipf, as names and things in real text)."""
    return rng.choices(pool, weights=[1 / (k + 1) for k in range(len(pool))])[0]


def _habits(rng: random.Random) -> tuple[str, str, list[str]]:
    """One habit of the world, stated: (sentence without its last word, the fact, the pool it is
    from). Who meets which animal where, each animal's usual doing and place, each person's
    favourite color and friend: hundreds of fixed facts (`_fact`). People and things are drawn
    Zipf-distributed, so facts range from stated very often to rarely: a small model learns the
    frequent ones, a bigger one more of the rare ones (knowledge grades with size, not at once)."""
    who, template = _zipf(rng, NAMES), rng.randrange(3)
    if template == 0:
        animal, color = _zipf(rng, ANIMALS), _fact(COLORS, who, "color")
        return f"{who} saw a {color} {animal} near the", _fact(PLACES, who, animal), PLACES
    if template == 1:
        animal = _zipf(rng, ANIMALS)
        return f"the {animal} {_fact(VERBS, animal, 'does')} in the", _fact(PLACES, animal, "lives"), PLACES
    obj = _zipf(rng, OBJECTS)
    return f"{who} gave a {obj} to", _fact(NAMES, who, obj), NAMES


def prose(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """Plain narrative sentences (the perplexity suite and the corpus' connective tissue).

    Every sentence states a habit of the world (`_habits`) 9 times in 10, else a random member of
    the same pool, or a count. There are hundreds of habits, so a bigger model, or a longer-trained
    one, has learned more of them: the loss falls with size and with training steadily. Each
    sentence draws its own person: nothing in a passage is worth copying from earlier in it, so the
    loss does not hinge on when a model learns to copy in context (a seed's luck).
    """
    sentences = []
    for _ in range(difficulty + 2):
        if rng.random() < 0.2:
            sentences.append(f"{rng.choice(NAMES)} has {rng.choice(NUMBERS[1:10])} {rng.choice(OBJECTS)}s .")
            continue
        head, fact, pool = _habits(rng)
        sentences.append(f"{head} {fact if rng.random() < 0.9 else rng.choice(pool)} .")
    head, last = " ".join(sentences).removesuffix(" .").rsplit(" ", 1)
    return head, last, []


def facts(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """Closed-book recall of one habit of the world (`_habits`), e.g. "alice gave a key to" -> her
    friend for keys. The corpus states each habit in its prose many times, so this suite measures
    knowledge held in the weights: each fact is learned or not on its own, and a bigger model holds
    more of them, which grades with size smoothly (no single circuit decides it). `difficulty` is
    unused: how rarely a fact is stated is its difficulty."""
    head, fact, pool = _habits(rng)
    return head, fact, rng.sample([p for p in pool if p != fact], 3)


FAMILIES: dict[str, Callable[[random.Random, int], tuple[str, str, list[str]]]] = {
    "logic": logic,
    "causal": causal,
    "induction": induction,
    "arithmetic": arithmetic,
    "cloze": cloze,
    "text": prose,
    "facts": facts,
}
# Knowledge: the world's facts, stated in the corpus' prose. Its rows are not split off the corpus
# (recall of what was read is what it measures) and it has no corpus share of its own.
KNOWLEDGE = frozenset({"facts"})


def _instances(
    family: str, seed: int, difficulty: int, want_eval: bool
) -> Iterator[tuple[str, str, list[str]]]:
    """Instances of one side of the split; evaluation ones are distinct, training ones may repeat."""
    rng = random.Random(f"{family}:{seed}:{difficulty}")
    make = FAMILIES[family]
    seen: set[str] = set()
    misses = 0
    while misses < 100_000:  # a small instance space runs out instead of looping forever
        context, answer, distractors = make(rng, difficulty)
        text = f"{context} {answer}"
        split = family not in KNOWLEDGE and is_eval_instance(text) != want_eval
        if split or (want_eval and text in seen):
            misses += 1
            continue
        misses = 0
        seen.add(text)
        yield context, answer, distractors


def suite(family: str, n: int, seed: int = 0, difficulty: int = 1) -> list[dict]:
    """`n` evaluation rows in the canonical schema of the family's kind."""
    if family not in FAMILIES:
        raise ValueError(f"unknown builtin generator {family!r} (known: {', '.join(FAMILIES)})")
    rows, rng = [], random.Random(f"choices:{family}:{seed}")
    for i, (context, answer, distractors) in zip(
        range(n), _instances(family, seed, difficulty, True), strict=False
    ):
        if family == "cloze":
            rows.append({"id": f"{family}-{i}", "text": f"{context} {answer}"})
        elif family == "text":
            rows.append({"id": f"{family}-{i}", "text": f"{context} {answer} ."})
        else:
            choices = [answer, *distractors]
            rng.shuffle(choices)
            rows.append(
                {"id": f"{family}-{i}", "context": context, "choices": choices, "gold": choices.index(answer)}
            )
    return rows


def calibration_texts(family: str, seed: int = 0, difficulty: int = 1) -> Iterator[str]:
    """An endless, deterministic stream of solved instances of one family from the TRAINING side of
    the split (never an evaluation row), e.g. calibration data for GPTQ: the same distribution as
    the family's evaluation suite without calibrating on it. Its own stream (seed + 2000), distinct
    from the training corpus' (seed + 1000)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown builtin generator {family!r} (known: {', '.join(FAMILIES)})")
    for context, answer, _ in _instances(family, seed + 2000, difficulty, False):
        yield f"{context} {answer} ."


# Share of the corpus' TOKENS per family. Instances are drawn in inverse proportion to their
# length, so a long family (causal at 4 hops is ~150 words of random rules) cannot crowd out the
# short ones: drawn by count, causal alone would be half of the corpus and mostly noise.
CORPUS_SHARE = {"logic": 0.2, "causal": 0.1, "induction": 0.1, "arithmetic": 0.1, "cloze": 0.15, "text": 0.35}


def _mean_words(family: str, difficulty: int, n: int = 64) -> float:
    rng = random.Random(f"length:{family}:{difficulty}")
    return sum(len(FAMILIES[family](rng, difficulty)[0].split()) + 2 for _ in range(n)) / n


def training_corpus(n_docs: int, seed: int = 0, difficulties: tuple[int, ...] = (0, 1, 2)) -> Iterator[str]:
    """Documents of solved training instances from every family, mixed (by CORPUS_SHARE of the
    tokens, difficulties equally), deterministic for a seed."""
    rng = random.Random(f"corpus:{seed}")
    streams = {(f, d): _instances(f, seed + 1000, d, False) for f in CORPUS_SHARE for d in difficulties}
    keys = list(streams)
    weights = [CORPUS_SHARE[f] / _mean_words(f, d) for f, d in keys]
    for _ in range(n_docs):
        parts = []
        for key in rng.choices(keys, weights, k=rng.randint(2, 5)):
            context, answer, _ = next(streams[key])
            parts.append(f"{context} {answer} .")
        yield " ".join(parts)
