"""Deterministic demo shop written in the three real file formats (Amazon/P5, POG, MovieLens).

The embedded offline default needs data that the *real* readers load and that carries learnable, planted
structure (docs/data.md, "Demo data"):

- Items have visual attributes (colour, shape, pattern), a category and a price tier. Each item image is a
  PNG rendered from its attributes, so images carry what item ids do not.
- Users have a latent taste: a preferred colour, shape and category. Sequences are drawn from taste
  (matching items are far more likely) plus item-to-item transitions (each item has a few successors:
  same category, next price tier, mostly same colour), on top of a mild popularity skew.
- Amazon item numbers are a random permutation (not P5's first-appearance order, which leaks the target), so
  an id says nothing about the item; titles and images do.
- Reviews rate taste-matching items higher, and their ``explanation`` names a feature word.

``truth.json`` holds every user's taste and every item's attributes, keyed by the ids of the files, for
tests and benchmarks only (models never read it). Output is byte-identical for a given set of arguments.

CLI: ``vip5-data demo --out data/demo`` (common.data.cli).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.io import atomic_dir, write_bytes, write_text

VERSION = 1
DOMAINS = ("amazon", "pog", "movielens")
_DONE = "_DONE"
_IN_PROGRESS = ".demo_in_progress"
_PICKLE_PROTOCOL = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 45),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 25),
    "green": (40, 160, 70),
    "blue": (35, 90, 215),
    "purple": (135, 55, 185),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
PATTERNS = ("plain", "stripes", "dots")
SHAPE_ADJ = {"circle": "round", "square": "square", "triangle": "triangular", "star": "star-shaped",
             "diamond": "diamond-cut"}
PATTERN_ADJ = {"plain": "plain", "stripes": "striped", "dots": "dotted"}
TIERS = ("mini", "classic", "deluxe", "luxe")

AMAZON_CATEGORIES = {  # category -> Amazon-2014 style category path
    "lipstick": ["Beauty", "Makeup", "Lips", "Lipstick"],
    "nail polish": ["Beauty", "Makeup", "Nails", "Nail Polish"],
    "shampoo": ["Beauty", "Hair Care", "Shampoos"],
    "perfume": ["Beauty", "Fragrance", "Women", "Eau de Parfum"],
    "face cream": ["Beauty", "Skin Care", "Face", "Creams & Moisturizers"],
}
POG_CATEGORIES = {"top": "50010850", "skirt": "50008898", "trousers": "162205", "shoes": "50012027",
                  "bag": "50012010"}
ML_GENRES = ("Action", "Comedy", "Drama", "Horror", "Sci-Fi")
ML_EXTRA_GENRES = ("Adventure", "Fantasy", "Mystery", "Romance", "Thriller")
BRANDS = ("Lumina", "Verde", "Aurelle", "Nordic Bloom", "Kiyo", "Maison Sol", "Petalia", "Orbit")
FIRST_NAMES = ("Anna", "Ben", "Carla", "Dev", "Elif", "Femi", "Grace", "Hugo", "Iris", "Jun", "Kofi", "Lena",
               "Mateo", "Nina", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Viktor", "Wen", "Yara")
ASPECTS = ("texture", "scent", "price", "packaging")
ADJ = {"pos": ("lovely", "gorgeous", "perfect", "great"), "mid": ("okay", "fine", "decent"),
       "neg": ("disappointing", "dull", "not great")}
SUMMARY = {5: "Love it!", 4: "Really nice", 3: "It's okay", 2: "Not for me", 1: "Disappointed"}
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Sequence model: item weight exp(pop + colour*[match] + shape*[match] + category*[match]), pop ~ N(0, pop_std);
# with transition_prob the next item is one of the previous item's successors instead.
TASTE = {"pop_std": 0.6, "colour": 2.2, "shape": 1.4, "category": 0.7, "transition_prob": 0.5}


# ----------------------------------------------------------------------------------------------- world
@dataclass
class World:
    """One domain's latent structure; items and users are internal indices 0..n-1."""

    colour: np.ndarray  # item -> colour index
    shape: np.ndarray
    pattern: np.ndarray
    category: np.ndarray
    tier: np.ndarray
    successors: list[list[int]]  # item -> items that tend to come next
    taste: np.ndarray  # user -> (colour, shape, category)
    sequences: list[list[int]]  # user -> items, oldest first

    def matches(self, u: int, i: int) -> tuple[bool, bool, bool]:
        c, s, k = self.taste[u]
        return bool(self.colour[i] == c), bool(self.shape[i] == s), bool(self.category[i] == k)


