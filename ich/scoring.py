"""The one definition of the lesion mask, the lesions, the case score and the volume.

The gateway, ``ich-model evaluate``, cross-validation and training-time figures all call this module, so a
volume in the JSON, a voxel of the DICOM SEG and a Dice in the model card are counted by the same rule.

- **Candidate mask:** FUSED > :data:`ich.spec.MASK_THRESHOLD` at the model's ``S x S`` grid.
- **Lesions:** connected components of the candidate mask in 3D (26-connectivity: adjacent slices of one
  bleed are one lesion), each described by :class:`Lesion` (volume, slices, peak and mean probability,
  agreement of the base models, distance to the inner table, brain area of its slice, mean density).
- **Which lesions count:** a :class:`CaseModel` (logistic regression on the lesion features, fitted on
  out-of-fold predictions by ``training.case_model``) gives each lesion a probability; lesions at or above
  ``keep`` form the reported mask. Why: on unseen heads the false foci sit at the vertex, against the inner
  table, beside the petrous bone and in the temporal lobes by the middle cranial fossa; they are small,
  thin, hug the bone and are seen by few base models, which is what the features measure.
- **Case score:** the highest lesion probability (``raw_score``; :data:`NO_LESION_SCORE` without a
  candidate), calibrated by the case model's calibration map into ``ich_probability``. The paper's case
  score, the highest SLICE_PROB, is kept beside it as ``max_slice_probability``.
- **Uncertainty:** the spread of the five base models' peak probabilities on the lesion that decided the
  case (:func:`case_uncertainty`), reported beside the probability; it does not change the call.
- **Subtypes:** with a subtype model inside the case model, the five subtypes' probabilities per case and
  per slice from the candidates' location and shape (:mod:`ich.subtypes`, :mod:`ich.lesion_shape`).
- **Volume:** the reported mask brought back to the source matrix (:func:`ich.seg.resize_mask_to_source`:
  the fused map, limited to the kept lesions, resized bilinearly, thresholded) times the source voxel
  volume: exactly the voxels a DICOM SEG built from :attr:`CaseScore.source_mask` holds.

Without a case model (a repository from before lesion scoring, or the tiny test repositories) the paper's
rule applies: the candidates are limited to the slices whose SLICE_PROB exceeds the mask threshold (SLICE_PROB
is taken after the weight model's opening, so elsewhere they are the strays it removes), every such lesion
is kept and the case probability is the paper's maximum slice probability.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ich import spec
from ich.calibration import Calibration, calibration_from_dict, logit
from ich.lesion_shape import brain_depth_maps, shape_features
from ich.subtypes import SubtypeModel, SubtypeScores, feature_matrix

__all__ = [
    "CASE_MODEL_FILENAME",
    "FEATURES",
    "NO_LESION_SCORE",
    "SCORES",
    "CaseModel",
    "CaseScore",
    "Lesion",
    "candidate_mask",
    "case_uncertainty",
    "find_lesions",
    "lesion_features",
    "opened_map",
    "score_case",
    "slice_spread",
    "source_volume_ml",
    "subtype_scores",
]

#: The case model's file inside a model repository.
CASE_MODEL_FILENAME: str = "case_model.json"
#: Raw case score of a study without any candidate lesion (kept off 0 so that the logit stays finite).
NO_LESION_SCORE: float = 1e-3
#: Bone on the bone-window channel (L500 W3000): HU above 300, i.e. channel value above 1300 / 3000.
_BONE_CHANNEL: float = 1300.0 / 3000.0
#: Brain-window channel (L40 W80) to HU: the window starts at 0 HU and spans 80 HU.
_BRAIN_WINDOW_HU: float = 80.0
#: Distances to bone are clipped here (mm): beyond, a lesion is simply "inside the brain".
_MAX_BONE_DISTANCE_MM: float = 20.0
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)

#: Raw case scores a case model may calibrate: the highest lesion probability of its lesion model, the
#: paper's highest slice probability (SLICE_PROB), or the case's hemorrhage burden (:func:`burden_raw`);
#: ``training.case_model`` chooses inside the training folds.
SCORES: tuple[str, ...] = ("lesion", "max_slice", "burden")

#: Lesion features the case model reads, in its coefficient order.
FEATURES: tuple[str, ...] = (
    "log_volume_ml",
    "logit_peak",
    "mean_probability",
    "log_slices",
    "bone_distance_mm",
    "brain_area_fraction",
    "inside_brain_fraction",
    "mean_hu",
    "agreement",
)


@dataclass(frozen=True)
class Lesion:
    """One connected lesion candidate (model grid)."""

    label: int  # its value in the label volume (1-based)
    voxels: int
    volume_ml: float  # model-grid voxels x model voxel volume
    first_slice: int
    last_slice: int
    peak_slice: int  # the slice holding its largest area
    peak_probability: float
    mean_probability: float
    bone_distance_mm: float  # median distance of its pixels to bone (inner table, skull base), clipped
    brain_area_fraction: float  # brain area of its peak slice / the study's largest brain area
    inside_brain_fraction: float  # share of its pixels inside the skull-stripped brain
    mean_hu: float  # mean density from the brain-window channel (saturates at 80 HU)
    agreement: float  # mean share of the five base models above the mask threshold on its pixels
    #: highest value of the opened fused map on its pixels (the SLICE_PROB it gives its slices)
    opened_peak: float = 0.0
    probability: float | None = None  # from the case model; None without one
    #: spread (population standard deviation) of the five base models' peak probabilities on its pixels
    model_spread: float = 0.0
    #: where it lies and what shape it has (``ich.lesion_shape.SHAPE_FEATURES``), for the subtype model
    shape: Mapping[str, float] = field(default_factory=dict, hash=False)

    @property
    def n_slices(self) -> int:
        return self.last_slice - self.first_slice + 1

    def feature_vector(self) -> np.ndarray:
        """The :data:`FEATURES` of this lesion, in order."""
        return np.array(
            [
                math.log1p(self.volume_ml),
                float(logit(self.peak_probability)),
                self.mean_probability,
                math.log(self.n_slices),
                self.bone_distance_mm,
                self.brain_area_fraction,
                self.inside_brain_fraction,
                self.mean_hu,
                self.agreement,
            ],
            dtype=np.float64,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "voxels": self.voxels,
            "volume_ml": self.volume_ml,
            "first_slice": self.first_slice,
            "last_slice": self.last_slice,
            "peak_slice": self.peak_slice,
            "peak_probability": self.peak_probability,
            "mean_probability": self.mean_probability,
            "bone_distance_mm": self.bone_distance_mm,
            "brain_area_fraction": self.brain_area_fraction,
            "inside_brain_fraction": self.inside_brain_fraction,
            "mean_hu": self.mean_hu,
            "agreement": self.agreement,
            "opened_peak": self.opened_peak,
            "probability": self.probability,
            "model_spread": self.model_spread,
            "shape": dict(self.shape),
        }


@dataclass(frozen=True)
class CaseModel:
    """Lesion model, calibration and operating point, stored with the weights (``case_model.json``)."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    keep: float
    calibration: Calibration
    threshold: float
    band: tuple[float, float]
    info: Mapping[str, Any] = field(default_factory=dict)
    #: which raw case score is calibrated (:data:`SCORES`), chosen inside the training folds
    score: str = "lesion"
    #: the weight model's opening (pixels), for each lesion's opened peak
    opening: int = 3
    #: subtype probabilities (``ich.subtypes``); ``None``: the case model has none and subtypes are null
    subtypes: SubtypeModel | None = None

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"case model: score {self.score!r} is not one of {SCORES}")
        n = len(FEATURES)
        if not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise ValueError(f"case model: mean, scale and coef need {n} values each")
        numbers = (*self.mean, *self.scale, *self.coef, self.intercept, self.keep, self.threshold, *self.band)
        if not all(math.isfinite(v) for v in numbers) or min(self.scale) <= 0:
            raise ValueError("case model: parameters must be finite and scales positive")
        if not (0.0 <= self.band[0] <= self.threshold <= self.band[1] <= 1.0):
            raise ValueError(
                f"case model: need 0 <= band low <= threshold <= band high <= 1, got "
                f"{self.band} and {self.threshold}"
            )

    def lesion_probabilities(self, features: np.ndarray) -> np.ndarray:
        """``[L, len(FEATURES)]`` -> ``[L]`` probability that each lesion is hemorrhage."""
        z = (features - np.asarray(self.mean)) / np.asarray(self.scale)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.coef) + self.intercept)))

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.subtypes is None else {"subtypes": self.subtypes.to_dict()}
        return {
            "features": list(FEATURES),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
            "keep": self.keep,
            "calibration": self.calibration.to_dict(),
            "threshold": self.threshold,
            "band": list(self.band),
            "score": self.score,
            "opening": self.opening,
            "info": dict(self.info),
            **extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CaseModel:
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"case model: features {d.get('features')} are not {list(FEATURES)}")
        band = tuple(float(v) for v in d["band"])
        if len(band) != 2:
            raise ValueError("case model: band needs two values")
        return cls(
            mean=tuple(float(v) for v in d["mean"]),
            scale=tuple(float(v) for v in d["scale"]),
            coef=tuple(float(v) for v in d["coef"]),
            intercept=float(d["intercept"]),
            keep=float(d["keep"]),
            calibration=calibration_from_dict(d["calibration"]),
            threshold=float(d["threshold"]),
            band=(band[0], band[1]),
            info=dict(d.get("info", {})),
            score=str(d.get("score", "lesion")),
            opening=int(d.get("opening", 3)),
            subtypes=SubtypeModel.from_dict(d["subtypes"]) if d.get("subtypes") is not None else None,
        )

    @classmethod
    def load(cls, path: Path) -> CaseModel:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True, eq=False)
