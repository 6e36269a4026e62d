"""The RFTJob CRD: generated from the config models, structural, small, and it accepts the examples."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from rft_operator import crdgen

ROOT = Path(__file__).resolve().parents[2]


def schema_of(crd):
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def as_jsonschema(node):
    """OpenAPI v3.0 (nullable flags, x- extensions) -> something jsonschema can check."""
    if isinstance(node, list):
        return [as_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: as_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    out.pop("nullable", None)
    return out


def validate(obj):
    jsonschema.validate(obj, as_jsonschema(schema_of(crdgen.crd())))


def test_the_crd_file_matches_the_config_models():
    assert (ROOT / "crds" / "rftjob.yaml").read_text() == crdgen.render(), \
        "crds/rftjob.yaml drifted from the config models: run python -m rft_operator.crdgen"
    assert crdgen.main(["--check"]) == 0


def test_the_crd_fits_kubectl_apply_and_the_api_server():
    """`kubectl apply` (client-side) stores the object as compact JSON in an annotation of at most 256 KiB;
    the API server takes objects up to about 1.5 MiB (etcd's request limit), annotation included."""
    import json

    for make in (crdgen.crd, crdgen.runtime_crd):
        compact = len(json.dumps(make(), separators=(",", ":")).encode())
        assert compact < 192 * 1024, compact
        assert 2 * compact < 1024 * 1024


def strict(node):
    """The schema as the API server applies it under strict field validation (kubectl's default): an object
    with properties and without x-kubernetes-preserve-unknown-fields takes no other key."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.mark.parametrize("where", [
    ("spec", "config", "buffer", "bach_size"),
    ("spec", "config", "algorithm", "optimizer", "learning_rate"),
    ("spec", "config", "explorer", "rollout_model", "gpu_memory_utilisation"),
    ("spec", "config", "trainer", "trainer_config_typo"),
    ("spec", "config", "synchronizer", "sync_methd"),
])
def test_an_unknown_key_anywhere_in_the_config_is_rejected_by_the_schema(where):
    body = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "rftjobs" / "tinker.yaml").read_text()))
    node = body
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = 1
    schema = as_jsonschema(strict(schema_of(crdgen.crd())))
    with pytest.raises(jsonschema.ValidationError) as info:
        jsonschema.validate(body, schema)
    assert where[-1] in str(info.value.message)


class GoYamlLoader(yaml.SafeLoader):
    """YAML as kubectl reads it: `1e-5` is a number (PyYAML's YAML 1.1 resolver wants a dot in a float)."""


GoYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))
TRINITY_EXAMPLES = ROOT.parent / "shared" / "trinity-examples"
TRINITY_FILES = sorted(TRINITY_EXAMPLES.rglob("*.yaml")) if TRINITY_EXAMPLES.is_dir() else []


@pytest.mark.parametrize("path", TRINITY_FILES, ids=[p.name for p in TRINITY_FILES])
def test_trinity_s_own_example_configs_pass_the_schema_as_spec_config(path):
    """Real Trinity configs, unchanged: only an ${oc.env:...} interpolation where the schema wants a number
    is refused (a typed field takes a typed value; such configs go in through spec.configFrom)."""
    config = yaml.load(path.read_text(), Loader=GoYamlLoader)
    body = {"apiVersion": "rft.dev/v1alpha1", "kind": "RFTJob", "metadata": {"name": "x"}, "spec": {"config": config}}
    validator = jsonschema.Draft4Validator(as_jsonschema(strict(schema_of(crdgen.crd()))))
    errors = [e for e in validator.iter_errors(body)
              if not (isinstance(e.instance, str) and e.instance.startswith("${oc.env:") and e.validator == "type")]
    assert not errors, [(".".join(map(str, e.absolute_path)), e.message) for e in errors]


def test_trinity_keys_the_operator_does_not_use_are_still_known_to_the_schema():
    """veRL and vLLM knobs of Trinity's configs pass the API server (the operator's models check them)."""
    body = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "rftjobs" / "verl.yaml").read_text()))
    jsonschema.validate(body, as_jsonschema(strict(schema_of(crdgen.crd()))))


