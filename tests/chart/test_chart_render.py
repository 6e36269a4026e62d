"""The rft-operator chart, rendered by a real helm: lint, Kubernetes schemas, RBAC from the code, security, CRD."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest
import yaml
from chartkit import CHART, NAMESPACE, REPO, HelmError, by_kind, one

# The value sets CI renders: every switch that changes which objects exist or what they grant.
VALUE_SETS = {
    "defaults": None,
    "namespaced": {"rbac": {"scope": "namespaced"}},
    "namespaced-two": {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]},
    "monitoring-on": {"monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                                     "prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}},
    "crds-off": {"crds": {"install": False}},
    "no-metrics-no-rbac": {"metrics": {"enabled": False}, "rbac": {"create": False},
                           "serviceAccount": {"create": False, "name": "platform-operator"}},
    "network-policy": {"networkPolicy": {"enabled": True}, "rbac": {"userRoles": {"create": False}}},
    "pinned-digest": {"image": {"digest": "sha256:" + "ab" * 32}, "jobDefaults": {"image": "example.com/rft:dev"}},
}
# The chart's kubeVersion is >=1.25: check against the oldest and the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ("1.25", kubernetes_validate.latest_version())
# prometheus-operator kinds have no schema offline; test_monitoring_selectors checks what they point at.
PROMETHEUS_OPERATOR = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CHART_LABELS = {"helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                "app.kubernetes.io/component", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"}


def _monitoring_landed() -> bool:
    return any((REPO / "monitoring").glob("*.json")) and any((REPO / "monitoring").glob("*.y*ml"))


def _value_set(name: str):
    if name == "monitoring-on" and not _monitoring_landed():
        pytest.skip("monitoring/ has no dashboard and alert rules yet (the metrics issue ships them)")
    return VALUE_SETS[name]


def test_lint_strict(helm, values_file):
    for name, values in VALUE_SETS.items():
        if name == "monitoring-on" and not _monitoring_landed():
            continue
        extra = values_file(values) if values else []
        out = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *extra)
        assert "0 chart(s) failed" in out, (name, out)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_objects_are_valid_kubernetes(render, name):
    objects = render(_value_set(name))
    assert objects
    checked = 0
    for obj in objects:
        if obj["kind"] in PROMETHEUS_OPERATOR:
            continue
        for version in KUBE_VERSIONS:
            # strict: an unknown or misspelt field is an error, not silently dropped
            kubernetes_validate.validate(obj, version, strict=True)
        assert CHART_LABELS <= set(obj["metadata"].get("labels", {})), obj["metadata"]["name"]
        checked += 1
    assert checked >= 2  # at least the Deployment and the CRD (or the ServiceAccount)


def test_validator_rejects_a_broken_object(render):
    """The schema check above has teeth: a typo in the Deployment is caught."""
    deployment = copy.deepcopy(one(render(), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["prot"] = 8081
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_deployment_shape(render):
    objects = render()
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    # two replicas, one acting at a time (leader election): a rolling update never has zero operators
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    lease_env = {e["name"]: e for e in container["env"]}
    assert lease_env["RFT_OPERATOR_LEADER_ELECT"]["value"] == "true"
    assert lease_env["RFT_OPERATOR_LEASE_NAMESPACE"]["value"] == NAMESPACE
    assert lease_env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    timings = [float(lease_env[f"RFT_OPERATOR_{k}"]["value"]) for k in ("RETRY_SECONDS",
                                                                         "RENEW_DEADLINE_SECONDS", "LEASE_SECONDS")]
    assert timings == sorted(timings) and len(set(timings)) == 3  # retry < renew deadline < lease
    assert pod["affinity"]["podAntiAffinity"]
    assert container["command"] == ["rft-operator"]
    assert "--all-namespaces" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    health_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "health")
    assert f"--liveness=http://0.0.0.0:{health_port}/healthz" in container["args"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    # the metrics Service reaches the container's metrics port, and the operator listens beyond loopback
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RFT_OPERATOR_METRICS_HOST"] == "0.0.0.0"
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
    assert env["RFT_OPERATOR_METRICS_PORT"] == str(metrics_port)


def test_operator_flags_exist(render):
    """Every flag the chart passes is one `rft-operator` accepts (parsed by the operator's own parser)."""
    from rft_operator.main import build_parser

    for values in (None, VALUE_SETS["namespaced-two"], {"operator": {"verbose": True}}):
        container = one(render(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        args = build_parser().parse_args(container["args"])
        if values and "rbac" in values:
            assert args.namespace == ["team-a", "team-b"] and not args.all_namespaces
        else:
            assert args.all_namespaces and not args.namespace


def test_operator_env_is_read_by_the_operator(render, monkeypatch):
    """The RFT_OPERATOR_* variables the chart sets are the ones the operator's settings read."""
    from rft_operator.settings import Settings

    container = one(render({"operator": {"stallAfterSeconds": 600, "resyncSeconds": 15}}), "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]
    ours = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("RFT_OPERATOR_")}
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.stall_after_seconds == 600 and settings.resync_seconds == 15
    assert settings.metrics_host == "0.0.0.0"
    # veRL jobs default to the GPU image of the same version (jobDefaults.verlImage overrides it)
    assert settings.default_verl_image == settings.default_image + "-verl"
    assert settings.leader_elect and settings.lease_namespace == NAMESPACE
    assert settings.retry_seconds < settings.renew_deadline_seconds < settings.lease_seconds
    read = {f"RFT_OPERATOR_{n}" for n in ("METRICS_HOST", "METRICS_PORT", "RESYNC_SECONDS", "DEFAULT_IMAGE",
                                         "DEFAULT_VERL_IMAGE", "PROGRESS_INTERVAL_SECONDS", "STALL_AFTER_SECONDS",
                                         "SCRAPE_TIMEOUT_SECONDS", "LEADER_ELECT", "LEASE_NAME",
                                         "LEASE_NAMESPACE", "LEASE_SECONDS", "RENEW_DEADLINE_SECONDS",
                                         "RETRY_SECONDS")}
    assert set(ours) <= read


@pytest.mark.parametrize("name", ["defaults", "namespaced", "pinned-digest"])
def test_restricted_pod_security(render, name):
    pod = one(render(VALUE_SETS[name]), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert not sc.get("privileged")
        # a read-only root filesystem still needs somewhere to write temp files
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_values_schema_rejects_bad_values(helm, values_file):
    bad = [
        ({"rbac": {"scope": "everywhere"}}, "scope"),
        ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"metrics": {"port": 70000}}, "port"),
        ({"replicaCount": 0}, "replicaCount"),
        ({"leaderElection": {"leaseSeconds": 1}}, "leaseSeconds"),
        ({"securityContext": {"allowPrivilegeEscalation": True, "runAsNonRoot": True,
                              "capabilities": {"drop": ["ALL"]}}}, "allowPrivilegeEscalation"),
        ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"monitoring": {"podMonitor": {"enabled": "yes"}}}, "enabled"),
    ]
    for values, key in bad:
        with pytest.raises(HelmError) as err:
            helm("template", "rft", str(CHART), *values_file(values))
        assert "schema" in str(err.value).lower() and key in str(err.value), (values, str(err.value))


