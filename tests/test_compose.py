"""docker-compose.yml, Dockerfile and README agree with the code (no Docker engine needed)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from backend.settings import ENGINE_VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
README = (ROOT / "README.md").read_text()
OUR_SERVICES = ("web", "worker", "cleanup")


def settings_docs() -> dict[str, str]:
    """ENV_NAME -> doc line: the Settings fields' docs, read from the source, and the engine's."""
    tree = ast.parse((ROOT / "backend" / "settings.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    docs, body = {}, cls.body
    for node, after in zip(body, body[1:] + [None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id != "engine":
            is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            docs[node.target.id.upper()] = after.value.value if is_doc else ""
    docs.update({env: f"{env}: {doc}" for env, (_, doc) in ENGINE_VARIABLES.items()})
    return docs


def shown(value: object) -> str:
    """A default as the README's table shows it."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def readme_settings() -> dict[str, str]:
    """ENV_NAME -> default column of the README's settings table."""
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", README, flags=re.M)
    return {name: default.strip() for name, default in rows}


def test_every_setting_has_a_doc_line_naming_it():
    docs = settings_docs()
    assert set(docs) == set(Settings().environment())
    for env, doc in docs.items():
        assert doc.startswith(f"{env}: "), env


def test_readme_documents_every_setting_with_its_default():
    documented = readme_settings()
    defaults = Settings().environment()
    assert set(documented) == set(defaults)
    for env, value in defaults.items():
        expected = shown(value)
        assert documented[env].strip("`") == (expected if expected else "(empty)"), env


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_service_env_vars_are_settings(service):
    env = COMPOSE["services"][service]["environment"]
    names = set(Settings().environment())
    assert set(env) <= names, set(env) - names
    assert "REDIS_URL" in env and "LABEL_STUDIO_URL" in env and "MODEL_DIR" in env


def test_compose_environment_parses_as_settings():
    for service in OUR_SERVICES:
        env = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v))
               for k, v in COMPOSE["services"][service]["environment"].items()}
        settings = Settings.from_env(env)
        assert settings.redis_url == "redis://redis:6379/0"


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_service_commands_exist(service):
    command = COMPOSE["services"][service]["command"]
    assert command[:2] == ["python", "-m"]
    module = command[2]
    assert importlib.util.find_spec(module) is not None
    assert importlib.util.find_spec(f"{module}.__main__") is not None


def test_services_share_the_model_volume_and_one_image():
    services = [COMPOSE["services"][s] for s in OUR_SERVICES]
    assert len({service["image"] for service in services}) == 1
    assert all("models:/data" in service["volumes"] for service in services)
    assert "models" in COMPOSE["volumes"]


def test_workers_take_every_queue_and_clean_ups_have_their_own():
    from backend import jobqueue

    def queues(service: str) -> list[str]:
        command = COMPOSE["services"][service]["command"]
        return command[command.index("--queues") + 1].split(",")

    assert queues("cleanup") == [jobqueue.CLEANUP]
    assert sorted(queues("worker") + queues("cleanup")) == sorted(jobqueue.QUEUES)


def test_worker_reserves_a_gpu():
    devices = COMPOSE["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"


def test_label_studio_and_redis():
    ls = COMPOSE["services"]["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    assert ls["environment"]["USE_DEFAULT_BANNED_SUBNETS"] == "false"
    assert "--appendonly" in COMPOSE["services"]["redis"]["command"]


def test_dockerfile_copies_what_the_commands_import():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("backend", "workers"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "ARG TORCH_INDEX" in dockerfile and "requirements.txt" in dockerfile


def settings_table() -> str:
    """The README's settings table, generated from backend/settings.py."""
    docs = settings_docs()
    rows = ["| Variable | Default | What it does |", "|---|---|---|"]
    for env, value in Settings().environment().items():
        default = shown(value)
        doc = docs[env].split(": ", 1)[1].replace("|", "\\|")
        rows.append(f"| `{env}` | {f'`{default}`' if default else '(empty)'} | {doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # `python -m tests.test_compose` rewrites the README's settings table
    text = (ROOT / "README.md").read_text()
    (ROOT / "README.md").write_text(
        re.sub(r"\| Variable \| Default \| What it does \|\n(\|.*\|\n)+", lambda _: settings_table(), text))
