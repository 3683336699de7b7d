"""`TASKENGINE_REPLICAS`: what `taskengine up` accepts and what it refuses, saying why."""

import pytest
from taskengine_cli import supervisor
from taskengine_cli.supervisor import SERVICES, file_name, parse_replicas


def test_unnamed_services_run_once_and_named_ones_as_many_as_asked():
    assert parse_replicas("") == dict.fromkeys(SERVICES, 1)
    counts = parse_replicas(" gateway=3, admission=2 ,scheduler=2,dispatcher=4,notifier=2")
    assert (counts["gateway"], counts["admission"], counts["scheduler"]) == (3, 2, 2)
    assert (counts["dispatcher"], counts["notifier"]) == (4, 2)
    assert counts["projector"] == counts["relay"] == 1
    assert parse_replicas("relay=1,projector=1")["relay"] == 1  # once is always fine


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("relay=3", "the relay runs once"),
        ("projector=2", "the projector runs once"),
        ("gateway=0", "from 1 to 16"),
        ("gateway=17", "from 1 to 16"),
        ("gateway=two", "whole number"),
        ("gateways=2", "not service=count"),
        ("gateway", "not service=count"),
    ],
)
def test_a_count_that_cannot_be_run_is_refused_saying_why(text, says):
    with pytest.raises(ValueError, match=says):
        parse_replicas(text)


def test_the_first_process_of_a_service_keeps_its_plain_name():
    assert [file_name("gateway", i) for i in range(3)] == ["gateway", "gateway-1", "gateway-2"]


def test_no_metrics_port_is_the_gateways_even_when_the_os_offers_it(monkeypatch):
    """The gateway's port is free until the gateway binds it: the OS may offer it as "any
    free port", and a metrics server there would answer the API's clients."""
    offered = iter([8000, 9001, 8000, 9002, 9003])
    monkeypatch.setattr(supervisor, "free_port", lambda preferred=None: preferred or next(offered))
    ports = supervisor.metrics_ports(0, ["relay", "gateway", "dispatcher"], reserved=8000)
    assert ports == {"relay": 9001, "gateway": 9002, "dispatcher": 9003}
    # From a base whose run reaches the gateway's port: that one is skipped too.
    offered = iter([9004])
    ports = supervisor.metrics_ports(7999, ["relay", "gateway", "dispatcher"], reserved=8000)
    assert ports == {"relay": 7999, "gateway": 9004, "dispatcher": 8001}
