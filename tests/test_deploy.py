"""The files under deploy/: systemd units, Kubernetes manifests, the Dockerfile and the alert rules.

Nothing here only checks that a file exists.  Units go through ``systemd-analyze verify`` (and ``security``)
when the tool works on this machine, and are parsed and asserted on in any case; every argument list and
every ``PARTITIOND_*`` variable in deploy/ is checked against the real click CLI and the real settings
parser; every metric an alert uses must exist in :class:`partitiond.metrics.Metrics` and in a live scrape of
``partitiond run`` against PostgreSQL; the Dockerfile is checked statically (no container engine here).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from partitiond.cli import main
from partitiond.cluster import free_port
from partitiond.config import load_settings
from partitiond.metrics import Metrics
from partitiond.options import OPTIONS

from .pgtools import Conn, seed_rows
from .test_daemon import scrape_until

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBE = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
ENV_EXAMPLE = SYSTEMD / "partitiond.env.example"
TOML_EXAMPLE = SYSTEMD / "partitiond.toml.example"
INSTALLED_CONFIG = "/etc/partitiond/partitiond.toml"  # where the units read settings; reload re-reads it

INSTALL_BIN = "/opt/partitiond/bin/partitiond"  # the venv the units, the image and the README agree on
DEFAULT_SHUTDOWN_TIMEOUT = 10.0
SETTING_FIELDS = {o.field for o in OPTIONS}
ENV_NAMES = {"PARTITIOND_" + o.field.upper() for o in OPTIONS}
HARDENING = {
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "UMask": "0077",
}


# --- helpers ------------------------------------------------------------------------------------------


def partitiond_executable() -> Path:
    """The console script of the venv running the tests (what `pip install` puts next to the interpreter)."""
    path = Path(sys.executable).parent / "partitiond"
    assert os.access(path, os.X_OK), f"{path} is not executable: install the project into the venv"
    return path


Unit = dict[str, list[tuple[str, str]]]


def parse_unit(path: Path) -> Unit:
    """systemd's unit syntax: sections, repeated keys kept in order, '#'/';' comments, '\\' continuations."""
    unit: Unit = {}
    section: str | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{number}: bad section header {line!r}"
            section = line[1:-1]
            assert section not in unit, f"{path.name}:{number}: section [{section}] repeated"
            unit[section] = []
            continue
        assert section is not None, f"{path.name}:{number}: assignment before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not a key=value line: {line!r}"
        unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= expected once, found {found}"
    return found[0]


def seconds(text: str) -> float:
    """A systemd time span such as 30, 30s, 15min, 1min 30s."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and "".join(f"{n}{u}" for n, u in parts) == text.replace(" ", ""), f"bad time span {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def load_yaml(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"
    return docs


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def cli_settings(argv: list[str], env: Mapping[str, str]) -> None:
    """Parse argv like the CLI does and validate the values with the real settings code.

    ``--help`` appended first: an unknown option or command makes click fail before help is printed.
    Then the same arguments are parsed into parameters (no command runs) and fed, with ``env``, to
    ``load_settings``, so a malformed value or an inconsistent combination fails here too.
    """
    result = CliRunner().invoke(main, [*argv, "--help"], env=dict(env))
    assert result.exit_code == 0, f"`partitiond {shlex.join(argv)} --help` failed:\n{result.output}"
    command = main.get_command(click.Context(main), argv[0])
    assert command is not None, f"unknown command {argv[0]!r}"
    params = command.make_context(argv[0], list(argv[1:])).params
    cli = {k: v for k, v in params.items() if k in SETTING_FIELDS and v is not None and v != ()}
    load_settings(cli, {k: v for k, v in env.items() if k.startswith("PARTITIOND_")}, None)


def env_file(path: Path, *, commented_too: bool) -> dict[str, str]:
    """KEY=value lines of an EnvironmentFile (optionally the '#KEY=value' examples as well)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        text = line.strip()
        if commented_too and re.match(r"#[A-Z][A-Z0-9_]*=", text):
            text = text[1:]
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", text)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def quantity(text: str | int) -> float:
    """A Kubernetes resource quantity (cpu or memory) as a float in base units."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|k|M|G)?", str(text))
    assert match, f"bad quantity {text!r}"
    factor = {None: 1, "m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    return float(match.group(1)) * factor[match.group(2)]


def installed_units(tmp_path: Path) -> dict[str, Path]:
    """Copies of the units with ExecStart= pointing at the real venv's partitiond, side by side."""
    binary = str(partitiond_executable())
    out = {}
    for src in sorted(SYSTEMD.glob("*.service")) + sorted(SYSTEMD.glob("*.timer")):
        text = src.read_text()
        if src.suffix == ".service":
            assert INSTALL_BIN in text, f"{src.name}: ExecStart should run {INSTALL_BIN}"
        dest = tmp_path / src.name
        dest.write_text(text.replace(INSTALL_BIN, binary))
        out[src.name] = dest
    return out


