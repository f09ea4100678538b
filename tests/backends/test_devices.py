"""Which devices and providers a model's instance_group and optimization ask for, and the refusals when absent.

The host's providers and GPU count are given (``DeviceProbe``) so GPU hosts can be described on this CPU
machine; the real probe is used where the test is about this machine (no CUDA provider, no driver).
"""

from __future__ import annotations

import logging

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from gateway.backends.devices import CPU, CUDA, TENSORRT, DeviceProbe, cuda_device_count, plan_instances
from gateway.models.repository import RepositoryError

WHERE = "model 'hotdog' (model_repo/hotdog/config.pbtxt)"
HOST = DeviceProbe()
NO_CUDA_PROVIDER = CUDA not in HOST.providers()
NO_DRIVER = isinstance(HOST.gpu_count(), str)


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse(f'name: "hotdog"\n{text}', mc.ModelConfig())


def gpu_host(gpus: int = 1, providers: tuple[str, ...] = (CUDA, CPU)) -> DeviceProbe:
    return DeviceProbe(providers=lambda: providers, gpu_count=lambda: gpus)


def test_no_instance_group_is_one_cpu_session_with_every_thread() -> None:
    (instance,) = plan_instances(config(""), WHERE, threads=8, probe=gpu_host())
    assert (instance.name, instance.device, instance.provider_names, instance.threads) == (
        "hotdog_0_0",
        "cpu",
        (CPU,),
        8,
    )


def test_cpu_instances_split_the_threads() -> None:
    instances = plan_instances(config("instance_group [{ kind: KIND_CPU, count: 2 }]"), WHERE, 8, gpu_host())
    assert [(i.name, i.device, i.threads) for i in instances] == [("hotdog_0_0", "cpu", 4), ("hotdog_0_1", "cpu", 4)]


def test_kind_gpu_opens_count_sessions_on_each_gpu_listed() -> None:
    text = 'instance_group [{ name: "trt", kind: KIND_GPU, gpus: [0, 1], count: 2 }, { kind: KIND_CPU }]'
    instances = plan_instances(config(text), WHERE, 4, gpu_host(gpus=2))
    assert [(i.name, i.device) for i in instances] == [
        ("trt_0", "cuda:0"),
        ("trt_1", "cuda:0"),
        ("trt_2", "cuda:1"),
        ("trt_3", "cuda:1"),
        ("hotdog_1_0", "cpu"),
    ]
    assert instances[2].providers == ((CUDA, {"device_id": 1}), (CPU, {}))
    assert instances[-1].threads == 4, "the GPU instances take no share of the CPU threads"


def test_kind_gpu_without_gpus_uses_every_visible_gpu() -> None:
    instances = plan_instances(config("instance_group [{ kind: KIND_GPU }]"), WHERE, 4, gpu_host(gpus=3))
    assert [i.device for i in instances] == ["cuda:0", "cuda:1", "cuda:2"]


def test_tensorrt_comes_first_with_triton_parameters_mapped() -> None:
    text = """max_batch_size: 8
    input [{ name: "image", data_type: TYPE_FP32, dims: [3, 224, 224] }]
    instance_group [{ kind: KIND_GPU, gpus: [0] }]
    optimization { execution_accelerators { gpu_execution_accelerator [
      { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }"""
    (instance,) = plan_instances(config(text), WHERE, 4, gpu_host(providers=(TENSORRT, CUDA, CPU)))
    assert instance.provider_names == (TENSORRT, CUDA, CPU)
    assert instance.providers[0][1] == {
        "device_id": 0,
        "trt_engine_cache_enable": True,
        "trt_fp16_enable": True,
        "trt_profile_min_shapes": "image:1x3x224x224",  # one engine for every batch the batcher forms
        "trt_profile_opt_shapes": "image:8x3x224x224",
        "trt_profile_max_shapes": "image:8x3x224x224",
    }


@pytest.mark.skipif(not NO_CUDA_PROVIDER, reason="this host's onnxruntime has CUDA")
def test_this_machine_has_no_cuda_provider_and_start_up_says_how_to_install_it() -> None:
    text = "instance_group [{ kind: KIND_GPU, gpus: [0], count: 2 }]"
    with pytest.raises(RepositoryError) as refused:
        plan_instances(config(text), WHERE, 4)  # the real probe: CPU onnxruntime
    message = str(refused.value)
    assert message.startswith(f"{WHERE}: instance_group 0 (KIND_GPU, gpus [0], count 2) asks for a GPU: ")
    assert "this onnxruntime has no CUDAExecutionProvider" in message and "pip install '.[gpu]'" in message
    assert "gateway.gpu_fallback = cpu" in message


