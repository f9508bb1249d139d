"""Counters and a histogram the worker's loop moves for every job, exported at scrape time.

A ``prometheus_client`` counter takes a lock per increment (about 0.7 us) and a histogram
a lock per bucket and sum (1.6 us); two lifecycle events, an outcome and a duration a job
were a twentieth of the loop. Only the loop's thread writes these: it adds to plain dicts,
and a scrape (another thread) reads copies of them (a dict copy is one step under the
GIL), so nothing is locked. The families a scrape gets are the ones ``Counter`` and
``Histogram`` give (``_total``, ``_created``, cumulative ``_bucket``, ``_count``, ``_sum``);
``tests/unit/test_worker_metrics.py`` compares the two expositions.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

# untyped in prometheus_client: what its Histogram writes as a bucket's ``le``
_le = cast(Callable[[float], str], floatToGoString)

Key = tuple[str, ...]  # label values after the fixed ones (the partition)


def _created_series() -> bool:
    """Whether ``_created`` samples are on (``PROMETHEUS_DISABLE_CREATED_SERIES`` or
    ``disable_created_metrics()`` turn them off for prometheus_client's own metrics)."""
    return bool(getattr(prometheus_metrics, "_use_created", True))


class _HotFamily:
    """What a scrape needs of either kind: the family's name, help and labels, and when
    each series was first moved (its ``_created``)."""

    family: type[CounterMetricFamily] | type[HistogramMetricFamily]

    def __init__(self, name: str, documentation: str, labels: Sequence[str], fixed: Key) -> None:
        self.name, self.documentation = name, documentation
        self.labels, self.fixed = list(labels), fixed
        self.created: dict[Key, float] = {}

    def _empty(self) -> Any:
        return self.family(self.name, self.documentation, labels=self.labels)

    def describe(self) -> Iterator[Metric]:
        yield self._empty()


class HotCounter(_HotFamily):
    """A labelled counter bumped by one thread, read by the scrape."""

    family = CounterMetricFamily

    def __init__(self, name: str, documentation: str, labels: Sequence[str], fixed: Key) -> None:
        super().__init__(name, documentation, labels, fixed)
        self.counts: dict[Key, int] = {}

    def inc(self, key: Key) -> None:
        counts = self.counts
        if key in counts:
            counts[key] += 1
        else:
            self.created[key] = time.time()  # first: a key in counts is in created
            counts[key] = 1

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        counts = self.counts.copy()
        created = self.created.copy()  # after: it has every key of counts (see inc)
        with_created = _created_series()
        for key, value in counts.items():
            family.add_metric(
                [*self.fixed, *key], value, created=created[key] if with_created else None
            )
        yield family


class HotHistogram(_HotFamily):
    """A labelled histogram fed by one thread, read by the scrape."""

    family = HistogramMetricFamily

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str],
        fixed: Key,
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, documentation, labels, fixed)
        self.bounds = tuple(float(b) for b in buckets)
        self.les = [*(_le(b) for b in self.bounds), "+Inf"]
        # per key: observations per bucket (not cumulative; the last one is +Inf), then sum
        self.series: dict[Key, list[float]] = {}

    def observe(self, key: Key, value: float) -> None:
        series = self.series.get(key)
        if series is None:
            self.created[key] = time.time()
            series = self.series[key] = [0.0] * (len(self.les) + 1)
        series[bisect.bisect_left(self.bounds, value)] += 1  # le: a bound counts as inside
        series[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = self._empty()
        all_series = self.series.copy()
        created = self.created.copy()  # after: it has every key of all_series (see observe)
        with_created = _created_series()
        for key, series in all_series.items():
            snapshot = series.copy()  # one step: its count is its buckets' sum
            counts, total = snapshot[:-1], snapshot[-1]
            cumulative = list(zip(self.les, itertools.accumulate(counts), strict=True))
            values = [*self.fixed, *key]
            family.add_metric(values, cumulative, total)
            labels = dict(zip(self.labels, values, strict=True))
            if with_created:
                family.samples.append(Sample(f"{self.name}_created", labels, created[key]))
        yield family
