"""Synthetic Instacart-format data: `kuberec data instacart-synth --users N --seed S`.

Writes the six Instacart files (kuberec.datasets.instacart) from a generative model of grocery shopping; the model,
its parameters and how its output compares with the public dataset are in docs/instacart-synth.md. In short:

- a catalogue of 21 departments, 134 aisles and P products (default: Instacart's 49,688) with Zipf-like popularity
  (a few staples, a long tail) and a replenishment cycle per product (how many orders it lasts);
- users with persistent tastes over departments and aisles (Gamma-weighted, so each user favours a few), an
  activity level (4..100 orders, heavy-tailed), a basket size, a gap between orders and a repeat propensity;
- a persistent personal affinity per (user, product) pair (pair_affinity: a hash of seed, user and product, so it
  needs no memory), which decides how readily a product the user has bought comes back: a quarter are personal
  favourites that come back whenever drawn, most others rarely, whatever their purchase counts so far;
- orders drawn one order_number at a time for all users at once: each basket slot either repeats a product from
  one of the user's earlier orders (recent ones favoured, accepted with the pair's affinity once the product is
  due again) or explores a new one
  (aisle from the user's taste, product by popularity within the aisle); `reordered` is then derived exactly from
  each user's history;
- every user's last order is their `train` order (the public data also has `test` users, whose final order's
  contents are withheld; generated data has none), drawn by the same process, so it depends on history.

Everything is vectorised numpy over chunks of CHUNK_USERS users, streamed to the CSV files chunk by chunk, so memory
stays flat (about 1 GB) from 1,000 users to Instacart scale (~200,000 users, ~3.4M orders, ~32M order lines).
The output is a pure function of (users, seed, products).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kuberec.datasets.instacart import (
    AISLES,
    DEPARTMENTS,
    ORDER_PRODUCTS_PRIOR,
    ORDER_PRODUCTS_TRAIN,
    ORDERS,
    PRODUCTS,
    CsvFile,
)
from kuberec.errors import KuberecError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # 2: personal (user, product) affinity, full catalogue by default; 3: replenishment cycles
MANIFEST = "instacart-synth.json"
CHUNK_USERS = 10_000  # fixed: the random streams are per chunk, so changing it changes the output

# -- model parameters (docs/instacart-synth.md explains each and what it was tuned against) -------------------
N_AISLES = 134
INSTACART_PRODUCTS = 49_688
MIN_ORDERS, MAX_ORDERS = 4, 100  # per user, the final (train) order included, as in the public data
ACTIVITY_SHAPE, ACTIVITY_MEAN = 0.75, 11.6  # extra orders beyond 4 ~ Poisson(Gamma(shape, mean/shape))
ZIPF_EXPONENT, ZIPF_OFFSET = 1.0, 10.0  # product popularity ~ (rank + offset) ** -exponent
AISLE_BOOST_SIGMA = 0.7  # some aisles (fresh produce, dairy) are much busier than others
DEPT_TASTE_SHAPE, AISLE_TASTE_SHAPE = 0.6, 0.5  # smaller = more concentrated tastes
BASKET_MEDIAN, BASKET_SIGMA, BASKET_SHAPE, MAX_BASKET = 9.3, 0.55, 3.0, 100
FINAL_BASKET = 1.38  # final (train) orders are bigger than prior ones in Instacart (11.8 vs 9.1 lines)
REPEAT_A, REPEAT_B = 3.85, 2.0  # per-user repeat propensity ~ Beta(a, b)
AFFINITY_MU, AFFINITY_SIGMA = -1.0, 1.5  # pair affinity = min(1, LogNormal(mu, sigma)): staples at 1, long tail
REPEAT_TRIES = 6  # a repeat draws a past line up to this often, kept with the pair's affinity; else it explores
# Replenishment: a product lasts `cycle` orders (per product: an aisle effect times the product's own), and a past
# product is kept with min(1, orders since its last purchase / cycle) ** CYCLE_POWER times the pair's affinity.
CYCLE_MEDIAN, CYCLE_AISLE_SIGMA, CYCLE_PRODUCT_SIGMA, CYCLE_POWER = 2.0, 0.4, 0.6, 2.0
REPEAT_RAMP, REPEAT_RAMP_ORDERS = 0.5, 3.0  # repeats are rarer while a history is short
RECENCY_SHARE, RECENCY_P = 0.5, 0.35  # half the repeats come from the last few orders (geometric)
GAP_MEDIAN, GAP_SIGMA, GAP_ACTIVITY, GAP_SHAPE = 11.8, 0.7, 0.35, 1.6
WEEKLY_SNAP = 0.2  # share of gaps that fall on whole weeks (a weekly shopping routine)
DAYS_CAP = 30  # the public data caps days_since_prior_order at 30
DOW_PREFERENCE = 0.4
DOW_P = np.array([0.19, 0.18, 0.13, 0.12, 0.12, 0.13, 0.13])
HOUR_P = np.array([7, 4, 2, 2, 2, 3, 9, 28, 54, 77, 86, 84, 80, 80, 82, 81, 76, 63, 50, 39, 30, 24, 19, 12],
                  dtype=float)
HOUR_SD = 2.0
CART_REORDER_SHIFT = 0.3  # reordered items tend to go into the cart first

DEPARTMENT_NAMES = (
    "produce", "dairy eggs", "snacks", "beverages", "frozen", "pantry", "bakery", "canned goods", "deli",
    "dry goods pasta", "household", "meat seafood", "breakfast", "personal care", "babies", "international",
    "alcohol", "pets", "bulk", "health", "floral",
)
AISLE_WORDS = ("essentials", "fresh", "organic", "classics", "specialty", "favorites", "value", "premium",
               "family size", "seasonal", "light", "natural", "gourmet", "everyday")
BRANDS = ("Northfield", "Sunvale", "Harvest Lane", "Bright Acre", "Blue Fern", "Oakridge", "Meadowbrook", "Tidewater",
          "Golden Hill", "Riverside", "Cedar Grove", "Silver Birch", "Maple Row", "Stonebridge", "Clearwater",
          "Wildflower")


class SynthError(KuberecError):
    """The generator was asked for something it cannot make."""


@dataclass(frozen=True)
class SynthResult:
    out: str
    users: int
    seed: int
    products: int
    orders: int
    prior_lines: int
    train_lines: int
    reordered_share_prior: float
    seconds: float
    generator_version: int = GENERATOR_VERSION


def default_products(users: int) -> int:
    """Catalogue size: Instacart's 49,688 for any number of users (a smaller one makes baskets too repetitive).

    Takes `users` so that callers comparing a manifest with the defaults (kuberec.ingest.steps.synthesize) need not
    change.
    """
    del users
    return INSTACART_PRODUCTS


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 whose outputs look independent for consecutive inputs."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def pair_affinity(seed: int, user_id: np.ndarray, product_id: np.ndarray) -> np.ndarray:
    """Personal affinity in (0, 1] of each (user_id, product_id) (1-based, as in the files) under `seed`.

    A hash, not a stored draw: the same pair has the same affinity in every order (and from the first time it is
    bought) with no per-pair memory, and anyone can recompute it (the tests do). min(1, LogNormal(mu, sigma)),
    from a Box-Muller normal of the hash's two 32-bit halves.
    """
    salt = _mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))
    key = (np.asarray(user_id).astype(np.uint64) << np.uint64(32)) | np.asarray(product_id).astype(np.uint64)
    bits = _mix64(key ^ salt)
    u1 = ((bits >> np.uint64(32)).astype(np.float64) + 0.5) / 2.0 ** 32
    u2 = ((bits & np.uint64(0xFFFFFFFF)).astype(np.float64) + 0.5) / 2.0 ** 32
    normal = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return np.minimum(np.exp(AFFINITY_MU + AFFINITY_SIGMA * normal), 1.0)


@dataclass(frozen=True)
class Catalogue:
    product_aisle: np.ndarray  # [P] aisle index (0-based) of product index p (product_id = p + 1)
    aisle_department: np.ndarray  # [A] department index of each aisle
    aisle_weight: np.ndarray  # [A] share of all purchases each aisle gets from popularity alone
    by_aisle: np.ndarray  # [P] product indexes sorted by aisle
    by_aisle_keys: np.ndarray  # [P] aisle + cumulative popularity within the aisle, in (aisle, aisle + 1]
    aisle_names: list[str]
    product_names: list[str]
    cycle: np.ndarray  # [P] orders product index p lasts before it is due again (>= 1: some are due every order)


def make_catalogue(rng: np.random.Generator, n_products: int) -> Catalogue:
    n_departments = len(DEPARTMENT_NAMES)
    # Every department has at least one aisle, every aisle at least one product.
    aisle_department = np.sort(np.concatenate([
        np.arange(n_departments),
        rng.choice(n_departments, N_AISLES - n_departments, p=rng.dirichlet(np.full(n_departments, 2.0))),
    ]))
    counts = 1 + rng.multinomial(n_products - N_AISLES, rng.dirichlet(np.full(N_AISLES, 1.5)))
    product_aisle = rng.permutation(np.repeat(np.arange(N_AISLES), counts))  # ids are not grouped by aisle
    rank = rng.permutation(n_products)
    popularity = (rank + ZIPF_OFFSET) ** -ZIPF_EXPONENT
    popularity *= rng.lognormal(0.0, AISLE_BOOST_SIGMA, N_AISLES)[product_aisle]
    by_aisle = np.argsort(product_aisle, kind="stable")
    aisle_of_sorted = product_aisle[by_aisle]
    cumulative = np.cumsum(popularity[by_aisle])
    aisle_end = np.searchsorted(aisle_of_sorted, np.arange(N_AISLES), side="right") - 1
    aisle_total = cumulative[aisle_end]
    aisle_before = np.concatenate([[0.0], aisle_total[:-1]])
    within = (cumulative - aisle_before[aisle_of_sorted]) / (aisle_total - aisle_before)[aisle_of_sorted]
    within[aisle_end] = 1.0  # exact top of each aisle's interval, so a draw never spills into the next aisle
    aisle_weight = np.diff(np.concatenate([[0.0], aisle_total])) / aisle_total[-1]

    aisle_names = []
    seen: dict[int, int] = {}
    for department in aisle_department:
        k = seen.get(int(department), 0)
        seen[int(department)] = k + 1
        word = AISLE_WORDS[k % len(AISLE_WORDS)] + ("" if k < len(AISLE_WORDS) else f" {k // len(AISLE_WORDS) + 1}")
        aisle_names.append(f"{DEPARTMENT_NAMES[department]} {word}")
    brands = rng.integers(0, len(BRANDS), n_products)
    product_names = [f"{BRANDS[b]} {aisle_names[a].title()} {p + 1}"
                     for p, (b, a) in enumerate(zip(brands.tolist(), product_aisle.tolist()))]
    cycle = np.maximum(1.0, CYCLE_MEDIAN * rng.lognormal(0.0, CYCLE_AISLE_SIGMA, N_AISLES)[product_aisle]
                       * rng.lognormal(0.0, CYCLE_PRODUCT_SIGMA, n_products))
    return Catalogue(product_aisle, aisle_department, aisle_weight, by_aisle, aisle_of_sorted + within,
                     aisle_names, product_names, cycle)


def catalogue_for(seed: int, n_products: int) -> Catalogue:
    """The catalogue `generate(..., seed, products=n_products)` writes (and shops from): anyone can rebuild it."""
    return make_catalogue(np.random.default_rng([seed, 0]), n_products)


@dataclass
class _Buffer:
    """Growable columns of order lines (user index in chunk, order_number, product index)."""

    user: np.ndarray
    number: np.ndarray
    product: np.ndarray
    size: int = 0

    @classmethod
    def with_capacity(cls, capacity: int) -> "_Buffer":
        return cls(np.empty(capacity, np.int32), np.empty(capacity, np.int16), np.empty(capacity, np.int32))

    def append(self, user: np.ndarray, number: int, product: np.ndarray) -> None:
        end = self.size + len(user)
        if end > len(self.user):
            capacity = max(end, 2 * len(self.user))
            for name in ("user", "number", "product"):
                grown = np.empty(capacity, getattr(self, name).dtype)
                grown[:self.size] = getattr(self, name)[:self.size]
                setattr(self, name, grown)
        self.user[self.size:end] = user
        self.number[self.size:end] = number
        self.product[self.size:end] = product
        self.size = end


def _weighted_pick(keys: np.ndarray, row: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each `row`, an index into the row-major categorical table whose keys are row + cumulative weight."""
    return np.searchsorted(keys, row + rng.random(len(row)), side="right")


