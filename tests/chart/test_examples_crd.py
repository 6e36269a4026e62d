"""The example RFTJobs against the CRD's own schema, as the API server would check and prune them."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from chartkit import REPO, pruned_fields, to_jsonschema

CRD = yaml.safe_load((REPO / "crds" / "rftjob.yaml").read_text())
EXAMPLES = sorted((REPO / "examples" / "rftjobs").glob("*.yaml"))
GITOPS_SAMPLES = sorted((REPO / "gitops" / "argocd" / "resource_customizations" / "rft.dev" / "RFTJob" /
                         "testdata").glob("*.yaml"))


def _schema(version: str = "v1alpha1") -> dict:
    (served,) = [v for v in CRD["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


def _validator() -> jsonschema.Draft4Validator:
    # OpenAPI 3.0 schemas are Draft 4 in the points that matter here (boolean exclusiveMinimum/Maximum)
    cls = jsonschema.Draft4Validator
    return cls(to_jsonschema(_schema()), format_checker=cls.FORMAT_CHECKER)


def test_there_are_examples():
    assert EXAMPLES, "examples/rftjobs/*.yaml: the operator's example RFTJobs are missing"


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_against_the_crd(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for job in docs:
        assert job["apiVersion"] == f"{CRD['spec']['group']}/v1alpha1" and job["kind"] == "RFTJob"
        errors = sorted(_validator().iter_errors(job), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
        # fields the schema does not declare would be dropped silently by the API server
        assert pruned_fields(job, _schema()) == []


def test_the_schema_check_has_teeth():
    """A wrong type, a bad enum value and an undeclared field in an example are all caught."""
    job = yaml.safe_load(EXAMPLES[0].read_text())
    bad = copy.deepcopy(job)
    bad["spec"]["backoffLimit"] = "three"
    assert list(_validator().iter_errors(bad))
    bad = copy.deepcopy(job)
    bad["spec"]["imagePullPolicy"] = "Sometimes"
    assert list(_validator().iter_errors(bad))
    bad = copy.deepcopy(job)
    bad["spec"]["backofLimit"] = 3
    assert pruned_fields(bad, _schema()) == [".spec.backofLimit"]


@pytest.mark.parametrize("path", GITOPS_SAMPLES, ids=[p.name for p in GITOPS_SAMPLES])
def test_health_check_samples_are_valid_rftjobs(path):
    """The Argo CD health-check samples use the status fields the CRD declares (so they look like real jobs)."""
    job = yaml.safe_load(path.read_text())
    if (job.get("status") or {}).get("phase") == "Exploding":
        job["status"]["phase"] = "Running"  # the unknown-phase sample is off-schema on purpose
    assert pruned_fields(job.get("status", {}), _schema()["properties"]["status"], ".status") == []
