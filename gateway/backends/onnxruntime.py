"""The embedded default: ONNX Runtime in the gateway's own process, one session per model instance.

The instances come from config.pbtxt (``backends.devices``): CPU by default, CUDA (and TensorRT) where the
model's instance_group asks for a GPU. Each instance has its own session and its own thread, so a model
with several instances runs that many batches at once (several per GPU included); a batch goes to the
first free instance. A CUDA instance runs with I/O binding: the batch is copied once into a pinned host
buffer of the instance and from there to the device, the output stays on the device until one copy
back (``copy_outputs_to_cpu``), instead of ONNX Runtime's own per-run staging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gateway.backends.devices import CPU, Instance
from gateway.backends.session_cpu import SessionThreads
from gateway.models.repository import RepositoryError, TensorSpec
from gateway.monitoring.tracing import TRACING

ExecutionReport = Callable[[Instance, float], None]
"""Called with the instance and its run's seconds after every batch (per-instance metrics)."""


def _check_tensor(model_path: Path, kind: str, actual: ort.NodeArg, expected: TensorSpec) -> None:
    """The ONNX file must agree with config.pbtxt, or the gateway refuses to start."""
    if actual.name != expected.name:
        raise RepositoryError(f"{model_path}: {kind} is named {actual.name!r}, config.pbtxt says {expected.name!r}")
    item_shape = tuple(actual.shape[1:])
    if item_shape != expected.dims:
        raise RepositoryError(
            f"{model_path}: {kind} {actual.name!r} has item shape {list(item_shape)}, "
            f"config.pbtxt says {list(expected.dims)}"
        )


def open_session(model_path: Path, instance: Instance) -> ort.InferenceSession:
    """A session on the instance's providers; refused when ONNX Runtime dropped one of them (it falls back to
    the CPU silently when, say, the CUDA libraries do not load)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = instance.threads
    options.inter_op_num_threads = 1
    # ORT's worker threads busy-wait for work by default; in a gateway they share the cores with
    # decoding and TLS, and spinning starves them (measured: batch execution 11.9 ms -> see docs).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(model_path), options, providers=list(instance.providers))
    except Exception as exc:  # onnxruntime raises its own untyped errors for broken files
        raise RepositoryError(f"{model_path}: ONNX Runtime cannot load it on {instance.device}: {exc}") from exc
    dropped = [name for name in instance.provider_names if name not in session.get_providers()]
    if dropped:
        raise RepositoryError(
            f"{model_path}: instance {instance.name} asked for {', '.join(dropped)} on {instance.device}, but ONNX "
            "Runtime could not enable it (its log above says why: CUDA or cuDNN libraries missing?)"
        )
    return session


class _BoundRun:
    """One session's runs with I/O binding: a pinned input buffer per batch size, one copy back per batch."""

    def __init__(self, session: ort.InferenceSession, input_name: str, output_name: str, device: str) -> None:
        self._session = session
        self._input_name = input_name
        self._output_name = output_name
        kind, _, index = device.partition(":")
        self._device = kind
        self._device_id = int(index or 0)
        self._pinned: dict[tuple[int, ...], ort.OrtValue] = {}

    def _staged(self, batch: np.ndarray) -> ort.OrtValue:
        """``batch`` in a pinned host buffer (reused for the same shape): one copy, then a DMA to the device."""
        if self._device == "cpu":
            return ort.OrtValue.ortvalue_from_numpy(batch)
        buffer = self._pinned.get(batch.shape)
        if buffer is None:
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(batch.shape, batch.dtype.type, "cuda_pinned", 0)
            self._pinned[batch.shape] = buffer
        buffer.update_inplace(batch)
        return buffer

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input_name, self._staged(np.ascontiguousarray(batch)))
        binding.bind_output(self._output_name, self._device, self._device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]


class OnnxRuntimeBackend:
    """One session per instance, each on a dedicated thread so the event loop never blocks."""

    def __init__(
        self,
        model_path: Path,
        input_spec: TensorSpec,
        output_spec: TensorSpec,
        threads: int,
        instances: Sequence[Instance] | None = None,
        on_execution: ExecutionReport | None = None,
        on_cpu: Callable[[float], None] | None = None,
    ) -> None:
        self.instances = tuple(
            instances or (Instance(f"{model_path.parent.parent.name}_0", "cpu", ((CPU, {}),), threads),)
        )
        # each session's threads, to measure the CPU of its runs where they run (``on_cpu``, see session_cpu)
        self._threads = [SessionThreads(lambda i=instance: open_session(model_path, i)) for instance in self.instances]
        self._sessions = [threads.built for threads in self._threads]
        self._on_cpu = on_cpu
        inputs, outputs = self._sessions[0].get_inputs(), self._sessions[0].get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise RepositoryError(f"{model_path}: expected one input and one output")
        _check_tensor(model_path, "input", inputs[0], input_spec)
        _check_tensor(model_path, "output", outputs[0], output_spec)
        self._input_name = input_spec.name
        self._output_name = output_spec.name
        self._runs = [
            self._runner(session, instance) for session, instance in zip(self._sessions, self.instances, strict=True)
        ]
        prefix = f"ort-{model_path.parent.name}"
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{prefix}-{instance.name}")
            for instance in self.instances
        ]
        self._on_execution = on_execution or (lambda instance, seconds: None)
        self._free: asyncio.Queue[int] | None = None

    def _runner(self, session: ort.InferenceSession, instance: Instance) -> Callable[[np.ndarray], np.ndarray]:
        if instance.gpu is None:
            return lambda batch: session.run([self._output_name], {self._input_name: batch})[0]
        return _BoundRun(session, self._input_name, self._output_name, instance.device)

    def infer_sync(self, batch: np.ndarray) -> np.ndarray:
        """On the first instance, on the calling thread (benchmarks, accuracy runs)."""
        return self._runs[0](batch)

    def _timed(self, batch: np.ndarray, instance: int) -> np.ndarray:
        started = time.perf_counter()
        try:
            if self._on_cpu is None:
                return self._runs[instance](batch)
            with self._threads[instance].measure(self._on_cpu):
                return self._runs[instance](batch)
        finally:
            self._on_execution(self.instances[instance], time.perf_counter() - started)

    async def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._free is None:  # made on the event loop that runs the batches
            self._free = asyncio.Queue()
            for index in range(len(self.instances)):
                self._free.put_nowait(index)
        index = await self._free.get()  # FIFO: the instances take turns
        try:
            with TRACING.span("backend onnxruntime"):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executors[index], self._timed, batch, index)
        finally:
            self._free.put_nowait(index)

    def close(self) -> None:
        for executor in self._executors:
            executor.shutdown(wait=False, cancel_futures=True)