# --- systemd ------------------------------------------------------------------------------------------


def test_systemd_units_have_the_required_settings() -> None:
    daemon = parse_unit(SYSTEMD / "partitiond.service")
    once = parse_unit(SYSTEMD / "partitiond-once.service")
    timer = parse_unit(SYSTEMD / "partitiond-once.timer")

    assert one(daemon, "Service", "Type") == "notify"
    exec_daemon = shlex.split(one(daemon, "Service", "ExecStart"))
    assert exec_daemon == [INSTALL_BIN, "run", "--config", INSTALLED_CONFIG, "--log-format", "json"]
    # `systemctl reload` must reach the daemon as SIGHUP: that re-reads the --config file.
    assert shlex.split(one(daemon, "Service", "ExecReload")) == ["/bin/kill", "-HUP", "$MAINPID"]
    # The daemon pings at half of WATCHDOG_USEC from a loop that ticks at most every 5 s.
    assert seconds(one(daemon, "Service", "WatchdogSec")) >= 20
    assert one(daemon, "Service", "Restart") == "on-failure"
    assert seconds(one(daemon, "Service", "RestartSec")) > 0
    assert seconds(one(daemon, "Service", "TimeoutStopSec")) > DEFAULT_SHUTDOWN_TIMEOUT
    assert one(daemon, "Unit", "StartLimitIntervalSec")  # a never-connecting DSN does not loop forever
    assert one(daemon, "Install", "WantedBy") == "multi-user.target"

    assert one(once, "Service", "Type") == "oneshot"
    exec_once = shlex.split(one(once, "Service", "ExecStart"))
    assert exec_once[:4] == [INSTALL_BIN, "run-once", "--config", INSTALLED_CONFIG]
    textfile = Path(exec_once[exec_once.index("--metrics-textfile") + 1])
    assert textfile.suffix == ".prom"
    assert str(textfile.parent) in one(once, "Service", "ReadWritePaths").split()
    assert seconds(one(once, "Service", "TimeoutStopSec")) > DEFAULT_SHUTDOWN_TIMEOUT

    for name, unit in (("partitiond.service", daemon), ("partitiond-once.service", once)):
        assert one(unit, "Service", "DynamicUser") == "yes", name
        assert one(unit, "Service", "LoadCredential") == "dsn:/etc/partitiond/dsn", name
        assert one(unit, "Service", "EnvironmentFile") == "-/etc/partitiond/partitiond.env", name
        assert one(unit, "Service", "SyslogIdentifier") == "partitiond", name
        assert "PYTHONDONTWRITEBYTECODE=1" in values(unit, "Service", "Environment"), name
        # The secret never travels in the environment.
        assert not any("PARTITIOND_DSN=" in v for v in values(unit, "Service", "Environment")), name
        for key, expected in HARDENING.items():
            assert expected in values(unit, "Service", key), f"{name}: {key}={expected} missing"

    assert one(timer, "Timer", "OnCalendar") == "*:00/30"
    assert one(timer, "Timer", "Persistent") == "true"
    assert seconds(one(timer, "Timer", "RandomizedDelaySec")) == 120
    assert one(timer, "Timer", "AccuracySec") == "1s"
    assert one(timer, "Timer", "Unit") == "partitiond-once.service"
    assert one(timer, "Install", "WantedBy") == "timers.target"


def test_systemd_unit_command_lines_are_valid_cli_invocations() -> None:
    """The units' flags parse, and so does their --config file as shipped (every example key set)."""
    for name in ("partitiond.service", "partitiond-once.service"):
        argv = shlex.split(one(parse_unit(SYSTEMD / name), "Service", "ExecStart"))[1:]
        at = argv.index("--config")
        assert argv[at + 1] == INSTALLED_CONFIG, name
        cli_settings(argv[:at] + argv[at + 2 :], env_file(ENV_EXAMPLE, commented_too=True))


