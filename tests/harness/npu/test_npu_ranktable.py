"""The rank table must be the one the samples' two-sided link builds, byte for byte."""

from __future__ import annotations

import json

import pytest

from kvtest.host.ranktable import (
    RankEntry,
    RankTableError,
    build_rank_table,
    cluster_rank_info,
    rank_table_json,
)

# The samples' two-machine table (pull_sample_common._build_distributed_rank_table, device 0), written
# out by hand from the reference flow: P on PROMPT_HOST_IP, D on DECODER_HOST_IP.
SAMPLE_TWO_HOSTS = {
    "server_count": "2",
    "status": "completed",
    "version": "1.2",
    "server_list": [
        {
            "device": [{"device_id": "0", "device_ip": "192.168.1.1", "rank_id": "0"}],
            "host_ip": "10.10.10.0",
            "server_id": "1",
        },
        {
            "device": [{"device_id": "0", "device_ip": "192.168.2.1", "rank_id": "1"}],
            "host_ip": "10.10.10.1",
            "server_id": "2",
        },
    ],
}

# Single-machine mode: one server, the first two davinci devices as ranks 0 and 1.
SAMPLE_ONE_HOST = {
    "server_count": "1",
    "status": "completed",
    "version": "1.2",
    "server_list": [
        {
            "device": [
                {"device_id": "0", "device_ip": "192.168.1.1", "rank_id": "0"},
                {"device_id": "1", "device_ip": "192.168.1.2", "rank_id": "1"},
            ],
            "host_ip": "10.0.0.5",
            "server_id": "1",
        }
    ],
}

TWO_HOSTS = [("10.10.10.0", 0, "192.168.1.1", 0), ("10.10.10.1", 0, "192.168.2.1", 1)]
ONE_HOST = [RankEntry("10.0.0.5", 0, "192.168.1.1", 0), RankEntry("10.0.0.5", 1, "192.168.1.2", 1)]


def test_two_hosts_matches_sample():
    assert build_rank_table(TWO_HOSTS) == SAMPLE_TWO_HOSTS
    assert rank_table_json(TWO_HOSTS) == json.dumps(SAMPLE_TWO_HOSTS)


def test_one_host_matches_sample():
    assert build_rank_table(ONE_HOST) == SAMPLE_ONE_HOST
    assert rank_table_json(ONE_HOST) == json.dumps(SAMPLE_ONE_HOST)


@pytest.mark.parametrize("entries", [TWO_HOSTS, ONE_HOST], ids=["two-hosts", "one-host"])
def test_p_and_d_build_the_identical_string(entries):
    # each side lists itself first; the table must not depend on it
    assert rank_table_json(list(reversed(entries))) == rank_table_json(entries)


def test_four_members_on_two_hosts_group_by_host_in_rank_order():
    table = build_rank_table(
        [
            ("10.0.0.2", 0, "192.168.2.1", 2),
            ("10.0.0.1", 0, "192.168.1.1", 0),
            ("10.0.0.1", 1, "192.168.1.2", 1),
            ("10.0.0.2", 1, "192.168.2.2", 3),
        ]
    )
    assert table["server_count"] == "2"
    assert [s["host_ip"] for s in table["server_list"]] == ["10.0.0.1", "10.0.0.2"]
    assert [[d["rank_id"] for d in s["device"]] for s in table["server_list"]] == [["0", "1"], ["2", "3"]]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (TWO_HOSTS[:1], r"a two-sided link takes 2 to 4 members, got 1"),
        ([("10.0.0.1", d, f"192.168.1.{d + 1}", d) for d in range(5)], r"takes 2 to 4 members, got 5"),
        (
            [TWO_HOSTS[0], ("10.10.10.1", 0, "192.168.2.1", 0)],
            r"ranks must be 0\.\.1 with no gaps or repeats, got \[0, 0\]",
        ),
        ([TWO_HOSTS[0], ("10.10.10.1", 0, "192.168.2.1", 2)], r"got \[0, 2\]"),
        (
            [TWO_HOSTS[0], ("10.10.10.1", 0, "192.168.2", 1)],
            r"rank 1: device_ip '192\.168\.2' is not an IPv4 address",
        ),
        ([TWO_HOSTS[0], ("host-b", 0, "192.168.2.1", 1)], r"rank 1: host_ip 'host-b' is not an IPv4 address"),
        (
            [ONE_HOST[0], ("10.0.0.5", 0, "192.168.1.2", 1)],
            r"ranks 0 and 1 both use device 0 on host 10\.0\.0\.5",
        ),
        (
            [TWO_HOSTS[0], ("10.10.10.1", 0, "192.168.2.1")],
            r"must be \(host_ip, device_id, device_ip, rank\)",
        ),
    ],
)
def test_bad_members_are_refused(entries, message):
    with pytest.raises(RankTableError, match=message):
        build_rank_table(entries)


def test_cluster_rank_info_is_the_samples():
    info = cluster_rank_info([1, 2])
    assert info == {1: 0, 2: 1}
    assert list(info.items()) == [(1, 0), (2, 1)]
    assert list(cluster_rank_info({2: 1, 1: 0}).items()) == [(1, 0), (2, 1)]


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ([1], r"takes 2 to 4 clusters, got 1"),
        ([1, 2, 3, 4, 5], r"got 5"),
        ([1, 1], r"cluster ids must be distinct, got \[1, 1\]"),
        ([-1, 2], r"cluster ids are uint64"),
        ({1: 0, 2: 2}, r"cluster ranks must be 0\.\.1, got \[0, 2\]"),
    ],
)
def test_cluster_rank_info_refuses(clusters, message):
    with pytest.raises(RankTableError, match=message):
        cluster_rank_info(clusters)