def test_service_monitor_needs_metrics(helm, values_file):
    values = {"metrics": {"enabled": False}, "monitoring": {"serviceMonitor": {"enabled": True}}}
    with pytest.raises(HelmError, match="needs metrics.enabled"):
        helm("template", "rft", str(CHART), *values_file(values))


def test_rbac_equals_the_operators_api_calls(render):
    """Cluster mode: one ClusterRole with exactly rft_operator.rbac.required_rules(), bound to the operator."""
    from rft_operator.rbac import required_rules

    objects = render()
    (role,) = [r for r in by_kind(objects, "ClusterRole") if not _user_role(r)]
    assert _normalise(role["rules"]) == _normalise(required_rules()), _fix_hint(required_rules())
    (binding,) = [b for b in by_kind(objects, "ClusterRoleBinding") if not _user_role(b)]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = one(objects, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]
    # the only namespaced grant: the Lease of leader election, in the release namespace
    assert [r["metadata"]["namespace"] for r in by_kind(objects, "Role")] == [NAMESPACE]
    assert all(r["metadata"]["name"].endswith("-leader-election") for r in by_kind(objects, "Role"))


def job_roles(objects, kind="Role"):
    return [r for r in by_kind(objects, kind) if not r["metadata"]["name"].endswith("-leader-election")]


