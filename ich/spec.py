"""Names fixed by the design contract (docs/DESIGN.md): models, tensors and the ensemble's member keys.

Every engine, the exporter and the evaluation read these constants so that a rename cannot happen in one
place only.
"""

from typing import Final

#: Short keys of the five base models, in the order the weight model's ``WEIGHTS`` vector uses.
MODEL_KEYS: Final[tuple[str, ...]] = ("all", "subtype", "sdh", "sah", "small")

#: Triton model name of each base model, by key.
BASE_MODELS: Final[dict[str, str]] = {key: f"ich_unet_{key}" for key in MODEL_KEYS}

WEIGHTING_MODEL: Final = "ich_weighting"
#: Step model giving each slice the maximum of each base model's map (``PROB_MAX``): a small output, so a
#: remote engine fetches the full maps only for the slices that need them.
PROB_MAX_MODEL: Final = "ich_prob_max"
ENSEMBLE_MODEL: Final = "ich_ensemble"
#: The same ensemble answering FUSED, SLICE_PROB, WEIGHTS and PROB_MAX only (no full member maps). A second
#: ensemble over the same models, because Triton cannot answer a subset of an ensemble's outputs when the
#: others feed later steps (triton-inference-server/client#763: "unexpected deadlock").
COMPACT_ENSEMBLE_MODEL: Final = "ich_ensemble_compact"

#: Input of every base model and of the ensemble: FP32 [4, H, W], channels in [0, 1].
IMAGE: Final = "IMAGE"
#: Output of every base model: FP32 [1, H, W], a sigmoid map.
PROB: Final = "PROB"
#: Weight model inputs, one per base model: FP32 [1, H, W].
WEIGHTING_INPUTS: Final[dict[str, str]] = {key: f"PROB_{key.upper()}" for key in MODEL_KEYS}
#: Ensemble outputs besides the per-model maps (which reuse ``WEIGHTING_INPUTS`` names).
FUSED: Final = "FUSED"
SLICE_PROB: Final = "SLICE_PROB"
WEIGHTS: Final = "WEIGHTS"
#: FP32 [5] per slice: the maximum of each base model's ``PROB`` map, columns in ``MODEL_KEYS`` order.
PROB_MAX: Final = "PROB_MAX"

#: Number of input channels: stroke, brain, bone windows and the skull-stripped brain window.
IN_CHANNELS: Final = 4
#: Default model input size (pixels per side); a setting.
DEFAULT_INPUT_SIZE: Final = 256

#: The paper's "difficult for AI" band: case probabilities in it are flagged indeterminate.
INDETERMINATE_BAND: Final[tuple[float, float]] = (0.4, 0.6)
#: Pixel threshold on FUSED for the lesion mask and its volume.
MASK_THRESHOLD: Final = 0.5