def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n values in 0..k-1, as even as possible, in random order (every value appears even for small n)."""
    return rng.permutation(np.arange(n) % k)


def _draw(rng: np.random.Generator, weight: np.ndarray) -> int:
    """One index drawn with probability proportional to ``weight`` (rng.choice(p=...) is 10x slower)."""
    cum = np.cumsum(weight)
    return min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cum) - 1)


def _make_world(rng: np.random.Generator, n_users: int, n_items: int, n_categories: int,
                min_len: int, max_len: int) -> World:
    colour = _balanced(rng, n_items, len(COLOURS))
    shape = _balanced(rng, n_items, len(SHAPES))
    pattern = _balanced(rng, n_items, len(PATTERNS))
    category = _balanced(rng, n_items, n_categories)
    tier = _balanced(rng, n_items, len(TIERS))
    log_pop = rng.normal(0.0, TASTE["pop_std"], n_items)  # mild popularity skew; taste dominates

    successors = []
    for i in range(n_items):
        same_cat = np.flatnonzero((category == category[i]) & (np.arange(n_items) != i))
        nxt = same_cat[tier[same_cat] == (tier[i] + 1) % len(TIERS)]
        pool = nxt if len(nxt) >= 3 else same_cat
        w = np.where(colour[pool] == colour[i], 4.0, 1.0)
        k = min(3, len(pool))
        successors.append(sorted(int(j) for j in rng.choice(pool, k, replace=False, p=w / w.sum())))

    taste = np.stack([rng.integers(0, len(COLOURS), n_users), rng.integers(0, len(SHAPES), n_users),
                      rng.integers(0, n_categories, n_users)], axis=1)
    sequences = []
    for u in range(n_users):
        c, s, k = taste[u]
        logit = log_pop + TASTE["colour"] * (colour == c) + TASTE["shape"] * (shape == s) + TASTE["category"] * (
            category == k)
        weight = np.exp(logit - logit.max())
        used = np.zeros(n_items, dtype=bool)
        seq: list[int] = []
        for _ in range(int(rng.integers(min_len, max_len + 1))):
            cand = [j for j in successors[seq[-1]] if not used[j]] if seq else []
            if cand and rng.random() < TASTE["transition_prob"]:  # item-to-item transition, still taste-weighted
                nxt = cand[_draw(rng, weight[cand])]
            else:
                nxt = _draw(rng, np.where(used, 0.0, weight))
            used[nxt] = True
            seq.append(nxt)
        sequences.append(seq)
    return World(colour, shape, pattern, category, tier, successors, taste, sequences)


def _rating(rng: np.random.Generator, world: World, u: int, i: int, base: float = 2.5) -> float:
    """A 1-5 score that is high for taste-matching items (before rounding)."""
    c, s, k = world.matches(u, i)
    return min(5.0, max(1.0, base + 1.4 * c + 0.8 * s + 0.3 * k + float(rng.normal(0.0, 0.5))))


# ---------------------------------------------------------------------------------------------- images
def _render(rng: np.random.Generator, colour: str, shape: str, pattern: str, size: int,
            background: tuple[int, int, int]) -> bytes:
    """PNG of a coloured, patterned shape on a plain background, with small per-item jitter."""
    ss = 2  # supersampling for smooth edges
    big = size * ss
    cx, cy = big / 2 + rng.uniform(-0.06, 0.06) * big, big / 2 + rng.uniform(-0.06, 0.06) * big
    r = big * rng.uniform(0.30, 0.36)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        q = r * 0.85
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=255)
    else:
        if shape == "triangle":
            angles, radii = np.deg2rad([-90, 30, 150]), [r * 1.1] * 3
        elif shape == "diamond":
            angles, radii = np.deg2rad([-90, 0, 90, 180]), [r * 1.1, r * 0.75, r * 1.1, r * 0.75]
        else:  # star
            angles, radii = np.deg2rad(np.arange(10) * 36 - 90), [r * 1.1, r * 0.45] * 5
        draw.polygon([(cx + q * np.cos(a), cy + q * np.sin(a)) for a, q in zip(angles, radii)], fill=255)

    rgb = np.array(COLOURS[colour], dtype=float)
    fill = Image.new("RGB", (big, big), COLOURS[colour])
    if pattern != "plain":
        tint = tuple(int(v) for v in np.round(rgb * 0.35 + 255 * 0.65))
        pdraw = ImageDraw.Draw(fill)
        step = big // 6
        if pattern == "stripes":
            for x in range(-big, 2 * big, step):
                pdraw.line([(x, 0), (x + big, big)], fill=tint, width=max(1, step // 3))
        else:
            rad = step / 4
            for y in range(step // 2, big, step):
                for x in range(step // 2, big, step):
                    pdraw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=tint)
    jitter = rng.integers(-8, 9, 3)
    bg = tuple(int(np.clip(b + j, 0, 255)) for b, j in zip(background, jitter))
    img = Image.composite(fill, Image.new("RGB", (big, big), bg), mask)
    img = img.resize((size, size), Image.Resampling.BOX)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write_images(folder: Path, images: dict[str, bytes]) -> None:
    """Write ``name -> PNG`` into a staging folder that replaces ``folder`` in one rename; completeness of the
    whole demo is marked by ``_DONE``, written last."""
    with atomic_dir(folder) as staging:
        for name, data in images.items():
            (staging / name).write_bytes(data)


# ----------------------------------------------------------------------------------------------- helpers
def _unique_codes(rng: np.random.Generator, n: int, make) -> list[str]:
    seen: set[str] = set()
    out = []
    while len(out) < n:
        code = make(rng)
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def _alnum(rng: np.random.Generator, k: int) -> str:
    return "".join(_ALNUM[j] for j in rng.integers(0, len(_ALNUM), k))


def _timestamps(rng: np.random.Generator, n: int, start: int, end: int) -> list[int]:
    """n increasing unix times: a random start, then gaps of 1-60 days."""
    t = int(rng.integers(start, end))
    out = []
    for _ in range(n):
        out.append(t)
        t += int(rng.integers(1, 61)) * 86400 + int(rng.integers(0, 86400))
    return out


def _explanation(rng: np.random.Generator, world: World, u: int, i: int, stars: int) -> tuple[str, str]:
    """(sentence, feature word): the colour when it matches the user's taste, else another aspect."""
    c_match, s_match, _ = world.matches(u, i)
    colour, shape, pattern = list(COLOURS)[world.colour[i]], SHAPES[world.shape[i]], PATTERNS[world.pattern[i]]
    tone = "pos" if stars >= 4 else "mid" if stars == 3 else "neg"
    adj = ADJ[tone][int(rng.integers(len(ADJ[tone])))]
    if c_match and rng.random() < 0.7:
        return f"the {colour} colour is {adj}", colour
    roll = rng.random()
    if s_match and roll < 0.3:
        return f"the {SHAPE_ADJ[shape]} shape is {adj}", "shape"
    if pattern != "plain" and roll < 0.45:
        return f"the {PATTERN_ADJ[pattern]} pattern looks {adj}", "pattern"
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    if aspect == "price" and tone == "neg":
        return "the price is too high", aspect
    return f"the {aspect} is {adj}", aspect