class CaseScore:
    """Everything the scoring decides for one study."""

    lesions: list[Lesion]
    kept: list[Lesion]
    mask: np.ndarray  # [N, S, S] bool, the kept lesions on the model grid
    raw_score: float  # highest kept-or-not lesion probability (or max slice prob without a case model)
    ich_probability: float  # calibrated
    max_slice_probability: float
    model_voxel_ml: float
    #: the ensemble's disagreement on what decided the case (:func:`case_uncertainty`)
    uncertainty: float = 0.0
    #: subtype probabilities; ``None`` when the case model has no subtype model
    subtypes: SubtypeScores | None = None


def candidate_mask(fused: np.ndarray) -> np.ndarray:
    """``[N, S, S]`` (or ``[N, 1, S, S]``) fused maps -> bool candidate mask (FUSED > MASK_THRESHOLD)."""
    arr = np.asarray(fused, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[:, 0]
    return arr > np.float32(spec.MASK_THRESHOLD)


def opened_map(maps: np.ndarray, opening: int) -> np.ndarray:
    """``[N, S, S]`` maps after the weight model's grey opening, as its ONNX graph computes it.

    The graph erodes with ``-maxpool(-x)`` and dilates with ``maxpool``, both padded with -inf, so pixels
    outside the image never count: erosion pads with +inf, dilation with -inf.
    """
    arr = np.asarray(maps, dtype=np.float32)
    if opening <= 1:
        return arr
    size = (1, opening, opening)
    eroded = ndimage.grey_erosion(arr, size=size, mode="constant", cval=np.inf)
    return ndimage.grey_dilation(eroded, size=size, mode="constant", cval=-np.inf)


def find_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3D connected components (26-connectivity) of a ``[N, S, S]`` mask: (labels, count)."""
    labels, count = ndimage.label(mask, structure=_STRUCTURE)
    return labels.astype(np.int32, copy=False), int(count)


def _bone_distance(
    images: np.ndarray, slices: Sequence[int], pixel_mm: tuple[float, float]
) -> dict[int, Any]:
    """Distance (mm) of every pixel to the nearest bone pixel, on the given slices only."""
    out = {}
    for i in slices:
        bone = images[i, 2] > _BONE_CHANNEL
        out[i] = (
            ndimage.distance_transform_edt(~bone, sampling=pixel_mm)
            if bone.any()
            else np.full(bone.shape, _MAX_BONE_DISTANCE_MM)
        )
    return out


@dataclass(frozen=True, eq=False)
class _StudyMaps:
    """What every lesion of one study is measured against (model grid)."""

    fused: np.ndarray  # [N, S, S]
    probs: np.ndarray  # [N, 5, S, S]
    images: np.ndarray  # [N, 4, S, S]
    opened: np.ndarray  # the fused map after the weight model's opening
    agree: np.ndarray  # [N, S, S] share of the base models above the mask threshold
    brain_area: np.ndarray  # [N] stripped-brain pixels per slice
    largest_brain: int
    distance: Mapping[int, np.ndarray]  # slice -> distance to bone (mm)
    depth: Mapping[int, np.ndarray]  # slice -> depth inside the stripped brain (mm)
    pixel_mm: tuple[float, float]
    voxel_ml: float


def lesion_features(
    labels: np.ndarray,
    count: int,
    fused: np.ndarray,
    probs: np.ndarray,
    images: np.ndarray,
    pixel_mm: tuple[float, float],
    voxel_ml: float,
    opening: int = 3,
) -> list[Lesion]:
    """Describe each labelled lesion.

    Args:
        labels, count: from :func:`find_lesions`.
        fused: ``[N, S, S]`` fused map; probs: ``[N, 5, S, S]`` base maps (MODEL_KEYS order).
        images: ``[N, 4, S, S]`` model input (``ich.preprocess``: stroke, brain, bone, stripped brain).
        pixel_mm: model-grid pixel size (row, column) in mm; voxel_ml: model-grid voxel volume.
    """
    if count == 0:
        return []
    objects = ndimage.find_objects(labels)
    lesion_slices = sorted({z for sl in objects if sl is not None for z in range(sl[0].start, sl[0].stop)})
    fused = np.asarray(fused, dtype=np.float32)
    probs = np.asarray(probs, dtype=np.float32)
    brain_area = (images[:, 3] > 0).reshape(len(images), -1).sum(axis=1)
    maps = _StudyMaps(
        fused=fused,
        probs=probs,
        images=images,
        opened=opened_map(fused, opening),
        agree=(probs > spec.MASK_THRESHOLD).mean(axis=1),
        brain_area=brain_area,
        largest_brain=max(int(brain_area.max()), 1),
        distance=_bone_distance(images, lesion_slices, pixel_mm),
        depth=brain_depth_maps(images[:, 3] > 0, lesion_slices, pixel_mm),
        pixel_mm=pixel_mm,
        voxel_ml=voxel_ml,
    )
    return [
        _describe(label, box, labels, maps) for label, box in enumerate(objects, start=1) if box is not None
    ]


def _describe(label: int, box: tuple[slice, ...], labels: np.ndarray, maps: _StudyMaps) -> Lesion:
    """One lesion's :class:`Lesion` from its bounding box in the label volume."""
    z0 = box[0].start
    zs, ys, xs = np.nonzero(labels[box] == label)
    zs, ys, xs = zs + z0, ys + box[1].start, xs + box[2].start
    peak_slice = z0 + int(np.argmax(np.bincount(zs - z0)))
    values = maps.fused[zs, ys, xs]
    dist = np.array([maps.distance[z][y, x] for z, y, x in zip(zs, ys, xs, strict=True)])
    images = maps.images
    return Lesion(
        label=label,
        voxels=len(zs),
        volume_ml=float(len(zs) * maps.voxel_ml),
        first_slice=int(zs.min()),
        last_slice=int(zs.max()),
        peak_slice=peak_slice,
        peak_probability=float(values.max()),
        mean_probability=float(values.mean()),
        bone_distance_mm=float(min(np.median(dist), _MAX_BONE_DISTANCE_MM)),
        brain_area_fraction=float(maps.brain_area[peak_slice] / maps.largest_brain),
        inside_brain_fraction=float((images[zs, 3, ys, xs] > 0).mean()),
        mean_hu=float(images[zs, 1, ys, xs].astype(np.float32).mean() * _BRAIN_WINDOW_HU),
        agreement=float(maps.agree[zs, ys, xs].mean()),
        opened_peak=float(maps.opened[zs, ys, xs].max()),
        model_spread=float(maps.probs[zs, :, ys, xs].max(axis=0).std()),
        shape=shape_features(zs, ys, xs, peak_slice, maps.distance, maps.depth, images, maps.pixel_mm),
    )


def model_pixel_mm(
    pixel_spacing_mm: tuple[float, float], shape: tuple[int, int], size: int
) -> tuple[float, float]:
    """Model-grid pixel size: the source matrix ``H x W`` is stretched to ``S x S``."""
    return (float(pixel_spacing_mm[0]) * shape[0] / size, float(pixel_spacing_mm[1]) * shape[1] / size)


def score_case(
    fused: np.ndarray,
    probs: np.ndarray,
    slice_prob: np.ndarray,
    images: np.ndarray,
    pixel_mm: tuple[float, float],
    voxel_ml: float,
    case_model: CaseModel | None,
) -> CaseScore:
    """Lesions, the kept mask and the case probability of one study (model grid)."""
    fused = np.asarray(fused, dtype=np.float32)
    if fused.ndim == 4:
        fused = fused[:, 0]
    probs = np.asarray(probs)
    slice_prob = np.asarray(slice_prob, dtype=np.float32).reshape(-1)
    candidates = candidate_mask(fused)
    if case_model is None:
        # The paper's rule: on a slice whose SLICE_PROB (after the opening) stays at or below the mask
        # threshold, the pixels above it are strays; counting them gives a negative call a volume and a SEG.
        candidates &= (slice_prob > np.float32(spec.MASK_THRESHOLD))[:, None, None]
    labels, count = find_lesions(candidates)
    opening = case_model.opening if case_model is not None else 3
    lesions = lesion_features(labels, count, fused, probs, images, pixel_mm, voxel_ml, opening)
    max_slice = float(slice_prob.max()) if slice_prob.size else 0.0
    if case_model is None:
        kept, raw, calibrated = lesions, max_slice, max_slice
    else:
        p = (
            case_model.lesion_probabilities(np.stack([les.feature_vector() for les in lesions]))
            if lesions
            else np.zeros(0)
        )
        lesions = [
            Lesion(**{**les.__dict__, "probability": float(v)}) for les, v in zip(lesions, p, strict=True)
        ]
        kept, raw = _kept_and_raw(case_model, lesions, max_slice)
        calibrated = float(case_model.calibration.apply(raw))
    mask = np.isin(labels, [les.label for les in kept]) if kept else np.zeros(labels.shape, dtype=bool)
    by = _DECIDED_BY.get(case_model.score, "opened_peak") if case_model is not None else "opened_peak"
    uncertainty = case_uncertainty(lesions, by, slice_spread(probs, slice_prob))
    subtypes = (
        subtype_scores(case_model.subtypes, lesions, len(slice_prob))
        if case_model is not None and case_model.subtypes is not None
        else None
    )
    return CaseScore(lesions, kept, mask, raw, calibrated, max_slice, voxel_ml, uncertainty, subtypes)


#: Which lesion value decided a case, by raw score (:func:`case_uncertainty`).
_DECIDED_BY: dict[str, str] = {"lesion": "probability", "max_slice": "opened_peak", "burden": "contribution"}


def _kept_and_raw(
    case_model: CaseModel, lesions: Sequence[Lesion], max_slice: float
) -> tuple[list[Lesion], float]:
    """The lesions that count and the raw case score, by the case model's raw score."""
    if case_model.score == "max_slice":
        # keep is a SLICE_PROB: a lesion counts where its opened map reaches it, the pixels that made it
        return [les for les in lesions if les.opened_peak >= case_model.keep], max(NO_LESION_SCORE, max_slice)
    if case_model.score == "burden":
        contributions = [burden_contribution(les.probability or 0.0, les.volume_ml) for les in lesions]
        return [lesions[i] for i in burden_kept(contributions, case_model.keep)], burden_raw(contributions)
    kept = [les for les in lesions if (les.probability or 0.0) >= case_model.keep]
    raw = max([NO_LESION_SCORE, *[les.probability or 0.0 for les in lesions]])
    return kept, float(raw)


def burden_contribution(probability: float, volume_ml: float) -> float:
    """One lesion's share of the burden: its volume (mL, model grid) weighted by its lesion probability."""
    return float(probability) * float(volume_ml)


def burden_raw(contributions: Sequence[float]) -> float:
    """The burden score: ``B / (1 + B)`` of the expected hemorrhage volume ``B`` (mL), floored.

    Why a sum and not the highest lesion: a normal head's false foci are many small confident candidates,
    a bleed is volume; one confident pixel no longer decides the case. ``B / (1 + B)`` keeps the score in
    [0, 1) and makes its logit ``log B``, so Platt scaling is a logistic regression on the log burden.
    """
    total = float(sum(contributions))
    return max(NO_LESION_SCORE, total / (1.0 + total))


def burden_kept(contributions: Sequence[float], keep: float) -> list[int]:
    """Indices of the lesions that carry a case's burden score to ``keep``, largest contribution first.

    None when the whole burden stays below ``keep``; otherwise the fewest largest lesions whose burden
    reaches it (all of them if rounding keeps the partial sums an ulp short), so that a case is positive
    exactly when it holds a kept lesion and the mask shows the lesions that made the call.
    """
    if not contributions or burden_raw(contributions) < keep:
        return []
    order = sorted(range(len(contributions)), key=lambda i: (-contributions[i], i))
    for n in range(1, len(order) + 1):
        if burden_raw([contributions[i] for i in order[:n]]) >= keep:
            return order[:n]
    return order


def lesion_subtype_inputs(lesion: Lesion) -> dict[str, float]:
    """The lesion's features by name, case-model and shape features together (``ich.subtypes``)."""
    return {**dict(zip(FEATURES, lesion.feature_vector().tolist(), strict=True)), **lesion.shape}


def subtype_scores(model: SubtypeModel, lesions: Sequence[Lesion], n_slices: int) -> SubtypeScores:
    """The study's subtype probabilities from its scored lesion candidates (``ich.subtypes``)."""
    x = feature_matrix([lesion_subtype_inputs(les) for les in lesions])
    hemorrhage = np.array([les.probability or 0.0 for les in lesions], dtype=np.float64)
    spans = [(les.first_slice, les.last_slice) for les in lesions]
    return model.score(x, hemorrhage, spans, n_slices)


def slice_spread(probs: np.ndarray, slice_prob: np.ndarray) -> float:
    """Spread of the five base models' highest probabilities on the slice with the highest SLICE_PROB."""
    arr = np.asarray(probs, dtype=np.float32)
    if arr.ndim == 5:
        arr = arr[:, :, 0]
    if not len(arr):
        return 0.0
    top = int(np.argmax(np.asarray(slice_prob).reshape(-1)))
    return float(arr[top].reshape(arr.shape[1], -1).max(axis=1).std())


def case_uncertainty(lesions: Sequence[Lesion], by: str, no_lesion_spread: float) -> float:
    """The ensemble's disagreement on what decided the case.

    The deciding lesion is the candidate that set the raw case score: the highest ``probability`` (the case
    model's lesion score, ``by="probability"``), the highest ``opened_peak`` (the slice score and the
    paper's rule) or the largest share of the burden (``by="contribution"``). Its uncertainty is the
    spread (population standard deviation, 0 to 0.5) of the five base models' peak probabilities on its
    pixels; without any candidate, ``no_lesion_spread`` (:func:`slice_spread`). Five models that all see
    a bleed, or all see none, agree; one that sees what the others miss makes the case uncertain.
    """
    if not lesions:
        return float(no_lesion_spread)
    keys: dict[str, Callable[[Lesion], float]] = {
        "probability": lambda les: les.probability or 0.0,
        "opened_peak": lambda les: les.opened_peak,
        "contribution": lambda les: burden_contribution(les.probability or 0.0, les.volume_ml),
    }
    return float(max(lesions, key=keys[by]).model_spread)


def source_volume_ml(
    source_mask: np.ndarray, pixel_spacing_mm: tuple[float, float], slice_mm: float
) -> float:
    """Volume (mL) of a source-matrix mask: voxels x row spacing x column spacing x slice spacing."""
    voxel = float(pixel_spacing_mm[0]) * float(pixel_spacing_mm[1]) * float(slice_mm) / 1000.0
    return float(np.count_nonzero(source_mask)) * voxel


def kept_map(fused: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The fused map limited to the kept lesions (zero elsewhere): what is resized to the source matrix."""
    arr = np.asarray(fused, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[:, 0]
    return np.where(mask, arr, np.float32(0.0))