def _walk(node, path="$"):
    yield path, node
    for key in ("properties",):
        for name, child in (node.get(key) or {}).items():
            yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_the_schema_is_structural():
    """The rules the API server enforces on CRD schemas (apiextensions structural schema)."""
    for path, node in _walk(schema_of(crdgen.crd())):
        assert "$ref" not in node and "default" not in node and "title" not in node, path
        if not (node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")):
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path
            assert all(set(o) == {"type"} for o in node["anyOf"]), path
        if node.get("type") == "array":
            assert isinstance(node.get("items"), dict), path
        if node.get("nullable") and "enum" in node:
            assert None in node["enum"], path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


def test_crd_shape_for_users():
    crd = crdgen.crd()
    spec = crd["spec"]
    version = spec["versions"][0]
    assert crd["metadata"]["name"] == "rftjobs.rft.dev" and spec["scope"] == "Namespaced"
    assert "rftj" in spec["names"]["shortNames"] and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Step"] == ".status.steps"
    assert columns["Started"] == ".status.startTime"
    assert columns["Reward"] == ".status.progress.rewardMean" and "Backend" in columns and "Algorithm" in columns
    assert "Age" in columns


@pytest.mark.parametrize("example", ["tinker.yaml", "verl.yaml"])
def test_examples_are_accepted_and_wrap_the_seeds(example):
    body = yaml.safe_load((ROOT / "examples" / "rftjobs" / example).read_text())
    validate(body)
    seed = yaml.safe_load((ROOT / "examples" / ("tinker.yaml" if "tinker" in example else "verl-lora.yaml")).read_text())
    assert body["spec"]["config"] == seed


@pytest.mark.parametrize("where, value", [
    (("spec", "config", "buffer", "batch_size"), "lots"),
    (("spec", "config", "buffer", "batch_size"), 0),
    (("spec", "config", "algorithm", "optimizer", "lr"), 0),
    (("spec", "config", "mode"), "sideways"),
    (("spec", "config", "model", "tinker", "enable"), "maybe"),
    (("spec", "backoffLimit"), -1),
    (("spec", "imagePullPolicy"), "Sometimes"),
    (("spec", "storage", "size"), "lots"),
])
def test_malformed_rftjobs_are_rejected_by_the_schema(where, value):
    body = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "rftjobs" / "tinker.yaml").read_text()))
    node = body
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(body)


def test_the_status_schema_holds_every_key_the_operator_writes():
    from rftjob_bodies import rftjob
    from test_reconcile import T0, started

    world = started(rftjob("s", ttlSecondsAfterFinished=0))
    world.step(T0 + 2, progress={"step": 1, "totalSteps": 2, "rewardMean": 0.1, "loss": 0.2,
                                 "lastUpdateTime": "2027-01-15T08:00:01Z"})
    world.set_phase("s-head", "Succeeded", 0)
    world.step(T0 + 3)
    world.step(T0 + 4)
    assert world.job["status"]["steps"] == "1/2"
    status_schema = schema_of(crdgen.crd())["properties"]["status"]
    for key, value in world.job["status"].items():
        assert key in status_schema["properties"], key
        if isinstance(value, dict):
            for sub in value:
                assert sub in status_schema["properties"][key]["properties"], f"{key}.{sub}"
    jsonschema.validate(world.job["status"], as_jsonschema(status_schema))


@pytest.mark.parametrize("k8s", ["1.25", "1.30", "1.35"])
def test_the_crd_object_is_a_valid_customresourcedefinition(k8s):
    import kubernetes_validate

    kubernetes_validate.validate(yaml.safe_load((ROOT / "crds" / "rftjob.yaml").read_text()), k8s, strict=True)


def test_no_bare_yaml11_booleans_in_the_crd_file():
    """kubectl and the API server parse YAML 1.1: a bare `n:` key would become `false:`."""
    import re

    text = (ROOT / "crds" / "rftjob.yaml").read_text()
    assert not re.search(r"^\s*-?\s*(y|Y|n|N|yes|no|on|off)\s*:", text, re.MULTILINE)
    assert not re.search(r":\s+(y|Y|n|N)\s*$", text, re.MULTILINE)


def test_the_operator_owned_names_in_the_cel_rules_come_from_the_builders_only():
    """One source: what the CEL rules refuse is what the builders own; crdgen spells none of it itself."""
    import json

    from rft_operator import builders

    source = (Path(crdgen.__file__)).read_text()
    owned = [*builders.OWNED_VOLUMES, *builders.OWNED_MOUNT_PATHS, *builders.OWNED_ENV]
    # "config" is also a key of the spec itself: the distinctive names are enough to tell a copy
    distinctive = [name for name in owned if name != "config"]
    assert not [name for name in distinctive if f'"{name}"' in source or f"'{name}'" in source]
    rules = json.dumps(crdgen.pod_template_schema("x"))
    assert all(f"'{name}'" in rules for name in owned)
