"""Settings from the environment: the engine's part is an EngineConfig, validated by the engine."""

import subprocess
import sys
from pathlib import Path

import pytest

from backend.al.config import EngineConfig
from backend.settings import ENGINE_VARIABLES, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]


def test_engine_variables_set_the_engine_config():
    settings = Settings.from_env({"MODEL_MODE": "full", "STRATEGY": "bald", "MC_SAMPLES": "8",
                                  "POWER_BETA": "2.5", "WARM_START": "true", "SEED": "7", "DEVICE": "cpu",
                                  "POSTERIOR": "bootstrap"})
    assert settings.engine == EngineConfig(mode="full", strategy="bald", mc_samples=8, power_beta=2.5,
                                           warm_start=True, seed=7, device="cpu", posterior="bootstrap")


def test_defaults_are_the_engine_configs_own():
    assert Settings.from_env({}).engine == Settings().engine == EngineConfig()


def test_every_engine_variable_names_a_config_field():
    assert {name for name, _ in ENGINE_VARIABLES.values()} <= set(EngineConfig.__dataclass_fields__)


@pytest.mark.parametrize("variable, value, reason", [
    ("MODEL_MODE", "tiny", "mode must be one of head, full"),
    ("STRATEGY", "coin", "unknown strategy 'coin'"),
    ("MC_SAMPLES", "0", "mc_samples must be >= 1"),
    ("EXPLORATION", "1.5", "exploration must be in [0, 1)"),
    ("POWER_BETA", "nan", "power_beta must be in [0, 100]"),
    ("DIVERSITY_CLUSTERS", "-1", "diversity_clusters must be >= 0"),
    ("POSTERIOR", "dropout", "posterior must be one of auto, laplace, bootstrap"),
    ("MC_SAMPLES", "many", "is not an integer"),
    ("WARM_START", "maybe", "is not a boolean"),
])
def test_a_bad_engine_value_is_a_settings_error_naming_the_variable(variable, value, reason):
    with pytest.raises(SettingsError, match=variable) as info:
        Settings.from_env({variable: value})
    assert reason in str(info.value)


def test_environment_round_trips():
    settings = Settings.from_env({"MODEL_MODE": "full", "EXPLORATION": "0.25", "PORT": "1234",
                                  "SETUP_VIEW": "false", "LABEL_STUDIO_API_KEY": "tok"})
    assert Settings.from_env({k: str(v) for k, v in settings.environment().items()}) == settings


def _modules_after(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('torch' in sys.modules)"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_settings_import_no_torch():
    assert _modules_after("from backend.settings import Settings\nSettings.from_env({})") == "False"


def test_web_process_starts_without_torch():
    """The web app imports torch only when it serves its first prediction (in a fresh process,
    so that other tests' imports do not count)."""
    code = ("from backend.app import create_app\nfrom backend.settings import Settings\n"
            "create_app(Settings(redis_url='redis://127.0.0.1:1/0'))")
    assert _modules_after(code) == "False"


def test_repr_masks_secrets():
    settings = Settings(label_studio_api_key="key-1234567890", basic_auth_user="ls", basic_auth_pass="pw-secret",
                        webhook_secret="s" * 20)
    text = repr(settings)
    assert "key-1234567890" not in text and "pw-secret" not in text and "s" * 20 not in text
    assert "basic_auth_user='ls'" in text and "label_studio_api_key='***'" in text
    assert "webhook_secret=''" in repr(Settings())


def test_ambiguity_routing_is_a_setting_off_by_default():
    assert Settings.from_env({}).engine.ambiguity is False
    assert Settings.from_env({"AMBIGUITY": "on"}).engine.ambiguity is True
    with pytest.raises(SettingsError, match="AMBIGUITY"):
        Settings.from_env({"AMBIGUITY": "maybe"})
