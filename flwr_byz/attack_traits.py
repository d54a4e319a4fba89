"""What each attack of :data:`flwr_byz.attacks.ATTACKS` needs, without torch: the one table of attack traits.

The attack classes take their ``shared``, ``needs_loss`` and ``needs_flipped`` from here
(:class:`flwr_byz.attacks.Attack`), so a Byzantine-capable ClientApp can check a run config's attack and answer
the role query without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traits:
    """``shared``: every Byzantine node would compute the same vector (deterministic in the honest vectors and
    the context), so a simulation computes it once per round; attacks with per-node randomness, data or state are
    not. ``needs_loss``: the attack scores candidates with the honest loss (JUMP), which whoever runs it provides.
    ``needs_flipped``: it sends the honest pipeline's vector on flipped labels (LF), which whoever runs it
    computes."""

    shared: bool = True
    needs_loss: bool = False
    needs_flipped: bool = False


TRAITS: dict[str, Traits] = {
    "sf": Traits(),
    "foe": Traits(),
    "alie": Traits(),
    "lf": Traits(shared=False, needs_flipped=True),
    "mimic": Traits(shared=False),  # per-node state and random start
    "minmax": Traits(),
    "minsum": Traits(),
    "jump": Traits(needs_loss=True),
    "gaussian": Traits(shared=False),
    "inf": Traits(),
    "ipm": Traits(),
    "alie-opt": Traits(),
    "ipm-opt": Traits(),
    "fang": Traits(shared=False),  # the trimmed-mean variant: each node draws its own values
    "agr-tailored": Traits(),
    "mpaf": Traits(),  # stateful (base model) but deterministic: one vector per round, kept by the leader
    "poisonedfl": Traits(),  # stateful (model history, sign vector, scale), deterministic given the seed
    "rop": Traits(),  # stateful (last model and step), deterministic
}
"""The traits of every attack a run config can name (the names of :data:`flwr_byz.attacks.ATTACKS`)."""


def traits(name: str) -> Traits:
    """The traits of attack ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    found = TRAITS.get(name)
    if found is None:
        raise ValueError(f"unknown attack {name!r}; valid: {sorted(TRAITS)}")
    return found
