"""Where the in-process ONNX Runtime backend runs a model: its instances, read from config.pbtxt as Triton would.

``instance_group [{ kind: KIND_GPU, gpus: [0], count: 2 }]`` asks for two ONNX Runtime sessions on each GPU
listed (every visible GPU when ``gpus`` is empty) on CUDAExecutionProvider; ``KIND_CPU`` or no kind (and no
``gpus``) keeps the CPU default: ``count`` sessions on CPUExecutionProvider, the ONNX Runtime threads split
between them. ``optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" }] } }``
puts TensorrtExecutionProvider before CUDA on every GPU instance.

A GPU (or TensorRT) asked for and not there stops start-up with a message naming the model, the instance
group and what is missing. Nothing falls back silently: the model's own config.pbtxt may allow it with
``parameters { key: "gateway.gpu_fallback" value: { string_value: "cpu" } }`` (run on the CPU instead) or
``"cuda"`` (TensorRT missing: run on CUDA alone); a fallback is logged, and ``/metrics`` shows the device
each instance really runs on.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from gateway.models.repository import RepositoryError

log = logging.getLogger("gateway.backends.devices")

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
FALLBACK_KEY = "gateway.gpu_fallback"
FALLBACKS = ("none", "cuda", "cpu")
GPU_INSTALL = "install the GPU build: pip uninstall -y onnxruntime && pip install '.[gpu]' (see docs/gpu.md)"
TENSORRT_PARAMETERS = {
    "precision_mode": ("trt_fp16_enable", {"FP32": False, "FP16": True}),
    "max_workspace_size_bytes": ("trt_max_workspace_size", None),
}
"""Triton's TensorRT accelerator parameters -> ONNX Runtime's TensorRT provider options."""

Provider = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Instance:
    """One ONNX Runtime session of a model version: where it runs and with which providers, in order."""

    name: str
    """``<group name>_<n>`` as Triton names instances (the group's name defaults to ``<model>_<group index>``)."""
    device: str
    """``cpu`` or ``cuda:<gpu>``."""
    providers: tuple[Provider, ...]
    threads: int
    """ONNX Runtime intra-op threads of this session."""

    @property
    def gpu(self) -> int | None:
        return int(self.device.split(":")[1]) if self.device.startswith("cuda:") else None

    @property
    def provider_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.providers)


@dataclass
class DeviceProbe:
    """What this host offers: the ONNX Runtime providers installed and the GPUs the NVIDIA driver sees."""

    providers: Callable[[], Sequence[str]] = field(default_factory=lambda: _installed_providers)
    gpu_count: Callable[[], int | str] = field(default_factory=lambda: cuda_device_count)
    """The number of GPUs, or why there are none (a sentence)."""


