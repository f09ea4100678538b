"""Read a Triton-style model repository: <model>/config.pbtxt, <model>/<version>/model.onnx.

The configuration is parsed with Triton's own ``model_config.proto`` (shipped in
``tritonclient``), so the same directory loads in NVIDIA's Triton unchanged. Gateway-only
settings ride in the config's free-form ``parameters`` map, which Triton ignores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

PREPROCESSING_PARAMETER = "gateway.preprocessing"
STABLE_VERSION_PARAMETER = "gateway.stable_version"
"""Optional: the version that is stable when no rollout state exists yet (default: the latest loaded)."""
DEFAULT_MODEL_FILENAMES = {"onnxruntime_onnx": "model.onnx"}
SUPPORTED_INPUT_TYPES = {mc.TYPE_FP32: "float32"}


class RepositoryError(ValueError):
    """The repository or one model's configuration is invalid; the message names the file."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    dims: tuple[int, ...]
    """Shape of one item, without the batch dimension."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the gateway needs to know about one model, from its directory."""

    name: str
    directory: Path
    platform: str
    max_batch_size: int
    input: TensorSpec
    output: TensorSpec
    labels: tuple[str, ...]
    preprocessing: str
    versions: dict[str, Path]
    """What the version_policy selected on disk when the repository was read (version -> model file).
    Static: which versions are loaded now is the registry's business (``gateway.models.registry``)."""
    config: mc.ModelConfig

    def model_file(self, version: str) -> Path:
        """Where the model file of ``version`` is (whether or not it exists)."""
        return self.directory / version / model_filename(self.config)

    @property
    def latest_version(self) -> str:
        return max(self.versions, key=int)

    @property
    def initial_stable(self) -> str | None:
        """The config's ``gateway.stable_version`` parameter, if set."""
        parameter = self.config.parameters.get(STABLE_VERSION_PARAMETER)
        return parameter.string_value if parameter is not None and parameter.string_value else None


def model_filename(config: mc.ModelConfig) -> str:
    """The one rule for a version's model file name: the config's default_model_filename, else the platform's."""
    return config.default_model_filename or DEFAULT_MODEL_FILENAMES.get(config.platform, "model.onnx")


def parse_config(path: Path) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(path.read_text(), config)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path}: {exc}") from exc
    return config


def _tensor(config_path: Path, kind: str, tensors) -> mc.ModelInput | mc.ModelOutput:
    if len(tensors) != 1:
        raise RepositoryError(f"{config_path}: a classifier needs exactly one {kind}, found {len(tensors)}")
    return tensors[0]


def _available_versions(directory: Path, filename: str) -> list[int]:
    return sorted(
        int(child.name)
        for child in directory.iterdir()
        if child.is_dir() and child.name.isdigit() and (child / filename).is_file()
    )


def _apply_version_policy(config: mc.ModelConfig, available: list[int]) -> list[int]:
    """Triton's semantics: latest N (default 1), all, or specific versions."""
    policy = config.version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return available
    if choice == "specific":
        return [v for v in available if v in set(policy.specific.versions)]
    latest = policy.latest.num_versions if choice == "latest" else 1
    return available[-max(latest, 1) :]


def version_paths(
    directory: Path,
    config: mc.ModelConfig,
    exclude: frozenset[str] = frozenset(),
    include: frozenset[str] = frozenset(),
) -> dict[str, Path]:
    """Version -> model file for what the version_policy selects now, over the version directories on disk
    minus ``exclude`` (versions that failed to load, or were unloaded explicitly), plus ``include`` (loaded
    explicitly) where its file exists."""
    filename = model_filename(config)
    available = [v for v in _available_versions(directory, filename) if str(v) not in exclude]
    chosen = {str(v) for v in _apply_version_policy(config, available)}
    chosen |= {v for v in include if v not in exclude and (directory / v / filename).is_file()}
    return {v: directory / v / filename for v in sorted(chosen, key=int)}


def _read_labels(config_path: Path, directory: Path, output: mc.ModelOutput) -> tuple[str, ...]:
    if not output.label_filename:
        raise RepositoryError(f"{config_path}: output {output.name!r} needs a label_filename")
    label_path = directory / output.label_filename
    if not label_path.is_file():
        raise RepositoryError(f"{config_path}: label file {label_path} does not exist")
    labels = tuple(line.strip() for line in label_path.read_text().splitlines() if line.strip())
    if len(labels) != output.dims[-1]:
        raise RepositoryError(
            f"{label_path}: {len(labels)} labels but output {output.name!r} has {output.dims[-1]} classes"
        )
    return labels


def load_model_spec(directory: Path) -> ModelSpec:
    """Parse and validate one model directory."""
    config_path = directory / "config.pbtxt"
    config = parse_config(config_path)
    name = config.name or directory.name
    if name != directory.name:
        raise RepositoryError(f"{config_path}: name {name!r} must match the directory name {directory.name!r}")
    if config.platform not in DEFAULT_MODEL_FILENAMES:
        raise RepositoryError(
            f"{config_path}: platform {config.platform!r} is not supported by the embedded runtime "
            f"(supported: {', '.join(DEFAULT_MODEL_FILENAMES)})"
        )
    model_input = _tensor(config_path, "input", config.input)
    model_output = _tensor(config_path, "output", config.output)
    if model_input.data_type not in SUPPORTED_INPUT_TYPES:
        raise RepositoryError(
            f"{config_path}: input {model_input.name!r} has type {mc.DataType.Name(model_input.data_type)}; "
            "only TYPE_FP32 is supported"
        )
    if config.max_batch_size <= 0:
        raise RepositoryError(f"{config_path}: max_batch_size must be > 0 so requests can be batched")
    parameter = config.parameters.get(PREPROCESSING_PARAMETER)
    if parameter is None or not parameter.string_value:
        raise RepositoryError(
            f'{config_path}: parameters {{ key: "{PREPROCESSING_PARAMETER}" ... }} must name the preprocessing'
        )
    filename = model_filename(config)
    versions = _apply_version_policy(config, _available_versions(directory, filename))
    if not versions:
        raise RepositoryError(f"{directory}: no version directory contains {filename}")
    return ModelSpec(
        name=name,
        directory=directory,
        platform=config.platform,
        max_batch_size=config.max_batch_size,
        input=TensorSpec(model_input.name, SUPPORTED_INPUT_TYPES[model_input.data_type], tuple(model_input.dims)),
        output=TensorSpec(model_output.name, "float32", tuple(model_output.dims)),
        labels=_read_labels(config_path, directory, model_output),
        preprocessing=parameter.string_value,
        versions={str(v): directory / str(v) / filename for v in versions},
        config=config,
    )


def load_repository(root: Path) -> dict[str, ModelSpec]:
    """Every model directory (one holding config.pbtxt) under ``root``."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} is not a directory")
    specs = {}
    for directory in sorted(p for p in root.iterdir() if (p / "config.pbtxt").is_file()):
        spec = load_model_spec(directory)
        specs[spec.name] = spec
    if not specs:
        raise RepositoryError(f"model repository {root} has no model (no */config.pbtxt)")
    return specs
