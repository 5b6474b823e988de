"""The run configuration: one frozen dataclass per component, parsed once.

Flower's run config, the TOML files in ``simulations/`` and ``--set key=value`` all
use the same flat kebab-case keys. :func:`parse_run_config` checks every key and
every range and raises one :class:`ConfigError` listing all problems.

Parsed values are typed: a mode is a :class:`~enum.StrEnum` member (written in files
and on the command line as its value, e.g. ``dp = "user"``), ``mlp-layers`` a tuple of
ints (written ``"64,32,16,8"``), ``noise-multiplier`` either :data:`CALIBRATE` or a
fixed number. :meth:`RunConfig.to_flat` writes them back in the files' spelling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedrec.data.spec import DataPreset, DataSpec, Duplicates, HeaderMode, IdType, parse_scale, spec_problems
from fedrec.data.split import SplitMode
from fedrec.data.synthetic import SYNTHETIC, SyntheticSpec
from fedrec.errors import ConfigError
from fedrec.models.spec import ModelConfig, ModelKind
from fedrec.privacy.spec import Accountant
from fedrec.training.spec import Optimizer, TrainConfig

Scalar = bool | int | float | str


def _key(name: str, *, check: Callable[[Any], str | None] | None = None) -> Any:
    return {"key": name, "check": check}


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


class _Typed:
    """Mixin of the settings dataclasses: a field set in code with its file spelling
    (``replace(settings, dp="off")``) still holds the typed value."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            enum = _ENUMS.get(str(f.type))
            if enum is not None and not isinstance(value, enum):
                object.__setattr__(self, f.name, enum(value))
            elif str(f.type) == "tuple[int, ...]" and isinstance(value, str):
                object.__setattr__(self, f.name, _layers(value))
            elif str(f.type) == "float | Calibrate" and isinstance(value, str):
                object.__setattr__(self, f.name, Calibrate(value))


@dataclass(frozen=True)
class DataSettings(_Typed):
    """The data section: which interactions file and how to read it (docs/data.md).

    Empty strings mean "recognise it from the file". The file-layout keys map one to
    one onto :class:`fedrec.data.spec.DataSpec`.
    """

    dataset: str = field(default="ml-100k", metadata=_key("dataset"))  # ml-100k, synthetic, or a file path
    data_dir: str = field(default="", metadata=_key("data-dir"))
    # a rating >= this is a positive (any numeric scale, half stars included)
    rating_threshold: float = field(default=0.0, metadata=_key("rating-threshold"))
    data_preset: DataPreset = field(default=DataPreset.AUTO, metadata=_key("data-preset"))
    delimiter: str = field(default="", metadata=_key("delimiter"))
    header: HeaderMode = field(default=HeaderMode.AUTO, metadata=_key("header"))
    user_col: str = field(default="", metadata=_key("user-col"))
    item_col: str = field(default="", metadata=_key("item-col"))
    rating_col: str = field(default="", metadata=_key("rating-col"))
    time_col: str = field(default="", metadata=_key("time-col"))
    id_type: IdType = field(default=IdType.AUTO, metadata=_key("id-type"))
    duplicates: Duplicates = field(default=Duplicates.LAST, metadata=_key("duplicates"))
    # held-out items: auto = by time with a time column, else drawn at random per user (seeded)
    split: SplitMode = field(default=SplitMode.AUTO, metadata=_key("split"))
    rating_scale: str = field(default="", metadata=_key("rating-scale"))
    encoding: str = field(default="utf-8", metadata=_key("encoding"))
    item_file: str = field(default="", metadata=_key("item-file"))
    item_id_col: str = field(default="", metadata=_key("item-id-col"))
    title_col: str = field(default="", metadata=_key("title-col"))
    genres_col: str = field(default="", metadata=_key("genres-col"))
    text_col: str = field(default="", metadata=_key("text-col"))
    year_col: str = field(default="", metadata=_key("year-col"))
    genre_sep: str = field(default="|", metadata=_key("genre-sep"))
    num_eval_negatives: int = field(default=99, metadata=_key("num-eval-negatives", check=_positive))
    max_users: int = field(default=0, metadata=_key("max-users", check=_non_negative))  # 0 = all
    # dataset = "synthetic": a generated data set of this shape (fedrec.data.synthetic)
    synthetic_users: int = field(default=10_000, metadata=_key("synthetic-users", check=_positive))
    synthetic_items: int = field(default=2_000, metadata=_key("synthetic-items", check=_positive))
    synthetic_interactions: float = field(default=20.0, metadata=_key("synthetic-interactions", check=_positive))

    def spec(self) -> DataSpec:
        """How to read the file: the layout keys as the loader takes them."""
        return DataSpec(
            preset=self.data_preset, delimiter=self.delimiter, header=self.header, user_col=self.user_col,
            item_col=self.item_col, rating_col=self.rating_col, time_col=self.time_col, id_type=self.id_type,
            duplicates=self.duplicates, rating_scale=self.rating_scale,
            encoding=self.encoding, item_file=self.item_file, item_id_col=self.item_id_col, title_col=self.title_col,
            genres_col=self.genres_col, text_col=self.text_col, year_col=self.year_col, genre_sep=self.genre_sep,
        )

    def problems(self) -> list[str]:
        """Cross-key checks of the data section (each single key is checked on parsing)."""
        enums = ("data-preset", "id-type", "header", "duplicates")  # checked on parsing
        problems = [p for p in spec_problems(self.spec()) if not p.startswith(enums)]
        scale = None if any(p.startswith("rating-scale") for p in problems) else parse_scale(self.rating_scale)
        if scale and self.rating_threshold > scale[1]:
            problems.append(
                f"rating-threshold: {self.rating_threshold:g} is above rating-scale {self.rating_scale} "
                "(no rating would count as positive)"
            )
        return problems


