"""Turn one version of a model into something that answers batches: a backend behind its own batcher."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from gateway.backends.base import Backend
from gateway.backends.devices import Instance, plan_instances
from gateway.backends.onnxruntime import OnnxRuntimeBackend
from gateway.backends.remote_config import BackendsConfig, remote_backend
from gateway.batching.batcher import DynamicBatcher
from gateway.batching.policy import BatchingPolicy
from gateway.models.repository import ModelSpec, RepositoryError
from gateway.monitoring.metrics import GatewayMetrics


def file_state(path: Path) -> tuple[int, int]:
    """(mtime_ns, size) of a model file; (0, 0) when it is gone. A changed state means: load it again."""
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)


@dataclass
class ModelVersion:
    """One loaded version: its backend and the batcher in front of it."""

    version: str
    backend: Backend
    batcher: DynamicBatcher
    file_state: tuple[int, int] = (0, 0)
    """(mtime_ns, size) of the model file it was loaded from: a replaced file is loaded again."""

    async def retire(self) -> None:
        """Answer what is queued on it, let its running batches finish, then free the backend."""
        await self.batcher.close()
        self.backend.close()


class VersionLoader:
    """Builds a ModelVersion: on the remote replicas the backends file names, else ONNX Runtime in process."""

    def __init__(self, backends: BackendsConfig, metrics: GatewayMetrics, *, onnx_threads: int, batching: bool) -> None:
        self._backends = backends
        self._metrics = metrics
        self._onnx_threads = onnx_threads
        self._batching = batching

    def batching_policy(self, spec: ModelSpec) -> BatchingPolicy:
        """config.pbtxt's dynamic_batching (or one request at a time when batching is switched off)."""
        try:
            policy = BatchingPolicy.from_model_config(spec.config)
        except ValueError as exc:
            raise RepositoryError(f"{spec.directory}/config.pbtxt: {exc}") from None
        return policy if self._batching else BatchingPolicy.unbatched(policy)

    def load(self, spec: ModelSpec, version: str, policy: BatchingPolicy) -> ModelVersion:
        """Load ``version``'s model file (blocking: call it off the event loop once serving)."""
        path = spec.model_file(version)
        state = file_state(path)
        remote = remote_backend(self._backends, spec, version)
        if remote is not None:  # replicas on Triton / TF Serving: as many batches in flight as they take
            policy = dataclasses.replace(policy, instances=remote.max_concurrent_batches)
        metrics = self._metrics
        backend = remote or self._in_process(spec, version, path)
        if isinstance(backend, OnnxRuntimeBackend):  # one batch in flight per instance (several per GPU)
            policy = dataclasses.replace(policy, instances=len(backend.instances))
        batcher = DynamicBatcher(
            backend.infer,
            policy,
            spec.input.dims,
            spec.input.dtype,
            on_batch=lambda stats: metrics.observe_batch(spec.name, version, stats),
            on_queue_depth=metrics.queue_depth.labels(spec.name, version).set,
            trace_name=f"batch {spec.name}/{version}",
        )
        metrics.queue_capacity.labels(spec.name, version).set(policy.max_queue_size)
        return ModelVersion(version, backend, batcher, state)

    def _in_process(self, spec: ModelSpec, version: str, path: Path) -> OnnxRuntimeBackend:
        """ONNX Runtime on the instances config.pbtxt asks for (CPU by default; GPUs refused when absent)."""
        instances = plan_instances(
            spec.config, f"model {spec.name!r} ({spec.directory}/config.pbtxt)", self._onnx_threads
        )
        metric = self._metrics.instance_execution
        execution = {i.name: metric.labels(spec.name, version, i.name, i.device) for i in instances}

        def report(instance: Instance, seconds: float) -> None:  # after every batch: no label lookup
            execution[instance.name].observe(seconds)

        model_cpu = self._metrics.model_cpu.labels(spec.name, version).inc
        return OnnxRuntimeBackend(path, spec.input, spec.output, self._onnx_threads, instances, report, model_cpu)
