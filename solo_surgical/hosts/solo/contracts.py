"""Per-method distillation contracts of the solo-learn host: which output is the query, which the key,
and which heads a teacher exports.

solo-learn's methods put different things under the same names: ``p`` is a predictor output in
BYOL but prototype scores in SwAV and DeepCluster v2, MoCo v3 calls its prediction ``q`` and its
momentum projection ``k``, DINO's ``z`` is a distribution over prototypes and its MLP is
``head.mlp``. So each upstream method gets an explicit contract (the README's table is this
one); a method not listed (a newer solo-learn, a user's own) falls back to :data:`GENERIC`.

The rule behind every entry: the query is the online embedding the method's loss pulls towards
the other view (the prediction where there is a predictor, else the projection), the key the
target embedding of the other view (the momentum projection where there is a momentum encoder,
else the online projection, detached), both *embeddings of the image*: never prototype scores,
which are a distribution over clusters, and never nearest neighbours, which are other images.
The teacher exports the head that produces the key-side embedding (and the predictor, if any).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Source:
    """Where an embedding comes from.

    ``branch``: "online" (the forward of a large crop) or "momentum" (its momentum forward).
    ``name``: a key of the dict that forward returns, or, with ``module=True``, the dotted path of
    a submodule whose output is recorded (by a forward hook) during that forward.
    """

    branch: str
    name: str
    module: bool = False

    def describe(self) -> str:
        where = f"output of `{self.name}`" if self.module else f"`{self.name}`"
        return f"{self.branch} {where}"


@dataclass(frozen=True)
class Contract:
    """``query`` / ``key`` sources (online keys are detached), the teacher's heads, and why."""

    query: Optional[Source]  # None: the generic rule (``p`` if returned, else ``z``)
    key: Optional[Source]  # None: the generic rule (momentum ``z`` if there is one, else online ``z``)
    projector: str = "projector"
    predictor: Optional[str] = "predictor"
    why: str = ""


P, Z = Source("online", "p"), Source("online", "z")
MZ = Source("momentum", "z")
GENERIC = Contract(None, None, why="not in the table: p if the forward returns it, else z; momentum z, else z")

CONTRACTS: dict[str, Contract] = {
    "barlow_twins": Contract(Z, Z, why="no predictor, no momentum encoder: the projection the loss acts on"),
    "byol": Contract(P, MZ, why="the prediction regresses the momentum projection of the other view"),
    "deepclusterv2": Contract(Z, Z, predictor=None,
                              why="p holds prototype scores (a distribution over clusters), not an embedding: "
                                  "the unit projection z, before the prototypes"),
    "dino": Contract(Source("online", "head.mlp", module=True), Source("momentum", "momentum_head.mlp", module=True),
                     projector="head.mlp", predictor=None,
                     why="z holds prototype scores; the bottleneck of the head's MLP (student / EMA teacher) "
                         "is the image embedding"),
    "mocov2plus": Contract(Z, MZ, why="query projection / momentum key projection, as in its InfoNCE"),
    "mocov3": Contract(Source("online", "q"), Source("momentum", "k"),
                       why="MoCo v3 names its prediction q and its momentum projection k"),
    "nnbyol": Contract(P, MZ, why="the prediction and the momentum projection of the image itself, "
                                  "not its nearest neighbour (another image)"),
    "nnclr": Contract(P, Z, why="the prediction and the image's own projection, not its nearest neighbour"),
    "nnsiam": Contract(P, Z, why="the prediction and the image's own projection, not its nearest neighbour"),
    "ressl": Contract(Z, MZ, why="online projection / momentum projection, whose relations ReSSL matches"),
    "simclr": Contract(Z, Z, why="no predictor, no momentum encoder: the projection of NT-Xent"),
    "simsiam": Contract(P, Z, why="the prediction and the stop-gradient projection of the other view"),
    "supcon": Contract(Z, Z, why="the projection of its (supervised) contrastive loss"),
    "swav": Contract(Z, Z, predictor=None,
                     why="p holds prototype scores; the unit projection z, before the prototypes"),
    "vibcreg": Contract(Z, Z, why="the projection after IterNorm (when on), what the loss acts on"),
    "vicreg": Contract(Z, Z, why="the projection the invariance term compares"),
    "wmse": Contract(Z, Z, why="the projection before whitening (whitening is a batch operation)"),
    "all4one": Contract(P, MZ, why="the first predictor's output and the momentum projection (its NNCLR term); "
                                   "the transformer's outputs mix several images"),
}


def contract_for(name: str) -> Contract:
    """The contract of the upstream method registered as ``name`` (:data:`GENERIC` if not listed)."""
    return CONTRACTS.get(name, GENERIC)
