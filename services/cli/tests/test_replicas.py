"""`TASKENGINE_REPLICAS`: what `taskengine up` accepts and what it refuses, saying why."""

import pytest
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