def simulate_chunk(rng: np.random.Generator, catalogue: Catalogue, n_orders: np.ndarray, seed: int = 0,
                   first_user: int = 0) -> dict[str, np.ndarray]:
    """Orders and order lines of one chunk of users (local indexes 0..C-1), `n_orders[u]` orders each.

    Local user u is user_id first_user + u + 1, whose pair affinities are pair_affinity(seed, ...).
    """
    users = len(n_orders)
    n_products = len(catalogue.product_aisle)
    basket = rng.lognormal(np.log(BASKET_MEDIAN), BASKET_SIGMA, users)
    repeat = rng.beta(REPEAT_A, REPEAT_B, users)
    gap = rng.lognormal(np.log(GAP_MEDIAN) - GAP_ACTIVITY * np.log(n_orders / (MIN_ORDERS + ACTIVITY_MEAN)),
                        GAP_SIGMA)
    taste = (catalogue.aisle_weight[None, :]
             * rng.gamma(DEPT_TASTE_SHAPE, size=(users, len(DEPARTMENT_NAMES)))[:, catalogue.aisle_department]
             * rng.gamma(AISLE_TASTE_SHAPE, size=(users, N_AISLES)))
    cumulative = np.cumsum(taste, axis=1)
    cumulative /= cumulative[:, -1:]
    cumulative[:, -1] = 1.0
    taste_keys = (np.arange(users)[:, None] + cumulative).ravel()
    del taste, cumulative

    top = int(n_orders.max())
    start = np.zeros((users, top + 1), np.int64)  # where order k of user u starts in the line buffer
    size = np.zeros((users, top + 1), np.int32)
    lines = _Buffer.with_capacity(int(n_orders.sum() * BASKET_MEDIAN * 1.5))
    # Every (user, product) bought so far, as sorted keys user * n_products + product, and its last order number.
    bought_keys, bought_last = np.empty(0, np.int64), np.empty(0, np.int16)
    for k in range(1, top + 1):
        active = np.flatnonzero(n_orders >= k)
        intensity = rng.gamma(BASKET_SHAPE, basket[active] / BASKET_SHAPE)
        intensity *= np.where(n_orders[active] == k, FINAL_BASKET, 1.0)
        slots = np.minimum(1 + rng.poisson(np.maximum(intensity - 1.0, 0.0)), MAX_BASKET)
        slot_user = np.repeat(active, slots)
        products = np.empty(len(slot_user), np.int64)
        if k > 1:
            ramp = 1.0 - REPEAT_RAMP * np.exp(-(k - 2) / REPEAT_RAMP_ORDERS)
            is_repeat = rng.random(len(slot_user)) < repeat[slot_user] * ramp
        else:
            is_repeat = np.zeros(len(slot_user), bool)
        # Repeats: a line of one of the user's earlier orders (the last few favoured), kept with the pair's
        # affinity, so of two products bought as often and as recently the user's favourite comes back more, and
        # only once it is due (a product bought 1 order ago with a 4-order cycle is kept 1/16 as often).
        pending = np.flatnonzero(is_repeat)
        for _ in range(REPEAT_TRIES):
            who = slot_user[pending]
            recent = k - np.minimum(rng.geometric(RECENCY_P, len(who)), k - 1)
            anywhere = 1 + (rng.random(len(who)) * (k - 1)).astype(np.int64)
            past = np.where(rng.random(len(who)) < RECENCY_SHARE, recent, anywhere)
            line = start[who, past] + (rng.random(len(who)) * size[who, past]).astype(np.int64)
            candidate = lines.product[line]
            last = bought_last[np.searchsorted(bought_keys, who.astype(np.int64) * n_products + candidate)]
            due = np.minimum(1.0, (k - last) / catalogue.cycle[candidate]) ** CYCLE_POWER
            kept = rng.random(len(who)) < pair_affinity(seed, who + first_user + 1, candidate + 1) * due
            products[pending[kept]] = candidate[kept]
            pending = pending[~kept]
        is_repeat[pending] = False  # no favourite came up: the slot explores instead
        # Exploration: an aisle from the user's taste, then a product by popularity within that aisle.
        who = slot_user[~is_repeat]
        aisle = _weighted_pick(taste_keys, who, rng) - who * N_AISLES
        products[~is_repeat] = catalogue.by_aisle[_weighted_pick(catalogue.by_aisle_keys, aisle, rng)]
        # A product appears once per order: collapse duplicates (sorted by user, so each order is contiguous).
        unique = np.unique(slot_user * n_products + products)
        order_user = (unique // n_products).astype(np.int32)
        per_user = np.bincount(order_user, minlength=users)
        start[active, k] = lines.size + np.concatenate([[0], np.cumsum(per_user[active])[:-1]])
        size[active, k] = per_user[active]
        lines.append(order_user, k, unique % n_products)
        at = np.searchsorted(bought_keys, unique)
        known = at < len(bought_keys)
        known[known] = bought_keys[at[known]] == unique[known]
        bought_last[at[known]] = k
        bought_keys = np.insert(bought_keys, at[~known], unique[~known])
        bought_last = np.insert(bought_last, at[~known], k)

    user, number, product = lines.user[:lines.size], lines.number[:lines.size], lines.product[:lines.size]
    # reordered: the user bought this product in an earlier order.
    by_history = np.lexsort((number, product, user))
    reordered = np.zeros(len(user), np.int8)
    reordered[by_history[1:]] = ((user[by_history[1:]] == user[by_history[:-1]])
                                 & (product[by_history[1:]] == product[by_history[:-1]]))
    # Cart position within each order, reorders tending first.
    cart_key = rng.random(len(user)) + CART_REORDER_SHIFT * (1 - reordered)
    by_cart = np.lexsort((cart_key, number, user))
    user, number, product, reordered = user[by_cart], number[by_cart], product[by_cart], reordered[by_cart]
    first = np.ones(len(user), bool)
    first[1:] = (user[1:] != user[:-1]) | (number[1:] != number[:-1])
    position = np.arange(len(user))
    add_to_cart = position - np.maximum.accumulate(np.where(first, position, 0)) + 1

    order_user = np.repeat(np.arange(users), n_orders)
    order_number = np.arange(len(order_user)) - np.repeat(np.cumsum(n_orders) - n_orders, n_orders) + 1
    days = rng.gamma(GAP_SHAPE, gap[order_user] / GAP_SHAPE)
    weekly = (rng.random(len(days)) < WEEKLY_SNAP) & (days >= 3.5)
    days = np.where(weekly, 7 * np.round(days / 7), np.round(days))
    days = np.minimum(days, DAYS_CAP)
    days[order_number == 1] = np.nan
    preferred_dow = rng.choice(7, users, p=DOW_P)
    dow = np.where(rng.random(len(order_user)) < DOW_PREFERENCE, preferred_dow[order_user],
                   rng.choice(7, len(order_user), p=DOW_P))
    preferred_hour = rng.choice(24, users, p=HOUR_P / HOUR_P.sum())
    hour = np.clip(np.round(preferred_hour[order_user] + rng.normal(0, HOUR_SD, len(order_user))), 0, 23)
    return {
        "order_user": order_user, "order_number": order_number, "order_dow": dow.astype(np.int8),
        "order_hour_of_day": hour.astype(np.int8), "days_since_prior_order": days,
        "line_user": user, "line_number": number, "line_product": product, "add_to_cart_order": add_to_cart,
        "reordered": reordered,
    }


class _CsvOut:
    """A CSV file written chunk by chunk: a plain header line, then unquoted rows (no value needs quoting)."""

    def __init__(self, directory: Path, spec: CsvFile):
        self.handle = open(directory / spec.name, "wb")
        self.handle.write((",".join(spec.column_names) + "\n").encode())
        self.names = spec.column_names

    def write(self, columns: dict) -> None:
        import pyarrow as pa
        from pyarrow import csv

        table = pa.table({name: pa.array(columns[name], from_pandas=True) for name in self.names})
        csv.write_csv(table, self.handle, csv.WriteOptions(include_header=False, quoting_style="none"))

    def close(self) -> None:
        self.handle.close()


def generate(out: Path, users: int, seed: int = 0, products: int | None = None) -> SynthResult:
    """Write the six files for `users` users into `out` (replaced as a whole: readers never see half a dataset)."""
    if users < 1:
        raise SynthError(f"--users must be at least 1, not {users}")
    n_products = default_products(users) if products is None else products
    if n_products < N_AISLES:
        raise SynthError(f"--products must be at least {N_AISLES} (one per aisle), not {n_products}")
    began = time.monotonic()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        result = _write_all(staging, users, seed, n_products)
        result = SynthResult(**{**asdict(result), "out": str(out), "seconds": round(time.monotonic() - began, 2)})
        (staging / MANIFEST).write_text(json.dumps(asdict(result), indent=2) + "\n")
        _replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %s users, %s orders, %s prior + %s train lines to %s in %.1fs", f"{users:,}",
             f"{result.orders:,}", f"{result.prior_lines:,}", f"{result.train_lines:,}", out, result.seconds)
    return result