def test_the_driver_probe_counts_gpus_or_says_why_there_are_none() -> None:
    found = cuda_device_count()
    if NO_DRIVER:
        assert found in (
            "no NVIDIA driver on this host (libcuda.so.1 not found)",
            "the NVIDIA driver did not initialise (cuInit failed: no usable GPU)",
        )
    else:
        assert isinstance(found, int) and found >= 1


@pytest.mark.parametrize(
    ("probe", "text", "missing"),
    [
        (gpu_host(gpus=1), "kind: KIND_GPU, gpus: [1]", "GPU [1] is not there: this host shows 1 GPU(s)"),
        (gpu_host(gpus=0), "kind: KIND_GPU", "GPU [0] is not there: this host shows 0 GPU(s)"),
        (
            DeviceProbe(providers=lambda: (CUDA, CPU), gpu_count=lambda: "no NVIDIA driver on this host"),
            "gpus: [0]",  # no kind, but GPUs listed: a GPU group (as in Triton)
            "no NVIDIA driver on this host",
        ),
    ],
)
def test_a_gpu_that_is_not_there_stops_start_up(probe: DeviceProbe, text: str, missing: str) -> None:
    with pytest.raises(RepositoryError, match="instance_group 0") as refused:
        plan_instances(config(f"instance_group [{{ {text} }}]"), WHERE, 4, probe)
    assert missing in str(refused.value) and WHERE in str(refused.value)


def test_tensorrt_asked_for_and_not_installed_stops_start_up_unless_cuda_alone_is_allowed(caplog) -> None:
    text = """instance_group [{ kind: KIND_GPU }]
    optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" }] } }"""
    with pytest.raises(RepositoryError, match="asks for tensorrt: this onnxruntime has no TensorrtExecutionProvider"):
        plan_instances(config(text), WHERE, 4, gpu_host())
    allowed = text + '\nparameters { key: "gateway.gpu_fallback" value: { string_value: "cuda" } }'
    with caplog.at_level(logging.WARNING, "gateway.backends.devices"):
        (instance,) = plan_instances(config(allowed), WHERE, 4, gpu_host())
    assert instance.provider_names == (CUDA, CPU)
    assert "running on CUDA" in caplog.text


def test_the_cpu_fallback_is_taken_only_when_configured_and_said(caplog) -> None:
    text = """instance_group [{ kind: KIND_GPU, count: 2 }]
    parameters { key: "gateway.gpu_fallback" value: { string_value: "cpu" } }"""
    with caplog.at_level(logging.WARNING, "gateway.backends.devices"):
        instances = plan_instances(config(text), WHERE, 4, gpu_host(providers=(CPU,)))
    assert [(i.device, i.provider_names) for i in instances] == [("cpu", (CPU,))] * 2
    assert "running on the CPU (gateway.gpu_fallback = cpu)" in caplog.text


@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ('parameters { key: "gateway.gpu_fallback" value: { string_value: "yes" } }', "must be one of none, cuda, cpu"),
        ("instance_group [{ kind: KIND_MODEL }]", "KIND_MODEL is not supported"),
        ("instance_group [{ kind: KIND_CPU, gpus: [0] }]", "a KIND_CPU group lists gpus [0]"),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "openvino" }] } }',
            "gpu_execution_accelerator 'openvino' is not supported",
        ),
        (
            'optimization { execution_accelerators { cpu_execution_accelerator [{ name: "openvino" }] } }',
            "cpu_execution_accelerator ['openvino'] is not supported",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" '
            'parameters { key: "precision_mode" value: "INT4" } }] } }',
            "tensorrt precision_mode must be one of FP32, FP16",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator [{ name: "tensorrt" '
            'parameters { key: "minimum_segment_size" value: "3" } }] } }',
            "tensorrt parameter 'minimum_segment_size' is not supported",
        ),
    ],
)
def test_configurations_the_backend_cannot_honour_are_refused(text: str, refusal: str) -> None:
    with pytest.raises(RepositoryError, match=WHERE.replace("(", r"\(").replace(")", r"\)")) as refused:
        plan_instances(config(text), WHERE, 4, gpu_host())
    assert refusal in str(refused.value)
