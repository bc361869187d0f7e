"""The part of kustomize that deploy/kubernetes uses, in Python, so tests render it offline.

No kustomize or kubectl has to be installed (Debian's kubernetes-client is 1.20, too old,
and the tests never download a binary). Supported: `resources` (files and directories),
`components`, `configMapGenerator` (files, literals; behavior create / replace / merge)
with kustomize's content-hash suffix and the references to it in pod templates,
`namespace`, `images`, `replicas`, and `patches` given as a strategic-merge `path` whose
lists merge by `name` (containers, env, volumes). Anything else in a kustomization raises
`Unsupported`, so a manifest that outgrows this subset fails the tests instead of being
rendered wrong. Where a real kustomize is on the PATH (`kubectl kustomize`), a test
compares the two outputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

_KEYS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "namespace",
    "images",
    "replicas",
    "patches",
}
_CLUSTER_SCOPED = {
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
}
#: strategic-merge lists whose items merge by `name` (k8s.io/api patchMergeKey)
_BY_NAME = {"containers", "initContainers", "env", "volumes"}


class Unsupported(Exception):
    """The kustomization uses something outside this renderer's subset."""


def build(directory: Path) -> list[Doc]:
    """`kustomize build directory`: the rendered documents."""
    docs: list[Doc] = []
    generated: set[str] = set()
    _apply(directory, docs, generated)
    renamed = {}
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap" and name in generated:
            doc["metadata"]["name"] = renamed[name] = f"{name}-{config_map_hash(doc)}"
    for pod in pod_specs(docs):
        for ref in _config_map_refs(pod):
            ref["name"] = renamed.get(ref["name"], ref["name"])
    return docs


def config_map_hash(doc: Doc) -> str:
    """kustomize's suffix (api/hasher): sha256 of Go's JSON of kind, name, data, 10 chars.

    The name enters as "" in the kustomize releases seen here (its `Lookup("metadata/name")`
    finds no such single key), so only the data decides; checked against kustomize v5.5.
    """
    encoded = json.dumps(
        {"data": doc.get("data", {}), "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):  # Go's HTML-safe
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def pod_specs(docs: list[Doc]) -> Iterator[Doc]:
    """The pod spec of every workload (StatefulSet, Deployment, ...)."""
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if isinstance(spec, dict):
            yield spec


def _config_map_refs(pod: Doc) -> Iterator[Doc]:
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            yield volume["configMap"]
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                yield source["configMapRef"]
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("configMapKeyRef")
            if ref is not None:
                yield ref


def _kustomization(directory: Path) -> Doc:
    data: Doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    extra = set(data) - _KEYS
    if extra:
        raise Unsupported(f"{directory}: {sorted(extra)} is outside tests/kustomize.py's subset")
    return data


def _apply(directory: Path, docs: list[Doc], generated: set[str]) -> None:
    k = _kustomization(directory)
    for entry in k.get("resources", []):
        path = directory / entry
        if path.is_dir():
            _apply(path, docs, generated)
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for component in k.get("components", []):
        _apply(directory / component, docs, generated)
    for gen in k.get("configMapGenerator", []):
        _generate(directory, gen, docs, generated)
    namespace = k.get("namespace")
    if namespace is not None:
        for doc in docs:
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    for patch in k.get("patches", []):
        if set(patch) != {"path"}:
            raise Unsupported(f"{directory}: only `patches: - path:` is supported")
        body: Doc = yaml.safe_load((directory / patch["path"]).read_text())
        target = _find(docs, body["kind"], body["metadata"]["name"])
        strategic_merge(target, body)
    for image in k.get("images", []):
        for pod in pod_specs(docs):
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    new = image.get("newName", name)
                    new_tag = image.get("newTag", tag)
                    container["image"] = f"{new}:{new_tag}" if new_tag else new
    for replica in k.get("replicas", []):
        for doc in docs:
            if doc["metadata"]["name"] == replica["name"] and "replicas" in doc.get("spec", {}):
                doc["spec"]["replicas"] = replica["count"]


def _generate(directory: Path, gen: Doc, docs: list[Doc], generated: set[str]) -> None:
    if set(gen) - {"name", "files", "literals", "behavior"}:
        raise Unsupported(f"{directory}: configMapGenerator {gen['name']}: unsupported keys")
    data: dict[str, str] = {}
    for entry in gen.get("files", []):
        key, sep, path = entry.partition("=")
        if not sep:
            key, path = Path(entry).name, entry
        data[key] = (directory / path).read_text()
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    name, behavior = gen["name"], gen.get("behavior", "create")
    if behavior == "create":
        if name in generated:
            raise Unsupported(f"{directory}: ConfigMap {name} is generated twice")
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
        )
        generated.add(name)
        return
    if name not in generated:
        raise Unsupported(f"{directory}: behavior {behavior} on {name}, which no base generates")
    existing = _find(docs, "ConfigMap", name)
    if behavior == "replace":
        existing["data"] = data
    elif behavior == "merge":
        existing["data"].update(data)
    else:
        raise Unsupported(f"{directory}: configMapGenerator behavior {behavior!r}")


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise Unsupported(f"no {kind} {name} to patch")


def strategic_merge(base: Doc, patch: Doc) -> None:
    """Merge `patch` into `base`: maps recursively, null deletes, named lists by name."""
    for key, value in patch.items():
        current = base.get(key)
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(current, dict):
            strategic_merge(current, value)
        elif isinstance(value, list) and isinstance(current, list):
            if key not in _BY_NAME:
                raise Unsupported(f"strategic merge of list {key!r} is outside the subset")
            for item in value:
                match = next((c for c in current if c.get("name") == item["name"]), None)
                if match is None:
                    current.append(item)
                else:
                    strategic_merge(match, item)
        else:
            base[key] = value
