from lastro.core.ids import has_prefix, new_id


def test_ids_carry_their_prefix_and_sort_by_creation_time() -> None:
    early = new_id("acc", now_ms=lambda: 1_000)
    late = new_id("acc", now_ms=lambda: 2_000)
    assert has_prefix(early, "acc") and has_prefix(late, "acc")
    assert early < late
    assert not has_prefix(early, "cus")


def test_ids_do_not_collide() -> None:
    assert len({new_id("evt") for _ in range(10_000)}) == 10_000
