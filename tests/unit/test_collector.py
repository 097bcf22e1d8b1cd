"""The serving process's garbage collector: frozen start-up heap, threshold, pauses."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lastro.core import collector
from lastro.core.config import ConfigError, load_settings
from lastro.core.observability import metrics_registry


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        gc.callbacks[:] = callbacks


def pauses_observed(generation: str) -> float:
    value = metrics_registry().get_sample_value(
        "lastro_gc_pause_seconds_count", {"generation": generation}
    )
    return value or 0.0


@pytest.mark.usefixtures("restored_collector")
def test_prepare_freezes_the_heap_and_sets_only_the_young_threshold() -> None:
    _, middle, old = gc.get_threshold()
    alive = {"kept": ["by", "this", "test"]}

    collector.prepare_collector(12_345)

    assert gc.get_threshold() == (12_345, middle, old)
    assert gc.is_tracked(alive)
    assert all(obj is not alive for obj in gc.get_objects())  # frozen: in no generation


@pytest.mark.usefixtures("restored_collector")
def test_every_collection_is_observed_once_by_generation() -> None:
    collector.measure_pauses()
    collector.measure_pauses()  # idempotent: one callback, one observation per pause
    before = {g: pauses_observed(g) for g in ("0", "1", "2")}

    gc.collect(2)
    gc.collect(0)

    assert pauses_observed("2") == before["2"] + 1
    assert pauses_observed("0") == before["0"] + 1
    assert pauses_observed("1") == before["1"]


@pytest.mark.usefixtures("restored_collector")
def test_a_threshold_below_one_is_refused_before_anything_changes() -> None:
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    with pytest.raises(ValueError, match="at least 1"):
        collector.prepare_collector(0)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (thresholds, frozen)


def test_the_threshold_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LASTRO_GC_GEN0_THRESHOLD", "700")
    assert load_settings().gc_gen0_threshold == 700
    monkeypatch.setenv("LASTRO_GC_GEN0_THRESHOLD", "0")
    with pytest.raises(ConfigError, match="LASTRO_GC_GEN0_THRESHOLD"):
        load_settings()
    monkeypatch.delenv("LASTRO_GC_GEN0_THRESHOLD")
    assert load_settings().gc_gen0_threshold == 10_000