def toml_example(*, commented_too: bool) -> str:
    """The TOML example's text, optionally with its '#key = value' examples uncommented."""
    text = TOML_EXAMPLE.read_text()
    return re.sub(r"(?m)^#([a-z_]+ = )", r"\1", text) if commented_too else text


def test_toml_example_is_valid_for_the_real_settings(tmp_path: Path) -> None:
    installed = tmp_path / "partitiond.toml"
    installed.write_text(toml_example(commented_too=False))
    assert load_settings({}, {}, installed) == load_settings({}, {}, None), "the example sets nothing"
    installed.write_text(toml_example(commented_too=True))
    keys = set(tomllib.loads(installed.read_text()))
    assert {"originators", "interval", "metrics_address"} <= keys <= SETTING_FIELDS
    assert not keys & {"dsn", "dsn_file"}, "the file is world-readable: no DSN in it"
    settings = load_settings({}, {}, installed)
    assert settings.originators == (100, 200)
    assert settings.shutdown_timeout < seconds(
        one(parse_unit(SYSTEMD / "partitiond.service"), "Service", "TimeoutStopSec")
    )
    text = TOML_EXAMPLE.read_text()
    assert INSTALLED_CONFIG in text and "systemctl reload partitiond" in text


@dataclass
class Analyze:
    ok: bool
    output: str


def run_analyze(*args: str, cwd: Path) -> Analyze:
    tool = shutil.which("systemd-analyze")
    assert tool is not None
    proc = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    return Analyze(proc.returncode == 0, (proc.stdout + proc.stderr).strip())


