"""The operator's own status writes laid over a watched job that does not show them yet (`cache.OwnWrites`).

A reconcile that read the older status would act on it: after the API server refused a job's pod, a pass that
still saw "Pending, CreatingPods" sent the same pod again (CI caught it on kmock, whose resourceVersion never
changes). These are the rules a reconcile relies on, for a server that bumps versions and for one that does not.
"""

from rft_operator.cache import OwnWrites

PENDING = {"phase": "Pending", "reason": "CreatingPods", "specHash": "abc"}
FAILED = {"phase": "Failed", "reason": "InvalidSpec", "specHash": "abc"}


def job(version, status=None):
    body = {"metadata": {"name": "j", "namespace": "ns"}, "spec": {}}
    if version is not None:
        body["metadata"]["resourceVersion"] = version
    if status is not None:
        body["status"] = dict(status)
    return body


def test_a_versioning_server_the_written_status_stands_until_the_watch_reaches_its_version():
    writes = OwnWrites()
    writes.wrote("ns", "j", job("11", FAILED), before="10")
    assert writes.apply("ns", "j", job("10", PENDING))["status"] == FAILED
    # the watch caught up: from here the watched job is the truth, whatever it says (someone else wrote after)
    later = {**FAILED, "message": "edited by someone"}
    assert writes.apply("ns", "j", job("12", later))["status"] == later
    assert writes.apply("ns", "j", job("10", PENDING))["status"] == PENDING  # nothing is held any more


def test_a_server_that_keeps_the_version_is_confirmed_by_the_status_not_by_the_version():
    writes = OwnWrites()
    # two writes in one pass (the pass's status, then the refusal), each answered with the version sent
    writes.wrote("ns", "j", job("1", PENDING), before="1")
    writes.wrote("ns", "j", job("1", FAILED), before="1")
    stale = writes.apply("ns", "j", job("1", PENDING))
    assert stale["status"] == FAILED, "a stale job read as the status before the refusal: its pod is sent again"
    assert writes.apply("ns", "j", job("1", FAILED))["status"] == FAILED
    assert writes.apply("ns", "j", job("1", PENDING))["status"] == PENDING  # confirmed, so no longer held


def test_the_second_write_of_a_pass_is_not_taken_for_confirmed_when_the_server_keeps_the_version():
    writes = OwnWrites()
    writes.wrote("ns", "j", job("7", PENDING), before="6")  # versions bump for the first write...
    writes.wrote("ns", "j", job("7", FAILED), before="6")  # ...and an answer repeats it for the second
    assert writes.apply("ns", "j", job("7", PENDING))["status"] == FAILED


def test_an_answer_without_the_object_is_held_until_the_watch_shows_its_status():
    writes = OwnWrites()
    # Controller falls back to the job it read with the new status: the version is the one read
    writes.wrote("ns", "j", job("5", FAILED), before="5")
    assert writes.apply("ns", "j", job("5", PENDING))["status"] == FAILED
    assert writes.apply("ns", "j", job(None, PENDING))["status"] == FAILED


def test_a_write_nobody_confirms_is_forgotten_after_the_expiry():
    writes = OwnWrites(expire_seconds=0.0)
    writes.wrote("ns", "j", job("1", FAILED), before="1")
    assert writes.apply("ns", "j", job("1", PENDING))["status"] == PENDING
