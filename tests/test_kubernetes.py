"""Tests for deploy/kubernetes: the manifests validate against Kubernetes' own schemas, the
kustomize output (rendered offline by tests/kustomize.py) wires what the daemon reads, and
the probe endpoints the StatefulSet uses answer what they promise."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import kubernetes_validate
import pytest
import yaml

from monitor.cli.app import build_parser, main
from monitor.config.monitoring import MetricsSettings
from monitor.config.settings import load_settings
from monitor.daemon.shards import INDEX_ENV, SHARDS_ENV, auto_shard
from monitor.daemon.supervisor import run_daemon
from monitor.errors import UserError
from monitor.ops.metrics import MetricsSink
from tests.kustomize import Doc, Unsupported, build
from tests.test_service import WedgedSink

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
BASE = KUBE / "base"
OVERLAY = KUBE / "overlays" / "example"
TREES = [BASE, OVERLAY]
#: the oldest Kubernetes the base needs (the pod-index label, 1.28) and a current one
VERSIONS = ["1.28", "1.37"]


def rendered(tree: Path) -> dict[tuple[str, str], Doc]:
    return {(d["kind"], d["metadata"]["name"]): d for d in build(tree)}


def one(docs: dict[tuple[str, str], Doc], kind: str, name: str = "margin-monitor") -> Doc:
    return docs[(kind, name)]


def container(docs: dict[tuple[str, str], Doc]) -> Doc:
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    result: Doc = pod["containers"][0]
    return result


def env_of(c: Doc) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def config_map(docs: dict[tuple[str, str], Doc], reference: str) -> Doc:
    (found,) = [d for (k, n), d in docs.items() if k == "ConfigMap" and n == reference]
    return found


def shards_of(docs: dict[tuple[str, str], Doc]) -> int:
    (source,) = container(docs)["envFrom"]
    data = config_map(docs, source["configMapRef"]["name"])["data"]
    return int(data[SHARDS_ENV])


def k8s_secret_dir(path: Path, names: list[str]) -> Path:
    """A directory laid out like a mounted Secret: ..data symlinks to a timestamped dir."""
    stamp = path / "..2026_12_03_10_00_00.000000001"
    stamp.mkdir(parents=True)
    for name in names:
        (stamp / name).write_text(f"value-of-{name}")
    (path / "..data").symlink_to(stamp.name)
    for name in names:
        (path / name).symlink_to(f"..data/{name}")
    return path


class TestSchemas:
    @pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
    @pytest.mark.parametrize("version", VERSIONS)
    def test_every_rendered_object_validates(self, tree: Path, version: str) -> None:
        """Test that every built-in object validates strictly against Kubernetes' schema."""
        checked = 0
        for doc in build(tree):
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: no schema ships with kubernetes-validate (TestServiceMonitor)
            kubernetes_validate.validate(doc, version, strict=True)
            checked += 1
        assert checked >= 5

    def test_component_files_validate_or_are_the_servicemonitor(self) -> None:
        """Test that every YAML file under deploy/kubernetes parses and validates by itself."""
        for path in sorted(KUBE.rglob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc is None or doc["kind"] in {"Kustomization", "Component"}:
                    continue
                if doc["kind"] == "ServiceMonitor" or path.name.endswith("-patch.yaml"):
                    continue  # a CRD, and a partial object merged into the StatefulSet
                kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)

    def test_validation_catches_a_typo(self) -> None:
        """Test that the strict schema check fails on a misspelt StatefulSet field."""
        sts = copy.deepcopy(one(rendered(BASE), "StatefulSet"))
        sts["spec"]["podManagmentPolicy"] = sts["spec"].pop("podManagementPolicy")
        with pytest.raises(jsonschema.ValidationError):
            kubernetes_validate.validate(sts, VERSIONS[-1], strict=True)


