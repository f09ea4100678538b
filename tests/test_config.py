from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = write(tmp_path, '[server]\nhttp_port = 9000\nhost = "0.0.0.0"\n[tls]\nenabled = false\n')
    settings = load_settings(
        config,
        overrides={"server": {"host": "127.0.0.2", "http_port": None}},
        environ={"GATEWAY_SERVER_HTTP_PORT": "9100", "GATEWAY_LIMITS_MAX_BODY_BYTES": "1234"},
    )
    assert settings.server.http_port == 9100
    assert settings.server.host == "127.0.0.2"
    assert settings.limits.max_body_bytes == 1234
    assert settings.tls.enabled is False


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[server]\nhtp_port = 1\n", {}, "unknown key 'server.htp_port'"),
        ("[sever]\n", {}, "unknown section 'sever'"),
        ("[server]\nhttp_port = 'x'\n", {}, "server.http_port must be an integer"),
        ("[server]\nhttp_port = 70000\n", {}, "server.http_port must be a port number"),
        ("[limits]\nmax_body_bytes = 0\n", {}, "limits.max_body_bytes must be > 0"),
        ("", {"GATEWAY_SERVER_HTTP_KEEP_ALIVE_S": "0"}, "server.http_keep_alive_s must be > 0"),
        ("[limits]\njson_max_depth = 0\n", {}, "limits.json_max_depth must be > 0"),
        ("[limits]\njson_max_depth = 2000\n", {}, "limits.json_max_depth must be <= 512"),
        ("", {"GATEWAY_LIMITS_JSON_MAX_BYTES": "-1"}, "limits.json_max_bytes must be > 0"),
        ("", {"GATEWAY_LIMITS_ADMIN_MAX_BYTES": "0"}, "limits.admin_max_bytes must be > 0"),
        ("", {"GATEWAY_LIMITS_MAX_HEADER_BYTES": "many"}, "limits.max_header_bytes must be an integer"),
        ("", {"GATEWAY_LIMITS_MULTIPART_MAX_PARTS": "0"}, "limits.multipart_max_parts must be > 0"),
        ("", {"GATEWAY_LIMITS_MAX_TENSOR_ELEMENTS": "0"}, "limits.max_tensor_elements must be > 0"),
        ("", {"GATEWAY_LIMITS_GRPC_MAX_MESSAGE_BYTES": "0"}, "limits.grpc_max_message_bytes must be > 0"),
        ("", {"GATEWAY_LIMITS_GRPC_MAX_METADATA_BYTES": "0"}, "limits.grpc_max_metadata_bytes must be > 0"),
        ("", {"GATEWAY_LIMITS_MAX_CONNECTIONS_PER_CLIENT": "0"}, "limits.max_connections_per_client must be > 0"),
        ("", {"GATEWAY_LIMITS_HEADER_TIMEOUT_S": "0"}, "limits.header_timeout_s must be > 0"),
        ("", {"GATEWAY_LIMITS_TLS_HANDSHAKE_TIMEOUT_S": "-1"}, "limits.tls_handshake_timeout_s must be > 0"),
        ("[tls]\nenabled = 'maybe'\n", {}, "tls.enabled must be true or false"),
        ("", {"GATEWAY_TLS_SESSION_TICKETS": "9"}, "tls.session_tickets must be 0 to 8, got 9"),
        ("", {"GATEWAY_LIMITS_TLS_HANDSHAKES_PER_ADDRESS": "-1"}, "limits.tls_handshakes_per_address must be >= 0"),
        ("", {"GATEWAY_RUNTIME_ONNX_THREADS": "two"}, "runtime.onnx_threads must be an integer"),
        ("[models]\nrepo = 'does/not/exist'\n", {}, "models.repo"),
        ("[server\n", {}, "is not valid TOML"),
        ("[predictions]\nsample_photos = 1.5\n", {}, "predictions.sample_photos must be a fraction 0.0-1.0, got 1.5"),
        ("", {"GATEWAY_PREDICTIONS_SAMPLE_PHOTOS": "-0.1"}, "predictions.sample_photos must be a fraction"),
        ("", {"GATEWAY_PREDICTIONS_SAMPLE_PHOTOS": "some"}, "predictions.sample_photos must be a number"),
        ("[predictions]\nphoto_maxlen = 0\n", {}, "predictions.photo_maxlen must be > 0"),
        ("[predictions]\ninput_max_values = -1\n", {}, "predictions.input_max_values must be 0"),
        ("[skew]\nwindow_s = -1\n", {}, "skew.window_s must be >= 0"),
        ("[skew]\nfeature_thresholds = 'megapixel=2'\n", {}, "skew.feature_thresholds: 'megapixel=2' must be"),
        ("", {"GATEWAY_SKEW_FEATURE_THRESHOLDS": "contrast=x"}, "skew.feature_thresholds: 'contrast=x' must be"),
        ("", {"GATEWAY_SKEW_FEATURE_THRESHOLDS": "contrast"}, "skew.feature_thresholds: 'contrast' must be"),
        ("[logging]\nformat = 'yaml'\n", {}, "logging.format must be one of text, json, got 'yaml'"),
        ("", {"GATEWAY_LOGGING_LEVEL": "loud"}, "logging.level must be one of debug, info, warning, error"),
        ("[logging]\nrequests = 'some'\n", {}, "logging.requests must be true or false"),
        ("[tracing]\notlp_endpoint = 'collector:4317'\n", {}, "tracing.otlp_endpoint must be http://host:port"),
        ("", {"GATEWAY_TRACING_SAMPLE_RATIO": "1.5"}, "tracing.sample_ratio must be a fraction 0.0-1.0, got 1.5"),
    ],
)
def test_invalid_settings_name_the_key(tmp_path: Path, text: str, environ: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_settings(write(tmp_path, text), environ={"GATEWAY_TLS_ENABLED": "false", **environ})


def test_missing_certificates_say_how_to_create_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls.cert: .* does not exist .*gateway pki init"):
        load_settings(write(tmp_path, f"[tls]\npki_dir = '{tmp_path / 'nowhere'}'\n"), environ={})


def test_photo_sampling_and_the_skew_age_limit_are_off_by_default(tmp_path: Path) -> None:
    settings = load_settings(environ={"GATEWAY_TLS_ENABLED": "false"})
    assert settings.predictions.sample_photos == 0.0 and settings.skew.window_s == 0
    tuned = load_settings(
        write(tmp_path, "[predictions]\nsample_photos = 0.25\nphoto_maxlen = 500\n[skew]\nwindow_s = 600\n"),
        environ={"GATEWAY_TLS_ENABLED": "false"},
    )
    assert (tuned.predictions.sample_photos, tuned.predictions.photo_maxlen, tuned.skew.window_s) == (0.25, 500, 600)