def _installed_providers() -> Sequence[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def cuda_device_count() -> int | str:
    """GPUs the NVIDIA driver shows this process (after CUDA_VISIBLE_DEVICES), or why none can be used."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver on this host (libcuda.so.1 not found)"
    if driver.cuInit(0) != 0:
        return "the NVIDIA driver did not initialise (cuInit failed: no usable GPU)"
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return "the NVIDIA driver could not count the GPUs (cuDeviceGetCount failed)"
    return count.value


def gpu_fallback(config: mc.ModelConfig, where: str) -> str:
    """The model's ``gateway.gpu_fallback`` parameter (``none`` when absent), validated."""
    value = config.parameters[FALLBACK_KEY].string_value if FALLBACK_KEY in config.parameters else "none"
    if value not in FALLBACKS:
        raise RepositoryError(f"{where}: parameter {FALLBACK_KEY} must be one of {', '.join(FALLBACKS)}, got {value!r}")
    return value


def tensorrt_profile(config: mc.ModelConfig) -> dict[str, str]:
    """One TensorRT optimisation profile from batch 1 to max_batch_size, so a single engine serves every batch
    the batcher forms (without it TensorRT builds an engine for each new batch size, seconds each)."""
    if len(config.input) != 1:
        return {}
    tensor = config.input[0]
    item = "x".join(str(d) for d in tensor.dims)
    largest = max(1, config.max_batch_size)
    smallest, widest = f"{tensor.name}:1x{item}", f"{tensor.name}:{largest}x{item}"
    return {"trt_profile_min_shapes": smallest, "trt_profile_opt_shapes": widest, "trt_profile_max_shapes": widest}


def tensorrt_options(config: mc.ModelConfig, where: str) -> dict[str, Any] | None:
    """The TensorRT provider's options when config.pbtxt asks for it; None when it does not."""
    accelerators = config.optimization.execution_accelerators
    if accelerators.cpu_execution_accelerator:
        names = [a.name for a in accelerators.cpu_execution_accelerator]
        raise RepositoryError(f"{where}: cpu_execution_accelerator {names} is not supported (the CPU runs plain)")
    chosen = None
    for accelerator in accelerators.gpu_execution_accelerator:
        if accelerator.name != "tensorrt":
            raise RepositoryError(
                f"{where}: gpu_execution_accelerator {accelerator.name!r} is not supported (known: tensorrt)"
            )
        chosen = {"trt_engine_cache_enable": True, **tensorrt_profile(config)}
        for key, value in accelerator.parameters.items():
            if key not in TENSORRT_PARAMETERS:
                raise RepositoryError(
                    f"{where}: tensorrt parameter {key!r} is not supported (known: {', '.join(TENSORRT_PARAMETERS)})"
                )
            option, choices = TENSORRT_PARAMETERS[key]
            if choices is None:
                chosen[option] = int(value)
            elif value in choices:
                chosen[option] = choices[value]
            else:
                raise RepositoryError(f"{where}: tensorrt {key} must be one of {', '.join(choices)}, got {value!r}")
    return chosen


KINDS = {mc.ModelInstanceGroup.KIND_AUTO: "KIND_AUTO", mc.ModelInstanceGroup.KIND_CPU: "KIND_CPU"}
KINDS |= {mc.ModelInstanceGroup.KIND_GPU: "KIND_GPU", mc.ModelInstanceGroup.KIND_MODEL: "KIND_MODEL"}


def _describe(group: mc.ModelInstanceGroup, index: int) -> str:
    gpus = f", gpus {list(group.gpus)}" if group.gpus else ""
    return f"instance_group {index} ({KINDS.get(group.kind, group.kind)}{gpus}, count {group.count or 1})"


def _wants_gpu(group: mc.ModelInstanceGroup, where: str) -> bool:
    if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
        raise RepositoryError(f"{where}: KIND_MODEL is not supported by the in-process backend (use KIND_CPU/GPU)")
    if group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
        raise RepositoryError(f"{where}: a KIND_CPU group lists gpus {list(group.gpus)}")
    return group.kind == mc.ModelInstanceGroup.KIND_GPU or bool(group.gpus)


def plan_instances(
    config: mc.ModelConfig, where: str, threads: int, probe: DeviceProbe | None = None
) -> list[Instance]:
    """Every instance of a model version, in config order; RepositoryError when a device asked for is not there.

    ``where`` names the model in messages (its config.pbtxt); ``threads``: ONNX Runtime threads for the CPU
    instances together."""
    probe = probe or DeviceProbe()
    groups = list(config.instance_group) or [mc.ModelInstanceGroup(count=1)]
    fallback = gpu_fallback(config, where)
    tensorrt = tensorrt_options(config, where)
    cpu_count = sum(group.count or 1 for group in groups if not _wants_gpu(group, where))
    cpu_threads = max(1, threads // max(1, cpu_count))
    instances: list[Instance] = []
    for index, group in enumerate(groups):
        described = f"{where}: {_describe(group, index)}"
        name = group.name or f"{config.name}_{index}"
        cpu_only = [(None, ((CPU, {}),))]
        devices = _devices(group, described, probe, fallback, tensorrt) if _wants_gpu(group, where) else cpu_only
        in_group = 0
        for gpu, providers in devices:
            for _ in range(group.count or 1):
                device, session_threads = ("cpu", cpu_threads) if gpu is None else (f"cuda:{gpu}", 1)
                instances.append(Instance(f"{name}_{in_group}", device, providers, session_threads))
                in_group += 1
    return instances


def _devices(
    group: mc.ModelInstanceGroup, where: str, probe: DeviceProbe, fallback: str, tensorrt: dict[str, Any] | None
) -> list[tuple[int | None, tuple[Provider, ...]]]:
    """(GPU, providers) per GPU of the group; (None, CPU) when the GPU is missing and the model allows the CPU."""
    installed = set(probe.providers())
    missing = None
    if CUDA not in installed:
        missing = f"this onnxruntime has no {CUDA} (installed: {', '.join(sorted(installed))}); {GPU_INSTALL}"
    else:
        count = probe.gpu_count()
        if isinstance(count, str):
            missing = count
        else:
            absent = [gpu for gpu in group.gpus if not 0 <= gpu < count]
            if absent or count == 0:
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                shown = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
                missing = f"GPU {absent or [0]} is not there: this host shows {count} GPU(s){shown}"
    if missing is not None:
        if fallback != "cpu":
            raise RepositoryError(
                f"{where} asks for a GPU: {missing}. To run on the CPU instead, set {FALLBACK_KEY} = cpu"
            )
        log.warning("%s asks for a GPU: %s; running on the CPU (%s = cpu)", where, missing, FALLBACK_KEY)
        return [(None, ((CPU, {}),))]
    gpus = list(group.gpus) or list(range(int(probe.gpu_count())))
    plans = []
    for gpu in gpus:
        providers: list[Provider] = [(CUDA, {"device_id": gpu}), (CPU, {})]
        if tensorrt is not None:
            if TENSORRT in installed:
                providers.insert(0, (TENSORRT, {"device_id": gpu, **tensorrt}))
            elif fallback == "none":
                raise RepositoryError(
                    f"{where} asks for tensorrt: this onnxruntime has no {TENSORRT} (TensorRT libraries not found). "
                    f"To run on CUDA alone, set {FALLBACK_KEY} = cuda"
                )
            else:
                log.warning("%s asks for tensorrt, not installed; running on CUDA (%s)", where, FALLBACK_KEY)
        plans.append((gpu, tuple(providers)))
    return plans