def _p5_review_split(rng: np.random.Generator, user_of: list[int], item_of: list[int]) -> dict[str, list[int]]:
    """P5's 8:1:1 split: one review per user and per item into train first, fill train to 80 %, then
    10 % val and the rest test (random, not temporal)."""
    n = len(user_of)
    order = rng.permutation(n)
    train: set[int] = set()
    seen_u: set[int] = set()
    seen_i: set[int] = set()
    for j in order:
        if user_of[j] not in seen_u or item_of[j] not in seen_i:
            train.add(int(j))
            seen_u.add(user_of[j])
            seen_i.add(item_of[j])
    rest = [int(j) for j in rng.permutation(n) if int(j) not in train]
    n_fill = max(0, int(0.8 * n) - len(train))
    train.update(rest[:n_fill])
    rest = rest[n_fill:]
    n_val = int(round(0.1 * n))
    return {"train": sorted(train), "val": sorted(rest[:n_val]), "test": sorted(rest[n_val:])}


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=_PICKLE_PROTOCOL)


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # MovieLens files use \n and minimal quoting
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _item_truth(world: World, i: int, categories: list[str]) -> dict:
    return {"colour": list(COLOURS)[world.colour[i]], "shape": SHAPES[world.shape[i]],
            "pattern": PATTERNS[world.pattern[i]], "category": categories[world.category[i]],
            "tier": TIERS[world.tier[i]]}