class ModelFamily(StrEnum):
    """The built-in model families' names (:mod:`fedrec.families`): a neural model by
    DP-FedAvg rounds, or DP-EASE (two DP releases of item statistics, then EASE in
    closed form; :mod:`fedrec.dpease`). ``model`` takes any registered family's name."""

    NEUMF = "neumf"
    GMF = "gmf"
    DP_EASE = "dp-ease"
    DP_RECON = "dp-recon"


def _registered_family(name: str) -> str | None:
    from fedrec.families.registry import family_names

    names = family_names()
    return None if name in names else f"must be one of {', '.join(names)}"


@dataclass(frozen=True)
class ModelSettings(_Typed):
    model: str = field(default=ModelFamily.DP_EASE.value, metadata=_key("model", check=_registered_family))
    gmf_dim: int = field(default=32, metadata=_key("gmf-dim", check=_positive))
    # the MLP tower's layer sizes; written "64,32,16,8" (or a TOML list of integers)
    mlp_layers: tuple[int, ...] = field(default=(64, 32, 16, 8), metadata=_key("mlp-layers"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model in ModelFamily.__members__.values() and not isinstance(self.model, ModelFamily):
            object.__setattr__(self, "model", ModelFamily(self.model))  # a built-in family's name, typed

    @property
    def family(self) -> str:
        """The registered name of the run's family (the family itself: :func:`fedrec.families.family_of`)."""
        return self.model

    def build(self, n_items: int) -> ModelConfig:
        # only neumf has an MLP branch; where a device of another family builds a neural model it is GMF-shaped
        kind = ModelKind.NEUMF if self.model == ModelFamily.NEUMF else ModelKind.GMF
        return ModelConfig(n_items=n_items, kind=kind, gmf_dim=self.gmf_dim, mlp_layers=self.mlp_layers)


@dataclass(frozen=True)
class TrainSettings(_Typed):
    local_epochs: int = field(default=1, metadata=_key("local-epochs", check=_positive))
    lr: float = field(default=0.01, metadata=_key("lr", check=_positive))
    user_lr_scale: float = field(default=1.0, metadata=_key("user-lr-scale", check=_positive))
    batch_size: int = field(default=64, metadata=_key("batch-size", check=_positive))
    num_negatives: int = field(default=4, metadata=_key("num-negatives", check=_non_negative))
    optimizer: Optimizer = field(default=Optimizer.ADAM, metadata=_key("optimizer"))

    def build(self) -> TrainConfig:
        return TrainConfig(
            local_epochs=self.local_epochs, lr=self.lr, batch_size=self.batch_size,
            num_negatives=self.num_negatives, optimizer=self.optimizer, user_lr_scale=self.user_lr_scale,
        )


class CentralModel(StrEnum):
    """``fedrec centralized``'s neural model: dot-product MF (:mod:`fedrec.training.mf`,
    epochs chosen on validation) or this config's model trained centrally."""

    MF = "mf"
    NEUMF = "neumf"


@dataclass(frozen=True)
class FederationSettings(_Typed):
    num_rounds: int = field(default=100, metadata=_key("num-rounds", check=_positive))
    clients_per_round: float = field(default=100, metadata=_key("clients-per-round", check=_positive))
    server_lr: float = field(default=1.0, metadata=_key("server-lr", check=_positive))
    server_momentum: float = field(
        default=0.0, metadata=_key("server-momentum", check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
    )
    eval_every: int = field(default=10, metadata=_key("eval-every", check=_non_negative))  # 0 = only at the end
    # evaluate a fixed seeded sample of this many users (0 = every user); for huge populations
    eval_users: int = field(default=0, metadata=_key("eval-users", check=_non_negative))
    central_epochs: int = field(default=20, metadata=_key("central-epochs", check=_positive))  # central-model = neumf
    central_model: CentralModel = field(default=CentralModel.MF, metadata=_key("central-model"))
    # devices upload their clipped update quantized to this many bits per coordinate
    # (fedrec.federation.compression; 0 = dense float32)
    upload_bits: int = field(
        default=0, metadata=_key("upload-bits", check=lambda v: None if v in (0, 4, 8) else "must be 0 (off), 4 or 8")
    )


def _probability(v: Any) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


def _decay(v: Any) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1] (1: no decay)"


@dataclass(frozen=True)
class EaseSettings(_Typed):
    """DP-EASE (``model = "dp-ease"``, :mod:`fedrec.dpease`); the defaults were chosen
    once on ML-100K's validation users and are rules in the noise's own units, so
    they carry over to other populations and budgets (docs/dp-ease.md)."""

    # phase 1's part of the budget (the rest goes to the co-occurrence release)
    count_share: float = field(default=0.2, metadata=_key("ease-count-share", check=_probability))
    # ... plus this much times the part of the catalogue past twice ease-max-items, where only
    # the counts rank items (fedrec.dpease.run.count_share)
    count_share_tail: float = field(default=0.3, metadata=_key("ease-count-share-tail", check=_non_negative))
    # K = the items whose noisy count is above this many noise standard deviations ...
    item_threshold: float = field(default=2.0, metadata=_key("ease-item-threshold", check=_non_negative))
    # ... and at most this many (the Gram is K x K; each device uploads K (K + 1) / 2 values)
    max_items: int = field(default=1500, metadata=_key("ease-max-items", check=_positive))
    # ... and only as many as keep the co-occurrence's expected mean signal at least this many
    # times its noise edge (fedrec.dpease.fit.signal_limited; 0: no such limit)
    signal_ratio: float = field(default=3.0, metadata=_key("ease-signal-ratio", check=_non_negative))
    # EASE's lambda = noise * noise_std * sqrt(K) + base * mean diagonal of the Gram
    lambda_noise: float = field(default=2.0, metadata=_key("ease-lambda-noise", check=_non_negative))
    lambda_base: float = field(default=5.0, metadata=_key("ease-lambda-base", check=_positive))
    eigen_floor: float = field(default=0.5, metadata=_key("ease-eigen-floor", check=_non_negative))
    prior_weight: float = field(default=0.001, metadata=_key("ease-prior-weight", check=_non_negative))
    # EASE shrinks towards this many times the public item-content target (0: towards 0)
    content_weight: float = field(default=1.0, metadata=_key("ease-content-weight", check=_non_negative))
    # a pair of items in a user's co-occurrence upload weighs decay ** (their distance in
    # the user's time-ordered history); 1: plain co-occurrence
    pair_decay: float = field(default=0.97, metadata=_key("ease-pair-decay", check=_decay))
    # a device scores with its k-th most recent item weighted decay ** k; 1: all equal
    score_decay: float = field(default=0.9, metadata=_key("ease-score-decay", check=_decay))
    # every top item ranks above every other item (whose released count is mostly noise)
    top_first: bool = field(default=True, metadata=_key("ease-top-first"))


@dataclass(frozen=True)
class ReconSettings(_Typed):
    """DP-Recon (``model = "dp-recon"``, :mod:`fedrec.dpease.factors`): item factors from
    the DP-EASE Gram release, user vectors rebuilt on each device; chosen once on ML-100K's
    validation users (docs/dp-recon.md)."""

    dim: int = field(default=8, metadata=_key("recon-dim", check=_positive))  # item factors per item
    # the device's ridge: this many times the Gram noise's spectral scale (noise std * sqrt(K))
    shrink: float = field(default=0.5, metadata=_key("recon-shrink", check=_positive))
    # the factor score's weight beside the DP-EASE score (0: DP-EASE alone)
    weight: float = field(default=0.5, metadata=_key("recon-weight", check=_non_negative))


class DPMode(StrEnum):
    """``dp``: user-level DP-FedAvg (or DP-EASE's DP releases), or no DP at all."""

    USER = "user"
    OFF = "off"


class Calibrate(StrEnum):
    """``noise-multiplier = "calibrate"``: z is calibrated to the budget."""

    CALIBRATE = "calibrate"


CALIBRATE = Calibrate.CALIBRATE


def _noise_multiplier(v: Any) -> str | None:
    if v is CALIBRATE:
        return None
    return None if 0 <= v < math.inf else 'must be "calibrate" or a finite number >= 0'


@dataclass(frozen=True)
class PrivacySettings(_Typed):
    """User-level DP-FedAvg, on by default.

    ``noise-multiplier = "calibrate"`` (the default) calibrates z so that ``num-rounds``
    rounds spend at most ``epsilon``; a number fixes z and the run stops when the budget
    is reached. ``0`` adds no noise: updates are still clipped, and epsilon is infinite
    (allowed only with ``epsilon = inf``).
    """

    dp: DPMode = field(default=DPMode.USER, metadata=_key("dp"))
    epsilon: float = field(default=8.0, metadata=_key("epsilon", check=_positive))
    delta: float = field(default=1e-5, metadata=_key("delta", check=_probability))
    noise_multiplier: float | Calibrate = field(default=CALIBRATE, metadata=_key("noise-multiplier", check=_noise_multiplier))
    clipping_norm: float = field(default=2.0, metadata=_key("clipping-norm", check=_positive))
    accountant: Accountant = field(default=Accountant.PRV, metadata=_key("accountant"))
    secure_noise: bool = field(default=False, metadata=_key("secure-noise"))
    ledger_key: str = field(default="", metadata=_key("ledger-key"))  # default: ~/.fedrec/ledger_key.pem
    local_dp: bool = field(default=False, metadata=_key("local-dp"))  # record-level DP-SGD on devices
    local_noise_multiplier: float = field(default=1.0, metadata=_key("local-noise-multiplier", check=_positive))
    local_clipping_norm: float = field(default=1.0, metadata=_key("local-clipping-norm", check=_positive))
    local_delta: float = field(default=1e-5, metadata=_key("local-delta", check=_probability))
    # real devices only (a transport with private_evaluation): the Gaussian sum's z for
    # their evaluation metrics (fedrec.privacy.eval_release); simulations evaluate exactly
    eval_noise_multiplier: float = field(default=20.0, metadata=_key("eval-noise-multiplier", check=_positive))

    @property
    def enabled(self) -> bool:
        return self.dp is DPMode.USER

    @property
    def fixed_noise(self) -> float | None:
        """The fixed noise multiplier z, or None when z is calibrated to the budget."""
        return None if self.noise_multiplier is CALIBRATE else float(self.noise_multiplier)


# the enum type of each typed mode field, by its annotation
_ENUMS: dict[str, type[StrEnum]] = {
    e.__name__: e
    for e in (DataPreset, IdType, HeaderMode, Duplicates, SplitMode, Optimizer, CentralModel, DPMode, Accountant)
}


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved in results and checkpoints."""

    seed: int = field(default=0, metadata=_key("seed", check=_non_negative))
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    federation: FederationSettings = FederationSettings()
    privacy: PrivacySettings = PrivacySettings()
    ease: EaseSettings = EaseSettings()
    recon: ReconSettings = ReconSettings()

    def to_flat(self) -> dict[str, Scalar]:
        """The flat kebab-case mapping this config was parsed from (round-trips)."""
        out: dict[str, Scalar] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                for sub in dataclasses.fields(value):
                    out[sub.metadata["key"]] = _flat_value(getattr(value, sub.name))
            else:
                out[f.metadata["key"]] = _flat_value(value)
        return out

    def digest(self) -> str:
        """SHA-256 of the canonical flat config: names the exact configuration of a run."""
        return hashlib.sha256(json.dumps(self.to_flat(), sort_keys=True).encode()).hexdigest()


def data_keys() -> set[str]:
    """The run-config keys of the data section (each is also a `fedrec data check` flag)."""
    return {f.metadata["key"] for f in dataclasses.fields(DataSettings)}


def _layers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split(",") if part.strip())


def _flat_value(value: Any) -> Scalar:
    """A parsed value in the files' spelling: an enum as its value, layers as "64,32"."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value  # type: ignore[no-any-return]


def _convert_layers(raw: Any, key: str) -> tuple[int, ...]:
    try:
        if isinstance(raw, list | tuple):  # a TOML list
            if any(isinstance(v, bool) or not isinstance(v, int) for v in raw):
                raise ValueError(raw)
            return tuple(raw)
        return _layers(raw)
    except ValueError:
        raise ValueError(f"{key}: {raw!r} is not a comma-separated list of integers") from None


def _convert_enum(raw: Any, enum: type[StrEnum], key: str) -> StrEnum:
    try:
        return enum(raw)
    except ValueError:
        raise ValueError(f"{key}: {raw!r} must be one of {', '.join(enum)}") from None


def _convert(raw: Any, target: type, key: str) -> Any:
    if target is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("true", "1", "yes"):
            return True
        if str(raw).lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{key}: {raw!r} is not true/false")
    if target is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"{key}: {raw!r} is not an integer")
        try:
            if isinstance(raw, str) and "." in raw:  # "2.0" from a string-typed run config; "2.5" is no integer
                number = float(raw)
                if not number.is_integer():
                    raise ValueError(raw)
                return int(number)
            return int(raw)
        except (TypeError, ValueError, OverflowError):  # OverflowError: "1.0e400" is an infinite float
            raise ValueError(f"{key}: {raw!r} is not an integer") from None
    if target is float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: {raw!r} is not a number") from None
        if math.isnan(value):
            raise ValueError(f"{key}: NaN is not allowed")
        return value
    return str(raw)


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _convert_field(raw: Any, type_name: str, key: str) -> Any:
    if type_name in _ENUMS:
        return _convert_enum(raw, _ENUMS[type_name], key)
    if type_name == "tuple[int, ...]":
        return _convert_layers(raw, key)
    if type_name == "float | Calibrate":
        if isinstance(raw, str) and raw.strip().lower() == CALIBRATE:
            return CALIBRATE
        try:
            return _convert(raw, float, key)
        except ValueError:
            raise ValueError(f'{key}: {raw!r} is neither "calibrate" nor a number') from None
    return _convert(raw, _TYPES[type_name], key)


def _parse_section(cls: type, values: Mapping[str, Any], problems: list[str], used: set[str]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default):
            kwargs[f.name] = _parse_section(type(f.default), values, problems, used)
            continue
        key = f.metadata["key"]
        if key not in values:
            continue
        used.add(key)
        try:
            value = _convert_field(values[key], str(f.type), key)
        except ValueError as err:
            problems.append(str(err))
            continue
        check = f.metadata.get("check")
        message = check(value) if check else None
        if message:
            problems.append(f"{key}: {value!r} {message}")
            continue
        kwargs[f.name] = value
    return cls(**kwargs)


def parse_run_config(values: Mapping[str, Any]) -> RunConfig:
    """Parse a flat kebab-case mapping into a :class:`RunConfig`.

    Unknown keys are errors (a typo must not silently fall back to a default).
    """
    problems: list[str] = []
    used: set[str] = set()
    config = _parse_section(RunConfig, values, problems, used)
    unknown = sorted(str(key) for key in set(values) - used)  # keys of any type: a TOML/JSON file can hold any
    if unknown:
        known = sorted(RunConfig().to_flat())
        problems.append(f"unknown key(s) {', '.join(unknown)} (known keys: {', '.join(known)})")
    layers = config.model.mlp_layers
    checked = config.model.model == ModelFamily.NEUMF or "mlp-layers" in values  # given sizes are checked whatever the model
    if checked and (len(layers) < 2 or layers[0] % 2 or min(layers) <= 0):
        problems.append("mlp-layers: needs >= 2 positive sizes, the first even (user + item halves)")
    d = config.data
    problems += d.problems()
    if d.dataset == SYNTHETIC:
        problems += SyntheticSpec(
            n_users=d.synthetic_users, n_items=d.synthetic_items, mean_interactions=d.synthetic_interactions
        ).problems()
    problems += _privacy_problems(config.privacy, config.model.model)
    if problems:
        raise ConfigError(problems)
    return config


def _privacy_problems(p: PrivacySettings, model: str) -> list[str]:
    """Cross-key checks of the privacy section (only when DP is on)."""
    if not p.enabled:
        return []
    problems = []
    if p.clipping_norm == math.inf:
        problems.append("clipping-norm: inf is only meaningful with dp = off (noise z * C would be infinite)")
    z = p.fixed_noise
    if z is None and p.epsilon == math.inf:
        problems.append('noise-multiplier: "calibrate" needs a finite epsilon; give epsilon or a fixed noise-multiplier')
    if z == 0 and model in (ModelFamily.DP_EASE, ModelFamily.DP_RECON):
        problems.append(f"noise-multiplier: 0 with model = {model}: a DP release needs noise (z > 0); use dp = off for exact statistics")
    elif z == 0 and p.epsilon < math.inf:
        problems.append(
            f'noise-multiplier: 0 adds no noise (epsilon is infinite), so no round fits epsilon = {p.epsilon:g}: '
            'write "calibrate" to calibrate z to the budget (what 0 meant before), or set epsilon = inf to clip without noise'
        )
    return problems


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` from the command line into a mapping."""
    out: dict[str, str] = {}
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ConfigError([f"--set {p!r}: expected key=value" for p in bad])
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key.strip()] = value.strip()
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a flat TOML config (the files in ``simulations/``)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"config file {path} not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"config file {path} is a directory; give a TOML file"]) from None
    except OSError as err:
        raise ConfigError([f"config file {path} cannot be read: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config file {path} is not UTF-8 text (a TOML file is)"]) from None
    except (tomllib.TOMLDecodeError, RecursionError) as err:
        raise ConfigError([f"config file {path}: {str(err)[:200]}"]) from None
