"""After start-up the heap is frozen and the young generation is collected less often."""

from __future__ import annotations

import gc

from gateway.heap import YOUNG_THRESHOLD, settle_after_start_up


def test_start_ups_objects_are_frozen_and_the_young_threshold_raised() -> None:
    threshold = gc.get_threshold()
    try:
        made_at_start_up = [[index] for index in range(1000)]
        settle_after_start_up()
        assert gc.get_freeze_count() >= len(made_at_start_up)
        assert gc.get_threshold() == (YOUNG_THRESHOLD, threshold[1], threshold[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