def test_leader_election_role_is_the_code_s_lease_rules_on_the_release_s_lease(render):
    from rft_operator.rbac import leader_election_rules

    objects = render()
    lease = {e["name"]: e.get("value") for e in one(objects, "Deployment")["spec"]["template"]["spec"]
             ["containers"][0]["env"]}["RFT_OPERATOR_LEASE_NAME"]
    (role,) = [r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert _normalise(role["rules"]) == _normalise(leader_election_rules(lease))
    (binding,) = [b for b in by_kind(objects, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"] == NAMESPACE
    single = render({"replicaCount": 1, "leaderElection": {"enabled": False}})
    assert not by_kind(single, "Role")
    deployment = one(single, "Deployment")["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"] == {"type": "Recreate"}
    with pytest.raises(HelmError, match="leaderElection"):
        render({"replicaCount": 2, "leaderElection": {"enabled": False}})


def test_rbac_leader_rules_file_is_generated_from_the_code():
    from sync_chart import leader_rules_text

    assert (CHART / "files" / "rbac-leader-rules.yaml").read_text() == leader_rules_text(), \
        "run `python tests/chart/sync_chart.py`"


@pytest.mark.parametrize("name,namespaces", [("namespaced", [NAMESPACE]),
                                             ("namespaced-two", ["team-a", "team-b"])])
def test_rbac_namespaced_mode_grants_cluster_wide_only_the_reading_of_runtimes(render, name, namespaces):
    from rft_operator.rbac import cluster_scoped_rules, namespaced_rules

    objects = render(VALUE_SETS[name])
    # cluster-wide: the users' roles, and the operator's ClusterRole that may only read ClusterRFTRuntimes
    (operator_role,) = [r for r in by_kind(objects, "ClusterRole") if not _user_role(r)]
    assert set(_normalise(operator_role["rules"])) == set(_normalise(cluster_scoped_rules())) == {
        ("rft.dev", "clusterrftruntimes", "list"), ("rft.dev", "clusterrftruntimes", "watch")}
    (binding,) = [b for b in by_kind(objects, "ClusterRoleBinding") if not _user_role(b)]
    assert binding["roleRef"]["name"] == operator_role["metadata"]["name"]
    assert binding["subjects"][0]["kind"] == "ServiceAccount"
    roles = job_roles(objects)
    assert sorted(r["metadata"]["namespace"] for r in roles) == namespaces
    for role in roles:
        assert _normalise(role["rules"]) == _normalise(namespaced_rules()), _fix_hint(namespaced_rules())
    bindings = job_roles(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == namespaces
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == NAMESPACE
        assert binding["roleRef"]["kind"] == "Role"
    # the operator is told to watch exactly the namespaces it has permissions in
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")] == namespaces


def _aggregated(role: dict) -> bool:
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"].get("labels", {}))


USER_ROLES = {"rft-rftjob-edit", "rft-rftjob-view", "rft-runtime-view", "rft-runtime-admin"}


def _user_role(obj: dict) -> bool:
    """A ClusterRole (or the binding of one) for people, not for the operator."""
    return obj["metadata"]["name"] in USER_ROLES


def test_users_may_read_runtimes_and_only_the_runtime_admin_role_writes_them(render):
    objects = render()
    roles = {r["metadata"]["name"]: r for r in by_kind(objects, "ClusterRole") if _user_role(r)}
    view, admin = roles["rft-runtime-view"], roles["rft-runtime-admin"]
    assert set(_normalise(view["rules"])) == {("rft.dev", "clusterrftruntimes", v) for v in ("get", "list", "watch")}
    assert ("rft.dev", "clusterrftruntimes", "create") in _normalise(admin["rules"])
    # no namespace role may write a cluster-scoped runtime: only the unbound admin role writes
    writers = [r["metadata"]["name"] for r in by_kind(objects, "ClusterRole")
               if any(res == "clusterrftruntimes" and verb in ("create", "update", "patch", "delete")
                      for _, res, verb in _normalise(r["rules"]))]
    assert writers == ["rft-runtime-admin"]
    bindings = {b["roleRef"]["name"]: b for b in by_kind(objects, "ClusterRoleBinding") if _user_role(b)}
    assert set(bindings) == {"rft-runtime-view"}
    assert bindings["rft-runtime-view"]["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]
    private = render({"rbac": {"userRoles": {"create": True, "runtimesReadableByAll": False}}})
    assert not [b for b in by_kind(private, "ClusterRoleBinding") if _user_role(b)]


def test_users_with_the_builtin_roles_get_rftjobs_through_aggregation(render):
    roles = {r["metadata"]["name"]: r for r in by_kind(render(), "ClusterRole") if _aggregated(r)}
    assert set(roles) == {"rft-rftjob-edit", "rft-rftjob-view", "rft-runtime-view"}
    edit, view = roles["rft-rftjob-edit"], roles["rft-rftjob-view"]
    assert {k: v for k, v in edit["metadata"]["labels"].items() if "aggregate" in k} == {
        "rbac.authorization.k8s.io/aggregate-to-admin": "true", "rbac.authorization.k8s.io/aggregate-to-edit": "true"}
    assert {k: v for k, v in view["metadata"]["labels"].items() if "aggregate" in k} == {
        "rbac.authorization.k8s.io/aggregate-to-view": "true"}
    assert ("rft.dev", "rftjobs", "create") in _normalise(edit["rules"])
    assert ("rft.dev", "rftjobs", "delete") in _normalise(edit["rules"])
    # users never write status: that is the operator's
    assert not [r for r in _normalise(edit["rules"]) if r[1] == "rftjobs/status" and r[2] != "get"]
    assert {v for _, _, v in _normalise(view["rules"])} == {"get", "list", "watch"}
    # no binding: the built-in roles carry them to whoever holds admin, edit or view in a namespace
    assert not [b for b in by_kind(render(), "ClusterRoleBinding")
                if b["roleRef"]["name"] in roles and b["roleRef"]["name"] != "rft-runtime-view"]
    assert not [r for r in by_kind(render({"rbac": {"userRoles": {"create": False}}}), "ClusterRole") if _aggregated(r)]


def test_network_policy_lets_the_operator_reach_the_metrics_port_of_job_pods(render):
    from rft_operator.builders import job_labels

    assert not by_kind(render(), "NetworkPolicy")
    values = {"networkPolicy": {"enabled": True, "namespaces": ["team-a", "team-b"],
                                "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}}
    objects = render(values)
    policies = by_kind(objects, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    operator_pod = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pod_labels = job_labels("any-job")
    for policy in policies:
        spec = policy["spec"]
        # it selects exactly the pods the operator builds
        assert all(pod_labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())
        metrics, peers = spec["ingress"]
        assert metrics["ports"] == [{"protocol": "TCP", "port": "metrics"}]
        operator_peer = metrics["from"][0]
        assert operator_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
        assert all(operator_pod.get(k) == v for k, v in operator_peer["podSelector"]["matchLabels"].items())
        assert metrics["from"][1] == values["networkPolicy"]["metricsFrom"][0]
        # pods of jobs reach each other on every port (Ray picks its worker ports at random)
        assert "ports" not in peers and peers["from"] == [{"podSelector": spec["podSelector"]}]
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(policy, version, strict=True)


def test_rbac_rules_file_is_generated_from_the_code():
    from sync_chart import cluster_rules_text, rules_text

    assert (CHART / "files" / "rbac-rules.yaml").read_text() == rules_text(), "run `python tests/chart/sync_chart.py`"
    assert (CHART / "files" / "rbac-cluster-rules.yaml").read_text() == cluster_rules_text(), \
        "run `python tests/chart/sync_chart.py`"


def test_rbac_has_no_wildcards_or_escalation(render):
    for name in ("defaults", "namespaced"):
        for obj in render(VALUE_SETS[name]):
            for rule in obj.get("rules") or []:
                flat = rule["apiGroups"] + rule["resources"] + rule["verbs"]
                assert "*" not in flat, rule
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
                assert not {"secrets", "roles", "clusterroles", "rolebindings"} & set(rule["resources"]), rule


CRD_FILES = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))


def crd_named(objects: list[dict], name: str) -> dict:
    (crd,) = [o for o in by_kind(objects, "CustomResourceDefinition") if o["metadata"]["name"] == name]
    return crd


def test_the_chart_carries_every_crd_of_the_repository():
    assert CRD_FILES == ["clusterrftruntime.yaml", "rftjob.yaml"]
    assert sorted(p.name for p in (CHART / "files" / "crds").glob("*.yaml")) == CRD_FILES, \
        "run `python tests/chart/sync_chart.py`"


@pytest.mark.parametrize("file", CRD_FILES)
def test_crd_in_templates_is_the_repositorys_crd(render, file):
    """The chart's copy is byte-identical to crds/, and what helm renders is that CRD (plus the chart's labels)."""
    source = REPO / "crds" / file
    copy_in_chart = CHART / "files" / "crds" / file
    assert copy_in_chart.read_bytes() == source.read_bytes(), (
        f"the chart's CRD differs from crds/{file}: run `python tests/chart/sync_chart.py`")
    expected = yaml.safe_load(source.read_text())
    rendered = crd_named(render(), expected["metadata"]["name"])
    labels = rendered["metadata"].pop("labels")
    annotations = rendered["metadata"].pop("annotations")
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert "Delete=false" in annotations["argocd.argoproj.io/sync-options"]
    assert CHART_LABELS <= set(labels)
    expected_meta = copy.deepcopy(expected["metadata"])
    assert expected_meta.pop("labels", {}).items() <= labels.items()
    expected_meta.pop("annotations", None)
    assert rendered["metadata"] == expected_meta
    assert rendered["spec"]["names"] == expected["spec"]["names"]
    assert [v["name"] for v in rendered["spec"]["versions"]] == [v["name"] for v in expected["spec"]["versions"]]


@pytest.mark.parametrize("file", CRD_FILES)
def test_crd_reads_the_same_in_kubernetes(render, file):
    """helm and kubectl parse YAML 1.1 with Go's sigs.k8s.io/yaml, where an unquoted `n` or `y` is a boolean.

    The chart's CRD goes through that parser (fromYaml); it must come out as the schema Python reads from
    crds/, or the cluster gets a different schema (e.g. a property named "false" instead of "n").
    """
    expected = yaml.safe_load((REPO / "crds" / file).read_text())
    rendered = crd_named(render(), expected["metadata"]["name"])
    assert rendered["spec"] == expected["spec"], (
        "crds/rftjob.yaml reads differently in Kubernetes' YAML parser; quote keys and values such as "
        "n, y, N, Y in the generator: " + _first_difference(rendered["spec"], expected["spec"]))


@pytest.mark.parametrize("file", CRD_FILES)
def test_crd_fits_client_side_apply(file):
    """kubectl's client-side apply stores the object in a 256 KiB annotation; the CRD must fit (it embeds the
    whole job-config schema, which is how other operators' CRDs outgrew plain `kubectl apply`)."""
    crd = yaml.safe_load((REPO / "crds" / file).read_text())
    size = len(json.dumps(crd, separators=(",", ":")))
    assert size < 262144, f"the CRD is {size} bytes as JSON: only server-side apply can install it"


def test_crds_off_and_no_keep(render):
    assert not by_kind(render(VALUE_SETS["crds-off"]), "CustomResourceDefinition")
    crds = by_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert len(crds) == len(CRD_FILES)
    for crd in crds:
        annotations = crd["metadata"].get("annotations") or {}
        assert "helm.sh/resource-policy" not in annotations
        assert annotations["argocd.argoproj.io/sync-options"] == "ServerSideApply=true"


def test_no_crds_directory_in_chart():
    """Helm installs crds/ once and never upgrades it: the CRD must live in templates/ only."""
    assert not (CHART / "crds").exists()


def _normalise(rules: list[dict]) -> list[tuple]:
    out = set()
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((group, resource, verb))
    return sorted(out)


def _fix_hint(rules: list[dict]) -> str:
    text = yaml.safe_dump(rules, default_flow_style=None, sort_keys=False)
    return ("charts/rft-operator/files/rbac-rules.yaml and rbac-cluster-rules.yaml must hold rft_operator.rbac's "
            f"rules (run `python tests/chart/sync_chart.py`):\n{text}")


def _first_difference(a, b, path: str = "") -> str:
    if type(a) is not type(b):
        return f"{path}: {a!r:.80} != {b!r:.80}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                if key not in a or key not in b:
                    return f"{path}: key {key!r} only in {'rendered' if key in a else 'crds/rftjob.yaml'}"
                return _first_difference(a[key], b[key], f"{path}/{key}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r:.80} != {b!r:.80}"


def test_readme_values_table_matches_values_yaml():
    """Every value is in the README's table with its real default, and the table lists nothing else."""
    table = {}
    for line in (CHART / "README.md").read_text().split("## Values", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            table[cells[0].strip("`")] = json.loads(cells[1].strip("`"))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    seen = set()

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in table:
                assert table[path] == value, f"README default of {path}"
                seen.add(path)
            elif isinstance(value, dict) and value:
                walk(value, path + ".")
            else:
                raise AssertionError(f"{path} is missing from the README's values table")

    walk(values, "")
    assert set(table) == seen, f"README lists values that do not exist: {set(table) - seen}"


def test_notes_render(helm, values_file):
    """NOTES.txt renders for the main modes and tells the user what they installed."""
    out = helm("install", "rft", str(CHART), "--dry-run=client", "--namespace", NAMESPACE)
    assert "watches RFTJobs in every namespace" in out and "kubectl get rftjobs" in out
    out = helm("install", "rft", str(CHART), "--dry-run=client", "--namespace", NAMESPACE,
               *values_file({"rbac": {"scope": "namespaced"}, "crds": {"install": False}}))
    assert f"It watches RFTJobs in: {NAMESPACE}" in out and "crds.install is false" in out