def _replace_dir(staging: Path, out: Path) -> None:
    if out.exists():
        retired = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired)
    else:
        staging.rename(out)


def _write_all(directory: Path, users: int, seed: int, n_products: int) -> SynthResult:
    from tqdm import tqdm

    catalogue = catalogue_for(seed, n_products)
    _write_catalogue(directory, catalogue)
    activity = np.random.default_rng([seed, 1])
    n_orders = np.minimum(MIN_ORDERS + activity.poisson(
        activity.gamma(ACTIVITY_SHAPE, ACTIVITY_MEAN / ACTIVITY_SHAPE, users)), MAX_ORDERS)
    # Order ids are a shuffle of 1..total, as in the public data (they say nothing about user or sequence).
    order_ids = np.random.default_rng([seed, 2]).permutation(int(n_orders.sum())).astype(np.int64) + 1
    first_order = np.concatenate([[0], np.cumsum(n_orders)])
    outs = {spec.name: _CsvOut(directory, spec) for spec in (ORDERS, ORDER_PRODUCTS_PRIOR, ORDER_PRODUCTS_TRAIN)}
    prior_lines = train_lines = prior_reordered = 0
    try:
        for chunk, begin in enumerate(tqdm(range(0, users, CHUNK_USERS), desc="instacart-synth", unit="chunk",
                                           disable=None)):
            end = min(begin + CHUNK_USERS, users)
            sim = simulate_chunk(np.random.default_rng([seed, 3, chunk]), catalogue, n_orders[begin:end], seed=seed,
                                 first_user=begin)
            ids = order_ids[first_order[begin]:first_order[end]]
            final = sim["order_number"] == n_orders[begin:end][sim["order_user"]]
            outs[ORDERS.name].write({
                "order_id": ids, "user_id": sim["order_user"] + begin + 1,
                "eval_set": np.where(final, "train", "prior"), "order_number": sim["order_number"],
                "order_dow": sim["order_dow"], "order_hour_of_day": sim["order_hour_of_day"],
                "days_since_prior_order": sim["days_since_prior_order"],
            })
            # Orders are laid out user by user, order_number 1..n, so (user, number) indexes `ids` directly.
            line_order = first_order[begin:end][sim["line_user"]] - first_order[begin] + sim["line_number"] - 1
            line_final = sim["line_number"] == n_orders[begin:end][sim["line_user"]]
            for spec, mask in ((ORDER_PRODUCTS_PRIOR, ~line_final), (ORDER_PRODUCTS_TRAIN, line_final)):
                outs[spec.name].write({
                    "order_id": ids[line_order[mask]], "product_id": sim["line_product"][mask] + 1,
                    "add_to_cart_order": sim["add_to_cart_order"][mask], "reordered": sim["reordered"][mask],
                })
            prior_lines += int((~line_final).sum())
            train_lines += int(line_final.sum())
            prior_reordered += int(sim["reordered"][~line_final].sum())
    finally:
        for handle in outs.values():
            handle.close()
    return SynthResult(out=str(directory), users=users, seed=seed, products=n_products,
                       orders=int(n_orders.sum()), prior_lines=prior_lines, train_lines=train_lines,
                       reordered_share_prior=round(prior_reordered / max(prior_lines, 1), 4), seconds=0.0)


def _write_catalogue(directory: Path, catalogue: Catalogue) -> None:
    for spec, columns in (
        (DEPARTMENTS, {"department_id": np.arange(1, len(DEPARTMENT_NAMES) + 1), "department": DEPARTMENT_NAMES}),
        (AISLES, {"aisle_id": np.arange(1, N_AISLES + 1), "aisle": catalogue.aisle_names}),
        (PRODUCTS, {"product_id": np.arange(1, len(catalogue.product_aisle) + 1),
                    "product_name": catalogue.product_names, "aisle_id": catalogue.product_aisle + 1,
                    "department_id": catalogue.aisle_department[catalogue.product_aisle] + 1}),
    ):
        out = _CsvOut(directory, spec)
        try:
            out.write({name: list(values) if isinstance(values, tuple) else values
                       for name, values in columns.items()})
        finally:
            out.close()
