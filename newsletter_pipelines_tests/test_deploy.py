"""The deployment files in `deploy/` (they cannot run here): every variable they set is a
setting, they start the processes of this project, and their limits match `dagster.yaml`."""

from __future__ import annotations

import re
from typing import Any

import yaml

from newsletter_pipelines.defs.providers.accounts import ACCOUNT_TAG
from newsletter_pipelines.settings import PROJECT_ROOT
from newsletter_pipelines_tests.test_readme import env_vars

DEPLOY = PROJECT_ROOT / "deploy"


def load(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text())


def compose_env() -> dict[str, str]:
    return load("compose.yaml")["x-app"]["environment"]


def helm_env() -> dict[str, str]:
    deployment = load("helm-values.yaml")["dagster-user-deployments"]["deployments"][0]
    return {item["name"]: item["value"] for item in deployment["env"]}


def test_every_variable_the_files_set_is_a_setting() -> None:
    known = set(env_vars())
    named = re.findall(r"\bNEWSLETTER_[A-Z_]+", (DEPLOY / "helm-values.yaml").read_text())
    for name in [*compose_env(), *helm_env(), *named]:
        assert not name.startswith("NEWSLETTER_") or name in known, name
    assert compose_env()["NEWSLETTER_DEPLOYMENT"] == "production"
    assert helm_env()["NEWSLETTER_DEPLOYMENT"] == "production"
    assert "NEWSLETTER_DEPLOYMENT=production" in (DEPLOY / "Dockerfile").read_text()


def test_compose_runs_each_process_once_from_the_code_location() -> None:
    services = load("compose.yaml")["services"]
    commands = {name: " ".join(s.get("command", [])) for name, s in services.items()}
    assert "dagster code-server start" in commands["code-server"]
    assert "-m newsletter_pipelines.definitions" in commands["code-server"]
    assert commands["webserver"].startswith("dagster-webserver")
    assert commands["daemon"].startswith("dagster-daemon run")
    assert "newsletter_pipelines.webhooks serve" in commands["receiver"]
    assert sum("dagster-daemon run" in c for c in commands.values()) == 1
    assert all("healthcheck" in s for name, s in services.items() if name != "migrate")
    # the state database and Dagster's storage are upgraded once, before the processes start
    assert commands["migrate"] == (
        "sh -c python -m newsletter_pipelines.state upgrade && dagster instance migrate"
    )
    assert services["migrate"]["restart"] == "no"
    for name in ("code-server", "receiver"):
        upgraded = services[name]["depends_on"]["migrate"]
        assert upgraded == {"condition": "service_completed_successfully"}
    workspace = load("workspace.yaml")["load_from"][0]["grpc_server"]
    assert (workspace["host"], workspace["port"]) == ("code-server", 4000)
    assert (
        workspace["location_name"]
        == yaml.safe_load((PROJECT_ROOT / "workspace.yaml").read_text())["load_from"][0][
            "python_module"
        ]["location_name"]
    )


def test_the_image_copies_what_exists_and_the_tested_instance_config() -> None:
    copies = re.findall(r"^COPY (.+)$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    sources = [part for line in copies for part in line.split()[:-1]]
    assert sources and all((PROJECT_ROOT / s).exists() for s in sources), sources
    assert "dagster.yaml" in sources  # the file test_instance_config loads on PostgreSQL


def test_helm_limits_match_the_instance_config() -> None:
    values = load("helm-values.yaml")
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    instance = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    runs = instance["concurrency"]["runs"]
    assert queued["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    assert ACCOUNT_TAG in [rule["key"] for rule in queued["tagConcurrencyLimits"]]
    assert (
        values["dagsterDaemon"]["runRetries"]["maxRetries"]
        == instance["run_retries"]["max_retries"]
    )
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_compose_gives_postgresql_a_buffer_cache_that_holds_a_million_member_ledger() -> None:
    """The ledger of a million members takes 515 MiB with its indexes (`bench_ledger_writes`):
    PostgreSQL's default 128 MB made a re-run's writes 1.5-1.8x slower at that size."""
    command = " ".join(load("compose.yaml")["services"]["postgres"]["command"])
    found = re.search(r"shared_buffers=\$\{POSTGRES_SHARED_BUFFERS:-(\d+)GB\}", command)
    assert found is not None and int(found.group(1)) >= 1, command
