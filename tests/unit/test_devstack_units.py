"""Pure pieces of the dev stack."""

from itertools import chain, repeat

from lastro.devstack.broker import kafka_cluster_id


def test_kafka_cluster_id_never_starts_with_a_dash() -> None:
    # 0xF8 encodes to '-' as the first base64url character; the second draw is used.
    draws = chain([bytes([0xF8]) + bytes(15)], repeat(bytes(range(16))))
    cluster_id = kafka_cluster_id(lambda: next(draws))
    assert not cluster_id.startswith("-")
    assert len(cluster_id) == 22
