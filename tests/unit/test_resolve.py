"""One pod resolver for every command: names, namespace/name, UIDs and prefixes, container id
prefixes; no match or several is one line naming the closest."""

from __future__ import annotations

import pytest

from podscope.metadata.resolve import Target, resolve

PODS = [Target("11111111-aaaa", "shop", "backend-0", frozenset({"c0ffee" + "0" * 58})),
        Target("22222222-bbbb", "shop", "frontend-7d9f", frozenset({"beef" + "1" * 60})),
        Target("33333333-cccc", "ops", "backend-0", frozenset()),
        Target("", "", "", frozenset({"abcd" + "2" * 60}))]


@pytest.mark.parametrize("query,uid", [
    ("shop/backend-0", "11111111-aaaa"),
    ("ops/backend-0", "33333333-cccc"),
    ("frontend-7d9f", "22222222-bbbb"),
    ("22222222-bbbb", "22222222-bbbb"),
    ("2222", "22222222-bbbb"),
    ("c0ffee", "11111111-aaaa"),
    ("abcd22", ""),
])
def test_each_form_finds_its_pod(query: str, uid: str) -> None:
    assert resolve(None, query, pods=PODS).uid == uid


@pytest.mark.parametrize("query,needle", [
    ("backend-0", "2 pods match"),  # two namespaces: say which
    ("backend-O", "closest: shop/backend-0"),
    ("nosuchpod", "no pod or container on this node matches"),
    ("ab", "no pod"),  # prefixes need 4 characters
    ("", "empty"),
])
def test_no_match_or_several_is_one_line(query: str, needle: str) -> None:
    with pytest.raises(ValueError) as e:
        resolve(None, query, pods=PODS)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_matches_labels_by_uid_or_container() -> None:
    assert PODS[0].matches({"k8s_pod_uid": "11111111-aaaa", "container_id": "x"})
    assert not PODS[0].matches({"k8s_pod_uid": "22222222-bbbb"})
    assert PODS[3].matches({"k8s_pod_uid": "", "container_id": "abcd" + "2" * 60})