def _user_truth(world: World, u: int, categories: list[str]) -> dict:
    c, s, k = world.taste[u]
    return {"colour": list(COLOURS)[c], "shape": SHAPES[s], "category": categories[k]}


# ------------------------------------------------------------------------------------------------ Amazon
def _write_amazon(root: Path, rng: np.random.Generator, world: World, image_size: int) -> dict:
    cats = list(AMAZON_CATEGORIES)
    n_items, n_users = len(world.colour), len(world.sequences)
    asins = _unique_codes(rng, n_items, lambda r: "B00" + _alnum(r, 7))
    reviewers = _unique_codes(rng, n_users, lambda r: "A" + _alnum(r, int(r.integers(12, 14))))
    item_num = rng.permutation(n_items) + 1  # random numbering: ids carry no attribute or order information
    by_num = np.argsort(item_num)  # number-1 -> internal item
    brand_of = [BRANDS[int(b)] for b in rng.integers(0, len(BRANDS), n_items)]

    names = {}
    for u in range(n_users):  # a few users have no name: P5 then falls back to the reviewerID
        names[u] = (reviewers[u] if rng.random() < 0.05 else
                    f"{FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]} {_ALNUM[int(rng.integers(10, 36))]}.")

    seq_lines = [" ".join([str(u + 1)] + [str(item_num[i]) for i in seq]) for u, seq in enumerate(world.sequences)]
    neg_lines, capped = [], 0
    for u, seq in enumerate(world.sequences):
        pool = np.setdiff1d(np.arange(1, n_items + 1), item_num[seq])
        k = min(99, len(pool))
        capped += k < 99
        neg_lines.append(" ".join([str(u + 1)] + [str(v) for v in rng.choice(pool, k, replace=False)]))

    datamaps = {
        "user2id": {reviewers[u]: str(u + 1) for u in range(n_users)},
        "item2id": {asins[i]: str(item_num[i]) for i in by_num},
        "id2user": {str(u + 1): reviewers[u] for u in range(n_users)},
        "id2item": {str(item_num[i]): asins[i] for i in by_num},
    }

    meta_lines, images = [], {}
    for i in range(n_items):
        cat = cats[world.category[i]]
        colour, shape, pattern = list(COLOURS)[world.colour[i]], SHAPES[world.shape[i]], PATTERNS[world.pattern[i]]
        tier = TIERS[world.tier[i]]
        row = {
            "asin": asins[i],
            "title": f"{brand_of[i]} {tier} {colour} {SHAPE_ADJ[shape]} {PATTERN_ADJ[pattern]} {cat}",
            "description": f"A {tier} {cat} by {brand_of[i]} in {colour}, with a {SHAPE_ADJ[shape]} "
                           f"{PATTERN_ADJ[pattern]} design.",
            "price": round(float(4 + 6 * world.tier[i] + rng.uniform(0, 5)), 2),
            "imUrl": f"images/{asins[i]}.png",
            "salesRank": {"Beauty": int(rng.integers(100, 200000))},
            "brand": brand_of[i],
            "categories": [AMAZON_CATEGORIES[cat]],
        }
        if rng.random() < 0.05:  # real meta rows often lack a price
            del row["price"]
        meta_lines.append(repr(row))
        images[f"{asins[i]}.png"] = _render(rng, colour, shape, pattern, image_size, (244, 242, 236))

    reviews, user_of, item_of = [], [], []
    for u, seq in enumerate(world.sequences):
        for i, t in zip(seq, _timestamps(rng, len(seq), 1325376000, 1396310400)):  # 2012-01 .. 2014-04
            stars = int(round(_rating(rng, world, u, i)))
            expl, feature = _explanation(rng, world, u, i, stars)
            cat = cats[world.category[i]]
            text = (f"{expl[0].upper()}{expl[1:]}. This {TIERS[world.tier[i]]} {cat} from {brand_of[i]} comes in "
                    f"{list(COLOURS)[world.colour[i]]} with a {SHAPE_ADJ[SHAPES[world.shape[i]]]} look. "
                    + ("Would buy again." if stars >= 4 else "Probably will not buy again."))
            tm = time.gmtime(t)
            reviews.append({
                "reviewerID": reviewers[u], "asin": asins[i], "reviewerName": names[u], "helpful": [0, 0],
                "reviewText": text, "overall": float(stars), "summary": SUMMARY[stars], "unixReviewTime": t,
                "reviewTime": f"{tm.tm_mon:02d} {tm.tm_mday}, {tm.tm_year}", "explanation": expl,
                "feature": feature,
            })
            user_of.append(u)
            item_of.append(i)
    split = _p5_review_split(rng, user_of, item_of)
    review_splits = {k: [reviews[j] for j in idx] for k, idx in split.items()}

    write_text(root / "sequential_data.txt", "\n".join(seq_lines) + "\n")
    write_text(root / "negative_samples.txt", "\n".join(neg_lines) + "\n")
    write_text(root / "datamaps.json", json.dumps(datamaps))
    write_bytes(root / "user_id2name.pkl", _pickle({str(u + 1): names[u] for u in range(n_users)}))
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(("\n".join(meta_lines) + "\n").encode())
    write_bytes(root / "meta.json.gz", buf.getvalue())
    write_bytes(root / "item2img_dict.pkl", _pickle({asins[i]: f"images/{asins[i]}.png" for i in range(n_items)}))
    write_bytes(root / "exp_splits.pkl", _pickle(review_splits))
    write_bytes(root / "review_splits.pkl", _pickle(review_splits))
    _write_images(root / "images", images)
    return {
        "categories": cats,
        "negatives_per_user": 99 if not capped else f"min(99, items not in the sequence); {capped} users < 99",
        "users": {str(u + 1): {**_user_truth(world, u, cats), "raw_id": reviewers[u]} for u in range(n_users)},
        "items": {str(item_num[i]): {**_item_truth(world, i, cats), "asin": asins[i]} for i in by_num},
    }


