"""The feature cache's plan: how many trunk passes a budgeted cache makes."""

from __future__ import annotations

from model.feature_cache import planned_images


def plan(done: int, rate: float, now: float, until: float | None, views: int = 4) -> int:
    return planned_images(done, train=100, val=20, views=views, images_per_s=rate, now=now,
                          extra_views_until=until)


def test_without_a_deadline_every_view_is_planned() -> None:
    assert plan(0, 10.0, 0.0, None) == 120 + 3 * 100


def test_extra_views_are_planned_while_they_start_before_the_deadline() -> None:
    # 12 s for view 0 and validation, then 10 s a view: views 1 and 2 start before 30 s, view 3 does not
    assert plan(0, 10.0, 0.0, 30.0) == 120 + 2 * 100
    assert plan(0, 10.0, 0.0, 12.0) == 120  # the base ends exactly at the deadline
    assert plan(0, 1000.0, 0.0, 30.0) == 120 + 3 * 100  # a fast machine caches every view


def test_a_started_view_is_always_finished() -> None:
    assert plan(130, 10.0, 50.0, 40.0) == 120 + 100  # view 1 began before the deadline, now passed
    assert plan(120, 10.0, 50.0, 40.0) == 120  # nothing started after it
