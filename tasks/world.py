"""A small synthetic world in plain English words: evaluation suites and the training corpus.

Tiny models can learn it, and every suite needs reasoning over its own context (a fresh random
instance each time), so a bigger or longer-trained model does better. Each family has a
`difficulty` knob (hops, pattern period, addend size, filler length) that grades it.

Train/eval separation is by construction: every instance is assigned to the training corpus or to
evaluation by a hash of its full text (`is_eval_instance`), the corpus generator emits only
training instances and the suites only evaluation ones, so no evaluation item appears verbatim in
the corpus (a test checks it with n-gram overlap).
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
    """If-then chains: one chain of `difficulty + 1` hops is triggered, three others are not."""
    hops = difficulty + 1
    pairs = rng.sample([(a, v) for a in ANIMALS for v in VERBS], 4 * (hops + 1))
    events = [f"{a} {v}" for a, v in pairs]
    chains = [events[i * (hops + 1) : (i + 1) * (hops + 1)] for i in range(4)]
    rules = [f"if the {a} then the {b} ." for chain in chains for a, b in zip(chain, chain[1:], strict=False)]
    rng.shuffle(rules)
    start = chains[0][0]
    return f"{' '.join(rules)} the {start} . so the", chains[0][-1], [c[-1] for c in chains[1:]]


def induction(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """Continue a repeating pattern of period `difficulty + 2` (distinct words)."""
    period = difficulty + 2
    pool = rng.choice([COLORS, ANIMALS, OBJECTS, NAMES])
    pattern = rng.sample(pool, period)
    shown = 3 * period - 1  # fixed by the period, so no instance is a prefix of another
    seq = [pattern[i % period] for i in range(shown)]
    answer = pattern[shown % period]
    distractors = [w for w in pattern if w != answer][:3]
    distractors += rng.sample([w for w in pool if w not in pattern], 3 - len(distractors))
    return f"pattern : {' '.join(seq)}", answer, distractors


def arithmetic(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """A two-step story sum with addends up to `difficulty + 2` (answers stay within twenty)."""
    top = min(difficulty + 2, 10)
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


def prose(rng: random.Random, difficulty: int) -> tuple[str, str, list[str]]:
    """Plain narrative sentences (the perplexity suite and the corpus' connective tissue)."""
    who = rng.choice(NAMES)
    sentences = []
    for _ in range(difficulty + 2):
        template = rng.randrange(4)
        if template == 0:
            sentences.append(
                f"{who} saw a {rng.choice(COLORS)} {rng.choice(ANIMALS)} near the {rng.choice(PLACES)} ."
            )
        elif template == 1:
            sentences.append(f"the {rng.choice(ANIMALS)} {rng.choice(VERBS)} in the {rng.choice(PLACES)} .")
        elif template == 2:
            sentences.append(f"{who} gave a {rng.choice(OBJECTS)} to {rng.choice(NAMES)} .")
        else:
            sentences.append(f"{who} has {rng.choice(NUMBERS[1:10])} {rng.choice(OBJECTS)}s .")
    head, last = " ".join(sentences).removesuffix(" .").rsplit(" ", 1)
    return head, last, []


FAMILIES: dict[str, Callable[[random.Random, int], tuple[str, str, list[str]]]] = {
    "logic": logic,
    "causal": causal,
    "induction": induction,
    "arithmetic": arithmetic,
    "cloze": cloze,
    "text": prose,
}


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
        if is_eval_instance(text) != want_eval or (want_eval and text in seen):
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


def training_corpus(
    n_docs: int, seed: int = 0, difficulties: tuple[int, ...] = (0, 1, 2, 3)
) -> Iterator[str]:
    """Documents of solved training instances from every family, mixed, deterministic for a seed."""
    rng = random.Random(f"corpus:{seed}")
    streams = {(f, d): _instances(f, seed + 1000, d, False) for f in FAMILIES for d in difficulties}
    keys = list(streams)
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(2, 5)):
            context, answer, _ = next(streams[rng.choice(keys)])
            parts.append(f"{context} {answer} .")
        yield " ".join(parts)