# --------------------------------------------------------------------------------------------------- POG
def _write_pog(root: Path, rng: np.random.Generator, world: World, image_size: int) -> dict:
    cats = list(POG_CATEGORIES)
    n_items, n_users = len(world.colour), len(world.sequences)
    item_ids = _unique_codes(rng, n_items, lambda r: str(int(r.integers(10**8, 10**10))))
    user_ids = _unique_codes(rng, n_users, lambda r: "".join("0123456789abcdef"[j] for j in r.integers(0, 16, 32)))
    brand_of = [BRANDS[int(b)] for b in rng.integers(0, len(BRANDS), n_items)]

    # Outfits: 3-4 items of distinct categories around one colour (compatible looks).
    n_outfits = max(10, n_items // 3)
    outfit_ids = _unique_codes(rng, n_outfits, lambda r: str(int(r.integers(10**7, 10**9))))
    outfits = []
    for _ in range(n_outfits):
        first, size = int(rng.integers(n_items)), int(rng.integers(3, 5))
        members = [first]
        for k in rng.permutation(len(cats)):
            if len(members) >= size or k == world.category[first]:
                continue
            pool = np.flatnonzero(world.category == k)
            w = np.where(world.colour[pool] == world.colour[first], 6.0, 1.0)
            members.append(int(rng.choice(pool, p=w / w.sum())))
        outfits.append(members)

    item_lines, images = [], {}
    for i in range(n_items):
        colour, shape, pattern = list(COLOURS)[world.colour[i]], SHAPES[world.shape[i]], PATTERNS[world.pattern[i]]
        cat = cats[world.category[i]]
        title = f"{brand_of[i]} {TIERS[world.tier[i]]} {colour} {PATTERN_ADJ[pattern]} {shape} print {cat}"
        item_lines.append(f"{item_ids[i]},{POG_CATEGORIES[cat]},//img.example.invalid/{item_ids[i]}.png,{title}")
        images[f"{item_ids[i]}.png"] = _render(rng, colour, shape, pattern, image_size, (255, 255, 255))

    member = np.zeros((n_outfits, n_items))
    for o, m in enumerate(outfits):
        member[o, m] = 1.0 / len(m)
    user_lines = []
    for u, seq in enumerate(world.sequences):
        c, s, _ = world.taste[u]
        score = member @ (2.0 * (world.colour == c) + 1.0 * (world.shape == s))  # mean taste match per outfit
        best = int(np.argmax(score + rng.gumbel(0.0, 0.5, n_outfits)))
        user_lines.append(f"{user_ids[u]},{';'.join(item_ids[i] for i in seq)},{outfit_ids[best]}")
    outfit_lines = [f"{outfit_ids[o]},{';'.join(item_ids[i] for i in m)}" for o, m in enumerate(outfits)]

    write_text(root / "user_data.txt", "\n".join(user_lines) + "\n")
    write_text(root / "item_data.txt", "\n".join(item_lines) + "\n")
    write_text(root / "outfit_data.txt", "\n".join(outfit_lines) + "\n")
    _write_images(root / "images", images)
    return {
        "categories": {c: POG_CATEGORIES[c] for c in cats},
        "users": {user_ids[u]: _user_truth(world, u, cats) for u in range(n_users)},
        "items": {item_ids[i]: _item_truth(world, i, cats) for i in range(n_items)},
    }


# --------------------------------------------------------------------------------------------- MovieLens
_ML_NAMES = ("{C} {S}, The", "{C} {S} Returns", "Night of the {C} {S}", "{C} {S}", "Return of the {C} {S}",
             "{C} {S} and the {P} Sky", "Last {C} {S}, A")


def _write_movielens(root: Path, rng: np.random.Generator, world: World, image_size: int) -> dict:
    cats = list(ML_GENRES)
    n_items, n_users = len(world.colour), len(world.sequences)
    movie_ids = [int(v) for v in rng.permutation(np.sort(rng.choice(np.arange(1, 20 * n_items), n_items,
                                                                       replace=False)))]
    order = sorted(range(n_items), key=lambda i: movie_ids[i])

    movie_rows, link_rows, images = [], [], {}
    for i in order:
        colour, shape, pattern = list(COLOURS)[world.colour[i]], SHAPES[world.shape[i]], PATTERNS[world.pattern[i]]
        name = _ML_NAMES[int(rng.integers(len(_ML_NAMES)))].format(
            C=colour.capitalize(), S=shape.capitalize(), P=PATTERN_ADJ[pattern].capitalize())
        genres = {cats[world.category[i]]}
        if rng.random() < 0.5:
            genres.add(ML_EXTRA_GENRES[int(rng.integers(len(ML_EXTRA_GENRES)))])
        movie_rows.append([movie_ids[i], f"{name} ({int(rng.integers(1950, 2019))})", "|".join(sorted(genres))])
        tmdb = "" if rng.random() < 0.01 else int(rng.integers(2, 500000))  # the real file has a few blanks
        link_rows.append([movie_ids[i], f"{int(rng.integers(10**4, 10**7)):07d}", tmdb])
        images[f"{movie_ids[i]}.png"] = _render(rng, colour, shape, pattern, image_size, (28, 28, 38))

    rating_rows, tag_rows = [], []
    for u, seq in enumerate(world.sequences):
        c, s, _ = world.taste[u]
        dislike_pool = np.flatnonzero((world.colour != c) & (world.shape != s) & ~np.isin(np.arange(n_items), seq))
        n_dis = min(len(dislike_pool), int(rng.integers(2, 6)))
        disliked = [int(j) for j in rng.choice(dislike_pool, n_dis, replace=False)]
        items = list(seq)
        for j in disliked:  # interleave the disliked items at random times
            items.insert(int(rng.integers(0, len(items) + 1)), j)
        for i, t in zip(items, _timestamps(rng, len(items), 946684800, 1483228800)):  # 2000 .. 2017
            # base 3.0: colour matches land at 4-5 stars, other items mostly below 4
            score = _rating(rng, world, u, i, base=3.0) if i not in disliked else float(rng.uniform(0.5, 3.0))
            rating = float(np.clip(np.round(score * 2) / 2, 0.5, 5.0))
            rating_rows.append([u + 1, movie_ids[i], rating, t])
            if rating >= 4 and rng.random() < 0.25:
                tag = [list(COLOURS)[world.colour[i]], SHAPES[world.shape[i]], "visually stunning",
                       PATTERN_ADJ[PATTERNS[world.pattern[i]]]][int(rng.integers(4))]
                tag_rows.append([u + 1, movie_ids[i], tag, t + int(rng.integers(60, 3600))])
    rating_rows.sort(key=lambda r: (r[0], r[1]))  # as in ml-latest-small: by user, then movie (not by time)
    tag_rows.sort(key=lambda r: (r[0], r[1]))

    write_text(root / "movies.csv", _csv(["movieId", "title", "genres"], movie_rows))
    write_text(root / "ratings.csv", _csv(["userId", "movieId", "rating", "timestamp"], rating_rows))
    write_text(root / "links.csv", _csv(["movieId", "imdbId", "tmdbId"], link_rows))
    write_text(root / "tags.csv", _csv(["userId", "movieId", "tag", "timestamp"], tag_rows))
    _write_images(root / "posters", images)
    return {
        "categories": cats,
        "users": {str(u + 1): _user_truth(world, u, cats) for u in range(n_users)},
        "items": {str(movie_ids[i]): _item_truth(world, i, cats) for i in order},
    }


# ------------------------------------------------------------------------------------------------- entry
_README = """Demo shop written by common.data.demo (version {version}; n_users={n_users}, n_items={n_items},
seed={seed}, image_size={image_size}). Deterministic: the same arguments give byte-identical files.

Folders (each in the real file format its reader expects):
  amazon/     P5/VIP5 layout: sequential_data.txt, negative_samples.txt, datamaps.json, user_id2name.pkl,
              meta.json.gz, item2img_dict.pkl, exp_splits.pkl, review_splits.pkl, images/<ASIN>.png
  pog/        POG/iFashion layout: user_data.txt, item_data.txt, outfit_data.txt, images/<item_id>.png
              (pic_url points at the non-resolving host img.example.invalid; use the local images)
  movielens/  ml-latest-small layout: movies.csv, ratings.csv, links.csv, tags.csv, posters/<movieId>.png

Planted structure (the same recipe, with different random draws, in each folder):
  - Items: colour ({colours}),
    shape ({shapes}), pattern ({patterns}),
    a category and a price tier ({tiers}).
    The image of an item is rendered from colour, shape and pattern; titles name them too.
  - Users: a latent preferred colour, shape and category. Each sequence (amazon/pog: 6-15 items,
    movielens: 12-22 items before the disliked ones are added) is drawn item by item with weight
    exp(pop + {colour}*[colour] + {shape}*[shape] + {category}*[category]), where pop ~ N(0, {pop_std}) is a mild
    popularity skew, and with probability {transition_prob} the next item is one of the previous item's 3
    successors (same category, next price tier, mostly same colour). Lengths are capped at n_items // 2.
  - Amazon item numbers are a random permutation: the number of an item tells nothing about it.
  - Amazon reviews: ratings are higher for taste-matching items; each review has an explanation naming a
    feature word (the colour when it matches the user's taste, else shape/pattern/texture/scent/price/
    packaging) and `feature` = that word. Every review has an explanation, so exp_splits and review_splits
    hold the same P5-style random 8:1:1 split. negative_samples.txt: {negatives} negatives per user.
  - MovieLens: 2-5 extra disliked movies per user (no taste match) rated 0.5-3.0; a min_rating=4 filter keeps
    mostly taste-matching movies. ratings.csv is sorted by (userId, movieId) as in the real release.
  - POG: outfits are 3-4 items of distinct categories around one colour; each user's outfit_id is an
    outfit close to the user's taste. One line per user.

truth.json holds each user's taste and each item's attributes, keyed by the ids used in the files. It is for
tests and benchmarks only: models never read it.
"""


def generate_demo(out: Path, n_users: int = 300, n_items: int = 150, seed: int = 0, image_size: int = 64,
                  overwrite: bool = False) -> dict[str, Path]:
    """Write the demo shop under ``out`` and return the folder of each format.

    Args:
        out: folder to write; gets ``amazon/``, ``pog/``, ``movielens/``, ``README.txt``, ``truth.json``, ``_DONE``.
        n_users: users per format.
        n_items: items per format (at least 20; 114 or more gives every Amazon user 99 negatives).
        seed: random seed; the same arguments give byte-identical files.
        image_size: side of the square PNG item images, in pixels.
        overwrite: regenerate even if ``out`` holds a complete demo (with these or other arguments) or an
            ``amazon/``, ``pog/``, ``movielens/`` folder that the generator did not write (it is deleted).

    Returns:
        ``{"amazon": out/"amazon", "pog": out/"pog", "movielens": out/"movielens"}``.

    A complete folder (``_DONE`` written last, same arguments) makes the call a no-op; a folder left by an
    interrupted run is cleaned and rewritten.

    Raises:
        FileExistsError: ``out`` holds a demo made with other arguments, or data the generator did not write,
            and ``overwrite`` is False.
        ValueError: sizes too small to plant the structure.
    """
    if n_users < 2 or n_items < 20 or image_size < 8:
        raise ValueError(f"generate_demo needs n_users >= 2, n_items >= 20, image_size >= 8; got "
                         f"n_users={n_users}, n_items={n_items}, image_size={image_size}")
    out = Path(out)
    paths = {d: out / d for d in DOMAINS}
    params = {"generator": "common.data.demo", "version": VERSION, "n_users": n_users, "n_items": n_items,
              "seed": seed, "image_size": image_size}
    done = out / _DONE
    if done.exists():
        try:
            previous = json.loads(done.read_text())
        except ValueError:
            previous = None
        if previous == params and not overwrite:
            return paths
        if not overwrite:
            raise FileExistsError(f"{out} holds a demo made with other arguments ({previous}); pass "
                                  f"overwrite=True or choose another folder")
    ours = [out / n for n in (*DOMAINS, "README.txt", "truth.json")]
    if any(p.exists() for p in ours) and not done.exists() and not (out / _IN_PROGRESS).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds amazon/, pog/, movielens/ or README.txt not written by "
                              f"the demo generator; pass overwrite=True or choose another folder")

    write_text(out / _IN_PROGRESS, json.dumps(params) + "\n")
    done.unlink(missing_ok=True)
    for p in ours:  # leftovers of an interrupted run or an overwritten demo
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    seeds = np.random.SeedSequence([seed, VERSION]).spawn(len(DOMAINS))
    max_len = min(15, n_items // 2)
    truth = {"attributes": {"colours": COLOURS, "shapes": list(SHAPES), "patterns": list(PATTERNS),
                            "tiers": list(TIERS)}}
    negatives = None
    for domain, ss in zip(DOMAINS, seeds):
        rng = np.random.default_rng(ss)
        if domain == "movielens":  # users rate more movies than they review products
            world = _make_world(rng, n_users, n_items, len(ML_GENRES), min(12, max_len), min(22, n_items // 2))
            truth[domain] = _write_movielens(paths[domain], rng, world, image_size)
        else:
            n_cat = len(AMAZON_CATEGORIES) if domain == "amazon" else len(POG_CATEGORIES)
            world = _make_world(rng, n_users, n_items, n_cat, 6, max_len)
            writer = _write_amazon if domain == "amazon" else _write_pog
            truth[domain] = writer(paths[domain], rng, world, image_size)
        if domain == "amazon":
            negatives = truth[domain]["negatives_per_user"]
        truth[domain]["sequence_weights"] = dict(TASTE)

    write_text(out / "truth.json", json.dumps(truth, indent=1) + "\n")
    write_text(out / "README.txt", _README.format(
        version=VERSION, n_users=n_users, n_items=n_items, seed=seed, image_size=image_size,
        colours=", ".join(COLOURS), shapes=", ".join(SHAPES), patterns=", ".join(PATTERNS), tiers=", ".join(TIERS),
        negatives=negatives, **TASTE))
    write_text(done, json.dumps(params) + "\n")
    (out / _IN_PROGRESS).unlink(missing_ok=True)
    return paths