class TestRenderer:
    @pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl with kustomize here")
    @pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
    def test_same_output_as_kubectl_kustomize(self, tree: Path) -> None:
        """Test that the offline renderer gives kustomize's own output, hash suffixes too."""
        out = subprocess.run(
            ["kubectl", "kustomize", str(tree)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        real = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
        assert rendered(tree) == real

    def test_outside_the_subset_is_refused(self, tmp_path: Path) -> None:
        """Test that a kustomization feature the renderer lacks fails instead of rendering."""
        (tmp_path / "kustomization.yaml").write_text("namePrefix: prod-\nresources: []\n")
        with pytest.raises(Unsupported, match="namePrefix"):
            build(tmp_path)

    def test_config_edit_changes_the_configmap_name(self, tmp_path: Path) -> None:
        """Test that editing config.toml renames the ConfigMap, so the pods roll."""
        copy_ = tmp_path / "base"
        shutil.copytree(BASE, copy_)
        before = {n for k, n in rendered(copy_) if k == "ConfigMap"}
        with (copy_ / "config.toml").open("a") as fh:
            fh.write("\n# edited\n")
        after = {n for k, n in rendered(copy_) if k == "ConfigMap"}
        assert len(before - after) == 1
        assert all(re.fullmatch(r"margin-monitor-(config|shards)-[a-z0-9]{10}", n) for n in after)


class TestStatefulSet:
    @pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
    def test_one_pod_per_shard(self, tree: Path) -> None:
        """Test that replicas equal MARGIN_MONITOR_SHARDS and the daemon runs --shard auto."""
        docs = rendered(tree)
        sts = one(docs, "StatefulSet")
        assert sts["spec"]["replicas"] == shards_of(docs)
        assert sts["spec"]["podManagementPolicy"] == "Parallel"
        args = build_parser().parse_args(container(docs)["args"])
        assert (args.command, args.shard, args.no_tui) == ("run", "auto", True)
        index = env_of(container(docs))[INDEX_ENV]["fieldRef"]["fieldPath"]
        assert index == "metadata.labels['apps.kubernetes.io/pod-index']"

    def test_overlay_changes_shards_and_image(self) -> None:
        """Test that the example overlay moves to 5 shards, its namespace and its image."""
        docs = rendered(OVERLAY)
        assert one(docs, "StatefulSet")["spec"]["replicas"] == shards_of(docs) == 5
        assert {d["metadata"].get("namespace") for d in docs.values()} == {"trading"}
        assert container(docs)["image"] == "registry.example.org/margin-monitor:0.1.0"
        pod = one(docs, "StatefulSet")["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "false"
        assert container(docs)["resources"]["requests"]["memory"] == "384Mi"

    @pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
    def test_config_secret_and_state_reach_the_daemon(
        self, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Test that the mounted TOML loads with a Secret of systemd credential names."""
        docs = rendered(tree)
        sts = one(docs, "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        c = container(docs)
        env = env_of(c)
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        args = build_parser().parse_args(c["args"])
        config_dir, _, key = args.config.rpartition("/")
        assert mounts["config"]["mountPath"] == config_dir
        assert mounts["config"]["readOnly"]
        toml = config_map(docs, volumes["config"]["configMap"]["name"])["data"][key]
        assert mounts["credentials"]["mountPath"] == env["CREDENTIALS_DIRECTORY"]
        assert volumes["credentials"]["secret"]["secretName"] == "margin-monitor-credentials"
        claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
        assert claims == ["state"]
        assert mounts["state"]["mountPath"] == env["STATE_DIRECTORY"]
        # the credentials the docs name, in a directory laid out like a mounted Secret
        (tmp_path / "config.toml").write_text(toml)
        accounts = re.findall(r'^name = "([^"]+)"', toml, flags=re.MULTILINE)
        names = [
            f"accounts__{a.replace('-', '_')}__{f}"
            for a in accounts
            for f in ("api_key", "secret", "password")
        ]
        secret_dir = k8s_secret_dir(tmp_path / "credentials", [*names, "mqtt__password"])
        for name, value in env.items():
            if isinstance(value, str) and name.startswith("MARGIN_MONITOR__"):
                monkeypatch.setenv(name, value.replace("$(POD_NAME)", "margin-monitor-0"))
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(secret_dir))
        monkeypatch.setenv("STATE_DIRECTORY", env["STATE_DIRECTORY"])
        settings = load_settings(tmp_path / "config.toml")
        assert [a.name for a in settings.accounts] == accounts
        for account in settings.accounts:
            assert account.secret is not None
            assert account.secret.get_secret_value().startswith("value-of-accounts__")
        assert settings.mqtt is not None
        assert settings.mqtt.prefix == "margin-monitor/margin-monitor-0"
        assert settings.mqtt.client_id == "margin-monitor-0"
        assert settings.state_dir == Path(env["STATE_DIRECTORY"])
        assert settings.metrics.enabled
        assert settings.metrics.host == "0.0.0.0"

    @pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
    def test_probes_and_metrics_port(self, tree: Path) -> None:
        """Test that the probes and scrape annotations hit the port the daemon listens on."""
        docs = rendered(tree)
        c = container(docs)
        port = int(env_of(c)["MARGIN_MONITOR__METRICS__PORT"])
        assert c["ports"] == [{"name": "metrics", "containerPort": port}]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        live = c["livenessProbe"]
        # the systemd unit's WatchdogSec=30s: a wedged daemon goes within the same time
        assert live["periodSeconds"] * live["failureThreshold"] <= 30
        notes = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/port"] == str(port)
        service = one(docs, "Service")
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["ports"][0]["targetPort"] == "metrics"
        assert one(docs, "StatefulSet")["spec"]["serviceName"] == service["metadata"]["name"]

    @pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
    def test_selectors_match_the_pods(self, tree: Path) -> None:
        """Test that the StatefulSet, Service and PDB select the pods the template labels."""
        docs = rendered(tree)
        sts = one(docs, "StatefulSet")
        labels = sts["spec"]["template"]["metadata"]["labels"]
        for selector in (
            sts["spec"]["selector"]["matchLabels"],
            one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
            one(docs, "Service")["spec"]["selector"],
        ):
            assert selector.items() <= labels.items()
        assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1

    @pytest.mark.parametrize("tree", TREES, ids=lambda t: t.name)
    def test_non_root_read_only(self, tree: Path) -> None:
        """Test that the pod runs as the image's non-root uid on a read-only root filesystem."""
        docs = rendered(tree)
        pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
        image_user = re.search(
            r"^USER (\d+):(\d+)$",
            (ROOT / "deploy" / "Containerfile").read_text(),
            flags=re.MULTILINE,
        )
        assert image_user is not None
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert (sc["runAsUser"], sc["runAsGroup"]) == tuple(map(int, image_user.groups()))
        assert sc["fsGroup"] == sc["runAsGroup"]
        assert pod["automountServiceAccountToken"] is False
        csc = container(docs)["securityContext"]
        assert csc == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        writable = {
            m["mountPath"] for m in container(docs)["volumeMounts"] if not m.get("readOnly")
        }
        assert writable == {"/var/lib/margin-monitor", "/tmp"}

    def test_requests_cover_the_measured_figures(self) -> None:
        """Test that requests and limits hold what bench/RESULTS.md measured for a pod."""
        results = (ROOT / "bench" / "RESULTS.md").read_text()
        live = {
            int(n): float(mb)
            for n, mb in re.findall(r"(\d+) live accounts: RSS max +(\d+\.\d) MB", results)
        }
        cpu = max(float(x) for x in re.findall(r"CPU share: median (\d+\.\d)%", results))
        resources = container(rendered(BASE))["resources"]
        mib = 1.048576  # MB per MiB
        assert int(resources["requests"]["memory"].removesuffix("Mi")) * mib >= live[10]
        assert int(resources["limits"]["memory"].removesuffix("Mi")) * mib >= live[30]
        assert int(resources["requests"]["cpu"].removesuffix("m")) >= cpu * 10

    def test_pod_name_is_defined_before_the_prefix_uses_it(self) -> None:
        """Test that $(POD_NAME) is expandable: Kubernetes only expands earlier variables."""
        names = [e["name"] for e in container(rendered(BASE))["env"]]
        prefix = next(
            e
            for e in container(rendered(BASE))["env"]
            if e["name"] == "MARGIN_MONITOR__MQTT__PREFIX"
        )
        assert prefix["value"] == "margin-monitor/$(POD_NAME)"
        for user in ("MARGIN_MONITOR__MQTT__PREFIX", "MARGIN_MONITOR__MQTT__CLIENT_ID"):
            assert names.index("POD_NAME") < names.index(user)


class TestServiceMonitor:
    def test_selects_the_service_and_its_port(self) -> None:
        """Test that the ServiceMonitor picks the headless Service's named metrics port."""
        docs = rendered(OVERLAY)
        monitor = one(docs, "ServiceMonitor")
        service = one(docs, "Service")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
        assert ports == {"metrics"}
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        assert "ServiceMonitor" not in {k for k, _ in rendered(BASE)}  # CRD only on request


class TestProbeEndpoints:
    async def test_ready_while_blind_and_alive_until_wedged(self) -> None:
        """Test that /readyz stays 200 while /healthz is 503, and /livez reports a liveness."""
        metrics = MetricsSink(MetricsSettings(enabled=True, port=0), {"main": 30.0})
        async with asyncio.TaskGroup() as tg:
            await metrics.start(tg)
        try:
            assert metrics.address is not None
            base = "http://{}:{}".format(*metrics.address)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz") as resp:
                    assert resp.status == 503  # no data yet: blind
                async with http.get(f"{base}/readyz") as resp:
                    assert resp.status == 200
                    assert await resp.text() == "ready: 1 accounts configured\n"
                async with http.get(f"{base}/livez") as resp:
                    assert (resp.status, await resp.text()) == (200, "alive\n")
                metrics.liveness = lambda: 1 / 0  # type: ignore[assignment,return-value]
                async with http.get(f"{base}/livez") as resp:
                    assert resp.status == 503
                    assert (await resp.text()).startswith("wedged: liveness probe failed: ZeroDiv")
                metrics.liveness = lambda: "recompute[main] has had work waiting for over 1 s"
                async with http.get(f"{base}/livez") as resp:
                    assert resp.status == 503
                    assert await resp.text() == (
                        "wedged: recompute[main] has had work waiting for over 1 s\n"
                    )
        finally:
            await metrics.close()

    async def test_daemon_wedged_recompute_fails_livez(self, tmp_path: Path) -> None:
        """Test that without systemd the daemon's /livez turns 503 once a recompute hangs."""
        settings = load_settings(None, state_dir=tmp_path)
        metrics = MetricsSink(MetricsSettings(enabled=True, port=0), {"demo": 30.0})
        wedged = WedgedSink()
        daemon = asyncio.create_task(
            run_daemon(settings, settings.accounts, [metrics, wedged], handle_signals=False)
        )
        statuses: list[tuple[float, int]] = []
        try:
            async with aiohttp.ClientSession() as http:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10
                while loop.time() < deadline:
                    await asyncio.sleep(0.25)
                    if metrics.address is None:
                        continue
                    url = "http://{}:{}/livez".format(*metrics.address)
                    async with http.get(url) as resp:
                        statuses.append((loop.time(), resp.status))
                    if resp.status == 503:
                        break
        finally:
            daemon.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await daemon
        assert wedged.stuck_at is not None
        assert statuses[0][1] == 200  # alive while it recomputed
        assert statuses[-1][1] == 503


class TestMosquittoComponent:
    def test_pods_find_the_broker_and_it_finds_its_bridge(self) -> None:
        """Test that config.toml names the broker Service and mosquitto reads the mounted files."""
        docs = rendered(OVERLAY)
        service = one(docs, "Service", "mosquitto")
        volumes = {
            v["name"]: v for v in one(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]
        }
        toml = tomllib.loads(
            config_map(docs, volumes["config"]["configMap"]["name"])["data"]["config.toml"]
        )
        assert toml["mqtt"]["host"] == service["metadata"]["name"]
        assert toml["mqtt"].get("port", 1883) == service["spec"]["ports"][0]["port"]
        pod = one(docs, "Deployment", "mosquitto")["spec"]["template"]["spec"]
        (broker,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in broker["volumeMounts"]}
        assert broker["args"][-1] == f"{mounts['config']}/mosquitto.conf"
        names = {v["name"]: v for v in pod["volumes"]}
        conf = config_map(docs, names["config"]["configMap"]["name"])["data"]["mosquitto.conf"]
        assert f"include_dir {mounts['bridge']}" in conf.splitlines()
        assert f"persistence_location {mounts['data']}/" in conf.splitlines()
        assert names["bridge"]["secret"] == {"secretName": "mosquitto-bridge", "optional": True}


class TestDocs:
    DOC = ROOT / "docs" / "kubernetes.md"

    def test_named_files_exist(self) -> None:
        """Test that every deploy/kubernetes path the page names exists (but the user's copy)."""
        text = self.DOC.read_text()
        paths = set(re.findall(r"deploy/kubernetes/[\w./-]+\w", text))
        assert "deploy/kubernetes/overlays/example" in paths
        for path in paths:
            if "/overlays/mine" not in path:
                assert (ROOT / path).exists(), path

    def test_quoted_errors_are_the_real_ones(self) -> None:
        """Test that the --shard auto errors the page quotes are what the daemon prints."""
        text = self.DOC.read_text()
        for env, host in [({SHARDS_ENV: "5", INDEX_ENV: "5"}, "x"), ({SHARDS_ENV: "5"}, "laptop")]:
            with pytest.raises(UserError) as caught:
                auto_shard(env, host)
            assert f"margin-monitor: {caught.value}\n" in text

    def test_plan_output_is_the_real_one(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Test that the shard-plan output on the page is the command's own for the overlay."""
        config = OVERLAY / "config.toml"
        assert main(["shard-plan", "--config", str(config), "--from", "3", "--to", "5"]) == 0
        assert capsys.readouterr().out in self.DOC.read_text()


class TestShardGauge:
    async def test_exported_only_under_a_shard(self) -> None:
        """Test that margin_monitor_shards{shard=K} = N appears only when the process is sharded."""
        metrics = MetricsSink(MetricsSettings(), {"main": 30.0})
        async with asyncio.TaskGroup() as tg:
            await metrics.start(tg)
        try:
            assert b"margin_monitor_shards" not in metrics.exposition()
            metrics.shard = (2, 3)
            assert b'margin_monitor_shards{shard="2"} 3.0' in metrics.exposition()
        finally:
            await metrics.close()


READ_ONLY_POD = r"""
set -e
mount --make-rprivate /
for m in $(findmnt -rn -o TARGET | sort -r); do
    mount -o remount,bind,ro "$m" 2>/dev/null || true
done
mount --bind "$STATE" /mnt && mount -o remount,bind,rw /mnt
# /tmp stays writable, as the pod's emptyDir: a bind of itself, not a tmpfs over it, which
# would hide a checkout (and its venv) that lives under /tmp, as CI's may
mount --bind /tmp /tmp && mount -o remount,bind,rw /tmp
probe=$(mktemp /tmp/mm-rw-XXXXXX) && rm -f "$probe"
if touch /srv/.write-test 2>/dev/null; then echo "root filesystem is writable" >&2; exit 97; fi
exec env STATE_DIRECTORY=/mnt "$EXE" run --no-tui --config "$CONFIG" --duration 6
"""


class TestReadOnlyRoot:
    @pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
    def test_daemon_writes_only_its_state_volume_and_tmp(self, tmp_path: Path) -> None:
        """Test that the daemon runs on a read-only root with only the state dir and /tmp rw."""
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
        if probe.returncode != 0:
            pytest.skip("no mount namespaces here (unshare -m needs CAP_SYS_ADMIN)")
        state = tmp_path / "state"
        state.mkdir()
        config = tmp_path / "config.toml"
        # the sim sell-off at 25x: alerts and simulated protective orders, so the alert
        # store, the outbox, the audit and the executor's lock and records are all written
        config.write_text(
            'shock_interval = 0.2\n[[accounts]]\nname = "demo"\n'
            'exchange = "sim"\n[accounts.sim]\nspeed = 25\n'
        )
        exe = Path(sys.executable).with_name("margin-monitor")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARGIN_MONITOR")}
        env |= {"STATE": str(state), "CONFIG": str(config), "EXE": str(exe)}
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c", READ_ONLY_POD],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        logs = result.stdout + result.stderr
        assert result.returncode == 0, logs[-3000:]
        assert "Read-only file system" not in logs
        assert "store.degraded" not in logs
        events = [
            json.loads(x).get("event") for x in result.stdout.splitlines() if x.startswith("{")
        ]
        assert "daemon stopped" in events
        assert (state / "alerts.sqlite3").exists()
        assert any((state / "actions").iterdir())