def test_systemd_analyze_verify_and_security(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the real units (ExecStart at the venv's partitiond), when the tool works.

    A canary with an unknown key proves that verify runs for real here; if even the canary produces no
    diagnostic, or the tool fails on something that is not one of our files, that is the environment and is
    reported as a warning (the parse-and-assert test above still ran).  Any diagnostic naming one of our
    units fails the test.
    """
    if shutil.which("systemd-analyze") is None:
        warnings.warn("systemd-analyze not installed: units checked by parsing only", stacklevel=1)
        return
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    (canary_dir / "canary.service").write_text(
        f"[Service]\nType=oneshot\nExecStart={partitiond_executable()} --version\nNoSuchKey=1\n"
    )
    canary = run_analyze("verify", "--man=no", "canary.service", cwd=canary_dir)
    if "NoSuchKey" not in canary.output:
        warnings.warn(f"systemd-analyze verify is not functional here: {canary.output!r}", stacklevel=1)
        return

    units = installed_units(tmp_path)
    result = run_analyze("verify", "--man=no", *units, cwd=tmp_path)
    ours = [line for line in result.output.splitlines() if any(name in line for name in units)]
    assert result.ok and not ours, f"systemd-analyze verify:\n{result.output}"
    assert not result.output, f"systemd-analyze verify printed diagnostics:\n{result.output}"

    for name in ("partitiond.service", "partitiond-once.service"):
        security = run_analyze("security", "--offline=yes", "--threshold=20", str(units[name]), cwd=tmp_path)
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.output)
        assert match, f"systemd-analyze security {name}:\n{security.output}"
        # 0 is a fully sandboxed unit, 10 an unsandboxed one; these units score about 1.3-1.5.
        assert float(match.group(1)) <= 2.0, f"{name} sandbox weakened:\n{security.output}"


def test_env_example_is_valid_for_the_real_settings() -> None:
    examples = env_file(ENV_EXAMPLE, commented_too=True)
    assert examples, "the env example documents no variable"
    assert set(examples) <= ENV_NAMES, f"not partitiond settings: {sorted(set(examples) - ENV_NAMES)}"
    assert "PARTITIOND_DSN" not in examples  # the DSN is a credential, not an env var
    assert env_file(ENV_EXAMPLE, commented_too=False) == {}, "the example must set nothing by default"
    settings = load_settings({}, examples, None)
    assert settings.shutdown_timeout < seconds(
        one(parse_unit(SYSTEMD / "partitiond.service"), "Service", "TimeoutStopSec")
    )


# --- every PARTITIOND_* name mentioned anywhere under deploy/ ------------------------------------------


def test_every_partitiond_variable_named_in_deploy_is_a_real_option() -> None:
    mentioned: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            for name in re.findall(r"\bPARTITIOND_[A-Z0-9_]+", path.read_text()):
                mentioned.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert "PARTITIOND_DSN_FILE" in mentioned
    unknown = {name: sorted(files) for name, files in mentioned.items() if name not in ENV_NAMES}
    assert not unknown, f"variables partitiond does not read: {unknown}"


# --- Kubernetes ---------------------------------------------------------------------------------------


def containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Init and app containers; a patch (sidecar-patch.yaml) may have only the former."""
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def container_env(container: dict[str, Any]) -> dict[str, str]:
    out = {}
    for item in container.get("env", []):
        assert "valueFrom" not in item or item["name"] != "PARTITIOND_DSN", "DSN must come from a file"
        if "value" in item:
            assert isinstance(item["value"], str), f"env {item['name']}: quote the value"
            out[item["name"]] = item["value"]
    return out


def assert_restricted(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """Pod Security Standard 'restricted' plus a read-only root with a writable /tmp."""
    pod_sc = pod.get("securityContext", {})
    sc = container["securityContext"]
    merged = {**pod_sc, **sc}
    assert merged["runAsNonRoot"] is True
    assert merged["runAsUser"] == 999 and merged["runAsGroup"] == 999
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["readOnlyRootFilesystem"] is True
    assert merged["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], "/tmp must be an emptyDir"
    assert container_env(container).get("PYTHONDONTWRITEBYTECODE") == "1"


def assert_dsn_from_secret_file(
    pod: dict[str, Any], container: dict[str, Any], secret: dict[str, Any]
) -> None:
    args = container["args"]
    env = container_env(container)
    dsn_file = env.get("PARTITIOND_DSN_FILE") or args[args.index("--dsn-file") + 1]
    assert "--dsn" not in args and "PARTITIOND_DSN" not in env
    path = Path(dsn_file)
    mounts = [m for m in container["volumeMounts"] if path.parent == Path(m["mountPath"])]
    assert len(mounts) == 1, f"{dsn_file} is not inside a mounted volume"
    assert mounts[0].get("readOnly") is True
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[0]["name"]]
    source = volume["secret"]
    assert source["secretName"] == secret["metadata"]["name"]
    items = {i["path"]: i["key"] for i in source.get("items", [])}
    key = items.get(path.name, path.name)
    assert key in secret["stringData"], f"Secret has no key {key!r}"
    # fsGroup makes the file readable by the non-root user; group read only, never world.
    assert source.get("defaultMode", 0o644) & 0o007 == 0
    assert pod["securityContext"].get("fsGroup") == 999


def assert_resources(container: dict[str, Any]) -> None:
    res = container["resources"]
    for kind in ("cpu", "memory"):
        request, limit = quantity(res["requests"][kind]), quantity(res["limits"][kind])
        assert 0 < request <= limit, f"{kind}: request {request} > limit {limit}"
    assert quantity(res["limits"]["memory"]) <= 256 * 2**20


def secret() -> dict[str, Any]:
    return only(load_yaml(KUBE / "secret.example.yaml"), "Secret")


def test_secret_example_is_clearly_fake() -> None:
    s = secret()
    dsn = s["stringData"]["dsn"]
    assert "CHANGE-ME" in dsn and ".invalid" in dsn
    assert "data" not in s


def sidecar_pod() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The sidecar patch: a Deployment fragment holding only what it adds to an existing xmtpd.

    What the patch makes of a whole Deployment (kustomize, kubectl patch) is tests/test_kubernetes.py's.
    """
    deployment = only(load_yaml(KUBE / "sidecar-patch.yaml"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    side = [c for c in pod.get("initContainers", []) if c["name"] == "partitiond"]
    assert len(side) == 1, "partitiond must be an initContainer (native sidecar)"
    return deployment, pod, side[0]


def test_sidecar_manifest() -> None:
    deployment, pod, side = sidecar_pod()
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["metadata"] == {"name": "xmtpd"}, "the patch targets the Deployment named xmtpd"
    assert "selector" not in deployment["spec"] and "replicas" not in deployment["spec"]

    assert side["restartPolicy"] == "Always"
    assert side["args"] == [
        "run",
        "--dsn-file",
        "/var/run/secrets/partitiond/dsn",
        "--log-format",
        "json",
        "--metrics-address",
        "0.0.0.0:9187",
    ]
    ports = {p["name"]: p for p in side["ports"]}
    assert ports["metrics"]["containerPort"] == 9187
    probe = side["livenessProbe"]["httpGet"]
    assert probe == {"path": "/healthz", "port": "metrics"}
    assert "readinessProbe" not in side
    assert "startupProbe" not in side or "readiness" not in json.dumps(side["startupProbe"])
    text = (KUBE / "sidecar-patch.yaml").read_text()
    assert re.search(r"#.*readinessProbe", text) and re.search(r"#.*readiness.*Pod", text), (
        "explain in a comment why the sidecar has no readinessProbe"
    )
    assert_restricted(pod, side)
    assert_dsn_from_secret_file(pod, side, secret())
    assert_resources(side)
    # The grace period is xmtpd's (its own drain time); the patch leaves it alone.
    assert "terminationGracePeriodSeconds" not in pod
    assert pod["automountServiceAccountToken"] is False


def test_cronjob_manifest() -> None:
    cron = only(load_yaml(KUBE / "cronjob.yaml"), "CronJob")
    assert cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert spec["schedule"] == "*/30 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] == "Etc/UTC"
    assert 0 < spec["startingDeadlineSeconds"] < 1800
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0
    # A pass that overran its slot would only make the next one skip (Forbid); stop it well before.
    assert 0 < job["activeDeadlineSeconds"] < 1800
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["args"] == [
        "run-once",
        "--dsn-file",
        "/var/run/secrets/partitiond/dsn",
        "--log-format",
        "json",
    ]
    assert pod["automountServiceAccountToken"] is False
    assert_restricted(pod, container)
    assert_dsn_from_secret_file(pod, container, secret())
    assert_resources(container)
    assert pod["terminationGracePeriodSeconds"] > DEFAULT_SHUTDOWN_TIMEOUT


def test_podmonitor_selects_the_sidecar_pod_and_its_named_port() -> None:
    monitor = only(load_yaml(KUBE / "monitoring" / "podmonitor.yaml"), "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    deployment, _, side = sidecar_pod()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in side["ports"]}
    assert endpoint["port"] == side["livenessProbe"]["httpGet"]["port"] == "metrics"
    # The alert rules group by `database`: the scrape must attach it.
    assert [r["targetLabel"] for r in endpoint["relabelings"]] == ["database"]


def test_every_partitiond_container_uses_valid_cli_arguments() -> None:
    checked = 0
    for path in sorted(KUBE.rglob("*.yaml")):
        for doc in load_yaml(path):
            for pod in pod_specs(doc):
                for container in containers(pod):
                    if "partitiond" in container["image"]:
                        cli_settings(container["args"], container_env(container))
                        checked += 1
    assert checked == 2, f"expected the sidecar patch's and the CronJob's container, checked {checked}"


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec", {})
    if "jobTemplate" in spec:
        yield spec["jobTemplate"]["spec"]["template"]["spec"]
    elif "template" in spec:
        yield spec["template"]["spec"]


# --- Dockerfile (static: no container engine on this machine) ------------------------------------------


@dataclass
class Instruction:
    line: int
    op: str
    args: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continuation are removed by the parser
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        op, _, args = (buffer + stripped).partition(" ")
        out.append(Instruction(start, op.upper(), args.strip()))
        buffer = ""
    assert not buffer, "Dockerfile ends inside a continuation"
    return out


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {text}"
    return [str(v) for v in value]


def test_dockerfile_is_consistent() -> None:
    ins = dockerfile_instructions(DOCKERFILE)
    known = {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"}
    assert {i.op for i in ins} <= known, [i for i in ins if i.op not in known]
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in ins if i.op == "ARG" and "=" in i.args}

    stages: list[tuple[str, str]] = []  # (image, stage name)
    for i in (i for i in ins if i.op == "FROM"):
        match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", i.args, re.I)
        assert match, f"line {i.line}: name every stage (FROM image AS name)"
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
        stages.append((image, match.group(2)))
    assert [image for image, _ in stages] == ["python:3.11-slim-bookworm"] * 2, "builder and runtime match"
    names = [name for _, name in stages]

    # COPY sources: earlier stages for --from, otherwise files that exist in the build context (the repo).
    for i in (i for i in ins if i.op == "COPY"):
        words = i.args.split()
        flags = [w for w in words if w.startswith("--")]
        *sources, _dest = [w for w in words if not w.startswith("--")]
        stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if stage is not None:
            assert stage in names[:-1], f"line {i.line}: unknown stage {stage}"
            continue
        for src in sources:
            assert (REPO / src).exists(), f"line {i.line}: COPY source {src} is not in the repository"
    copied = {w.rstrip("/") for i in ins if i.op == "COPY" for w in i.args.split()[:-1]}
    assert {"pyproject.toml", "README.md", "partitiond", "sql"} <= copied

    runtime = ins[max(n for n, i in enumerate(ins) if i.op == "FROM") :]
    (user,) = [i.args for i in runtime if i.op == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0 and int(gid) != 0, f"USER {user}"
    assert user == "999:999"
    assert any(f"--uid {uid}" in i.args and f"--gid {gid}" in i.args for i in runtime if i.op == "RUN")
    assert any(i.op == "COPY" and i.args.split()[-1] == "/opt/partitiond" for i in runtime)

    env = " ".join(i.args for i in runtime if i.op == "ENV")
    assert "PATH=/opt/partitiond/bin:$PATH" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert Path(INSTALL_BIN).parent == Path("/opt/partitiond/bin")  # same venv as the systemd units

    (entrypoint,) = [exec_form(i.args) for i in runtime if i.op == "ENTRYPOINT"]
    assert entrypoint == ["partitiond"]
    (cmd,) = [exec_form(i.args) for i in runtime if i.op == "CMD"]
    assert cmd == ["run"]
    image_env = dict(re.findall(r"(PARTITIOND_[A-Z_]+)=(\S+)", env))
    cli_settings(cmd, image_env)
    (expose,) = [i.args for i in runtime if i.op == "EXPOSE"]
    assert expose == "9187"
    assert image_env.get("PARTITIOND_METRICS_ADDRESS", "").endswith(":" + expose)


# --- alerts -------------------------------------------------------------------------------------------

REQUIRED_ALERTS = {
    "PartitiondLowRunway": "critical",
    "PartitiondNoSuccessfulRun": "critical",
    "PartitiondEnsureFailures": "warning",
    "PartitiondNoLeader": "critical",
    "PartitiondColdPath": "warning",
}


RUNBOOK_BASE = "https://partitiond-runbook.invalid/"  # the placeholder operators replace (README "Alerts")


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert all("alert" in r for r in rules), "only alerting rules expected"
    return rules


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bpartitiond_[a-z0-9_]*[a-z0-9]", text))


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    by_name = {r["alert"]: r for r in rules}
    for name, severity in REQUIRED_ALERTS.items():
        assert by_name[name]["labels"]["severity"] == severity, name
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["annotations"]["runbook_url"].startswith(RUNBOOK_BASE + "README.md#"), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert "for" not in rule or re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        # one Prometheus may watch several databases: every rule keeps them apart
        assert "by (database" in rule["expr"], rule["alert"]
    exprs = {name: " ".join(r["expr"].split()) for name, r in by_name.items()}
    assert exprs["PartitiondLowRunway"] == (
        "min by (database, originator) (partitiond_originator_steady_seconds_to_exhaustion) < 2 * 1800"
    )
    assert by_name["PartitiondLowRunway"]["for"] == "5m"
    assert any("(partitiond_originator_fill_ratio) > 0.9" in e for e in exprs.values())
    newest_success = "max by (database) (partitiond_last_success_timestamp_seconds)"
    assert f"time() - {newest_success} > 3 * 1800" in exprs["PartitiondNoSuccessfulRun"]
    assert f"{newest_success} > 0" in exprs["PartitiondNoSuccessfulRun"]
    assert "absent(partitiond_last_success_timestamp_seconds)" in exprs["PartitiondMetricsAbsent"]
    assert exprs["PartitiondEnsureFailures"] == (
        "sum by (database, reason) (increase(partitiond_ensure_failures_total[1h])) > 0"
    )
    assert exprs["PartitiondNoLeader"].startswith("max by (database) (partitiond_leader) == 0 unless")
    assert "partitiond_last_leader_pass_timestamp_seconds" in exprs["PartitiondNoLeader"]
    assert by_name["PartitiondNoLeader"]["for"] == "15m"
    assert exprs["PartitiondColdPath"] == (
        "sum by (database, originator) (increase(partitiond_cold_path_suspicions_total[1h])) > 0"
    )


def readme_anchors() -> set[str]:
    """The anchors GitHub-style renderers give README.md's headings (lower case, punctuation dropped)."""
    headings = re.findall(r"^#+ (.+)$", (REPO / "README.md").read_text(encoding="utf-8"), re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_alert_runbook_urls_lead_to_readme_sections() -> None:
    """Each alert links to its own README section, and that section names the alert."""
    anchors = readme_anchors()
    for rule in alert_rules():
        anchor = rule["annotations"]["runbook_url"].removeprefix(RUNBOOK_BASE + "README.md#")
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"README.md has no section #{anchor}"


def test_alerts_use_only_metrics_partitiond_exports() -> None:
    """Every partitiond_* name in the rule file (expressions and annotations) is a real sample name."""
    referenced = metric_names_in(ALERTS.read_text())
    assert len(referenced) >= 6
    unknown = referenced - Metrics().metric_names()
    assert not unknown, f"not exported by partitiond: {sorted(unknown)}"


def test_alerts_pass_promtool_when_available() -> None:
    """promtool's syntax check and unit tests (alerts.test.yaml); parse checks above cover its absence."""
    local = Path(sys.prefix) / "tools" / "promtool"  # fetched by `make tools` (part of `make test`)
    promtool = str(local) if local.is_file() else shutil.which("promtool")
    if promtool is None:
        assert not os.environ.get("CI"), "CI must run promtool: `make test` fetches it with `make tools`"
        warnings.warn("promtool not installed (run `make tools`): alerts.test.yaml not run", stacklevel=1)
        return
    for args in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERT_TESTS)]):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def test_alert_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    covered = {
        case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if case.get("exp_alerts")
    }
    assert covered == {r["alert"] for r in alert_rules()}


@pytest.mark.slow
def test_a_running_daemon_exports_every_metric_the_alerts_use(conn: Conn, db_dsn: str) -> None:
    """Scrape `partitiond run` against PostgreSQL until every alert metric has a sample.

    The data make every series appear: originator 900 has rows (forecast, fill, headroom), and 700's
    vector clock points into a band that does not exist, which is a repair of a band holding rows, i.e. a
    cold-path suspicion.  The forecast needs two readings, hence a 1 s interval.
    """
    seed_rows(conn, 900, [800_000])
    conn.execute(
        "INSERT INTO gateway_envelopes_latest (originator_node_id, originator_sequence_id, gateway_time)"
        " VALUES (700, 5500000, now())"
    )
    wanted = metric_names_in(" ".join(r["expr"] for r in alert_rules()))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "partitiond", "run", "--log-format", "json"],
        env={
            **os.environ,
            "PARTITIOND_DSN": db_dsn,
            "PARTITIOND_METRICS_ADDRESS": f"127.0.0.1:{port}",
            "PARTITIOND_INTERVAL": "1s",
            "PARTITIOND_JITTER": "0",
            "PARTITIOND_PROBE_INTERVAL": "0",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        text = scrape_until(port, wanted, 30, "every alert metric in the scrape")
        assert re.search(r'^partitiond_runs_total\{result="success"\} [1-9]', text, re.M), text
        assert re.search(r"^partitiond_last_success_timestamp_seconds [1-9]", text, re.M), text
        assert re.search(r'^partitiond_cold_path_suspicions_total\{originator="700"\} [1-9]', text, re.M)
        assert re.search(r'^partitiond_originator_seconds_to_exhaustion\{originator="900"\} ', text, re.M)
        steady = r'^partitiond_originator_steady_seconds_to_exhaustion\{originator="900"\} '
        assert re.search(steady, text, re.M), text
        assert re.search(r"^partitiond_leader 1", text, re.M), text
        assert re.search(r"^partitiond_last_leader_pass_timestamp_seconds [1-9]", text, re.M), text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.communicate()
