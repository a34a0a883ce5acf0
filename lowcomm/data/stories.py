"""Synthetic children's stories: a tiny, seeded language-modelling corpus.

Each story follows a hero through a short plot (introduction, a treasured object, a trip, a mishap,
a friend's help, an ending) drawn from small word lists, in the spirit of TinyStories (Eldan & Li,
2023, https://arxiv.org/abs/2305.07759). The text has local grammar and long-range structure: the
hero's name and pronouns, the friend, the place and the object recur consistently within a story,
and each mishap is followed by its matching remedy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

STORIES_SEED = 0
DEFAULT_NUM_STORIES = 5000

GIRL_NAMES = ("Lily", "Mia", "Anna", "Sue", "Emma", "Zoe", "Ruby", "Ella", "Rosa", "Nina", "Amy", "Kate")
BOY_NAMES = ("Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Finn", "Tim", "Omar", "Noah", "Joe", "Dan")
ANIMALS = ("cat", "dog", "bunny", "fox", "bear", "bird", "frog", "mouse", "duck", "pig")
TRAITS = ("little", "happy", "kind", "brave", "curious", "shy", "clever", "silly", "gentle", "small")
PLACES = ("park", "forest", "beach", "river", "garden", "farm", "hill", "lake", "town", "meadow")
OBJECTS = ("ball", "kite", "boat", "hat", "book", "drum", "doll", "car", "balloon", "blanket", "cup")
COLOURS = ("red", "blue", "green", "yellow", "purple", "brown", "pink", "white")
TIMES = ("morning", "afternoon", "sunny day", "windy day", "cold day", "warm evening")
SAD_FEELINGS = ("sad", "upset", "worried", "scared")
HAPPY_FEELINGS = ("happy", "glad", "excited", "thankful")

# (mishap, why the hero is sad, the friend's remedy); {hero}, {friend}, {object}, {pos} and {obj}
# (the hero's possessive and object pronouns) are filled in per story.
MISHAPS = (
    (
        "the wind blew the {object} into a tall tree",
        "{pos} {object} was stuck",
        "{friend} climbed the tree and brought the {object} back",
    ),
    (
        "the {object} fell into a deep hole",
        "{pos} {object} was gone",
        "{friend} reached into the hole and pulled the {object} out",
    ),
    (
        "{hero} dropped the {object} and it broke",
        "{pos} {object} was broken",
        "{friend} helped {obj} fix the {object} with some glue",
    ),
    (
        "{hero} could not find the {object} anywhere",
        "{pos} {object} was lost",
        "{friend} looked behind a big rock and found the {object}",
    ),
    (
        "a big dog ran off with the {object}",
        "the dog had {pos} {object}",
        "{friend} called the dog, and the dog gave the {object} back",
    ),
)
TRIPS = (
    "one {time}, {hero} took the {object} to the {place}.",
    "one {time}, {hero} and {pos} {object} went to the {place} to play.",
    "one {time}, {sub} carried the {object} all the way to the {place}.",
)
MEETINGS = (
    "at the {place}, {sub} met a {friend_kind} named {friend}.",
    "there, {sub} saw a {friend_kind} called {friend}.",
)
INTRODUCTIONS = (
    "once upon a time, there was a {trait} {kind} named {hero}.",
    "there once was a {trait} {kind} called {hero}.",
    "{hero} was a {trait} {kind} who lived near the {place}.",
)
THANKS = (
    "{hero} gave {friend} a big hug.",
    "{sub} jumped up and down and laughed.",
    '{hero} said, "Thank you, {friend}! You are a good friend."',
    "{sub} shared {pos} snack with {friend}.",
)
ENDINGS = (
    "from that day on, {hero} and {friend} were best friends.",
    "{hero} learned that it is good to ask for help.",
    "that night, {hero} went to sleep with {pos} {object} next to {obj}.",
    "after that, {hero} always held {pos} {object} very tight.",
)


@dataclass(frozen=True)
class Character:
    """A named character and the pronouns that refer to them."""

    name: str
    kind: str
    subject: str
    object: str
    possessive: str


def random_character(rng: random.Random, avoid: str = "") -> Character:
    """A girl, a boy, or an animal of either sex, with a name other than ``avoid``."""
    is_girl = rng.random() < 0.5
    name = rng.choice([n for n in (GIRL_NAMES if is_girl else BOY_NAMES) if n != avoid])
    kind = rng.choice(ANIMALS) if rng.random() < 0.4 else ("girl" if is_girl else "boy")
    return Character(name, kind, *(("she", "her", "her") if is_girl else ("he", "him", "his")))


def generate_story(rng: random.Random) -> str:
    """One story; every sentence is filled from the same hero, friend, place and object."""
    hero = random_character(rng)
    friend = random_character(rng, avoid=hero.name)
    mishap, loss, remedy = rng.choice(MISHAPS)
    words = {
        "hero": hero.name,
        "sub": hero.subject,
        "obj": hero.object,
        "pos": hero.possessive,
        "kind": hero.kind,
        "trait": rng.choice(TRAITS),
        "friend": friend.name,
        "friend_kind": friend.kind,
        "friend_sub": friend.subject,
        "place": rng.choice(PLACES),
        "object": rng.choice(OBJECTS),
        "colour": rng.choice(COLOURS),
        "time": rng.choice(TIMES),
        "sad": rng.choice(SAD_FEELINGS),
        "happy": rng.choice(HAPPY_FEELINGS),
    }
    sentences = [
        rng.choice(INTRODUCTIONS),
        "{sub} had a {colour} {object}, and {sub} loved it very much.",
        rng.choice(TRIPS),
        rng.choice(MEETINGS),
        f"but {mishap}.",
        f"{{hero}} was {{sad}} because {loss}.",
        '{friend} said, "Do not worry, I will help you."',
        f"{remedy}, so {{friend_sub}} gave it to {{hero}}.",
        "{hero} was so {happy} that {sub} smiled.",
        rng.choice(THANKS),
        rng.choice(ENDINGS),
    ]
    filled = (sentence.format(**words) for sentence in sentences)
    return " ".join(sentence[0].upper() + sentence[1:] for sentence in filled)


def generate_stories(num_stories: int = DEFAULT_NUM_STORIES, seed: int = STORIES_SEED) -> list[str]:
    """``num_stories`` stories, the same list for the same seed."""
    if num_stories < 1:
        raise ValueError(f"num_stories: must be >= 1, got {num_stories}")
    rng = random.Random(seed)
    return [generate_story(rng) for _ in range(num_stories)]
