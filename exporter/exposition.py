"""Prometheus text 0.0.4 and OpenMetrics 1.0.0, rendered ahead of the scrape.

This is kube-state-metrics' metrics store (`pkg/metrics_store`): each tenant's lines are
rendered to bytes once, when its state changes, and a scrape only joins stored bytes family by
family. Only the time-derived families (days to expiry, ages) are formatted at scrape time, from
pre-rendered ``name{labels} `` prefixes and the timestamps they count from.

Why not prometheus-client's `generate_latest`: it builds a family object per metric and a
sample object per series, and formats every label and value, on every scrape. At 1,000 tenants
that took 0.3-0.9 s of the event loop per scrape (170x serving the same bytes); at 10,000 it
would miss Prometheus's scrape timeout. prometheus-client stays for what it does well and what
must match it exactly: the HELP/TYPE header lines (rendered by it, once, at start), float
formatting of static values, content negotiation, and parsing in the tests.

The time-derived values (about 9,000 at 1,000 tenants, on every scrape) are formatted by
orjson: one `orjson.dumps` of the list writes each float in its shortest round-trip form (the
digits `repr` writes, though small exponents are spelt out: 0.00001 for 1e-05; in C, 3x faster
than a `%r` per value), the same number any exposition parser reads back.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest as text_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .deflate import Deflated, deflate, gzip_pieces
from .metric_spec import MetricSpec
from .records import Sample
from .timetext import SECONDS_PER_DAY

OPENMETRICS_EOF: Final = b"# EOF\n"
# zlib's fastest level: a 47 MB exposition compresses ~4x faster than at the default level 6,
# for ~25% more bytes on the wire; the scrape timeout is the scarcer resource.
GZIP_LEVEL: Final = 1


def _escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _series_format(spec: MetricSpec) -> str:
    """``name{a="%s",b="%s"}``: one %-operation renders a series' name and labels."""
    if not spec.labels:
        return spec.name
    return spec.name + "{" + ",".join(f'{label}="%s"' for label in spec.labels) + "}"


def _value_text(value: float) -> str:
    # Most static values are 0 or 1 (state sets, flags, info series): skip the general path.
    if value == 1.0:
        return "1.0"
    if value == 0.0:
        return "0.0"
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


class _OneFamily(Collector):
    def __init__(self, spec: MetricSpec) -> None:
        self._spec = spec

    def collect(self) -> Iterable[Metric]:
        spec = self._spec
        if spec.type == "counter":
            return [CounterMetricFamily(spec.name.removesuffix("_total"), spec.help)]
        return [GaugeMetricFamily(spec.name, spec.help)]


def _headers(spec: MetricSpec) -> tuple[bytes, bytes]:
    """HELP and TYPE lines of one family, as prometheus-client writes them in each format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_OneFamily(spec))
    om: bytes = openmetrics_latest(registry)  # type: ignore[no-untyped-call]
    return text_latest(registry), om.removesuffix(OPENMETRICS_EOF)


@dataclass(frozen=True, slots=True)
class Layout:
    """The families in exposition order, with their header lines rendered once."""

    specs: tuple[MetricSpec, ...]
    index: dict[str, int]  # family name -> position
    text_headers: tuple[bytes, ...]
    om_headers: tuple[bytes, ...]
    formats: tuple[str, ...]  # per family: its series' name and labels, as a %-format
    text_headers_deflated: tuple[Deflated, ...]  # the same headers, compressed for gzip
    om_headers_deflated: tuple[Deflated, ...]

    @classmethod
    def of(cls, specs: Iterable[MetricSpec]) -> Layout:
        chosen = tuple(specs)
        headers = [_headers(spec) for spec in chosen]
        return cls(
            chosen,
            {spec.name: i for i, spec in enumerate(chosen)},
            tuple(text for text, _ in headers),
            tuple(om for _, om in headers),
            tuple(_series_format(spec) for spec in chosen),
            tuple(deflate(text, GZIP_LEVEL) for text, _ in headers),
            tuple(deflate(om, GZIP_LEVEL) for _, om in headers),
        )


@dataclass(frozen=True, slots=True)
class Lines:
    """One tenant's (or the exporter's own) rendered lines, per family of a `Layout`.

    `static[i]` holds the finished lines of family i. `derived[i]` holds, for a time-derived
    family, a %-template of its lines (``prefix %b\\n`` each) and the timestamps the values
    count from.
    """

    static: tuple[bytes, ...]
    derived: tuple[tuple[bytes, tuple[float, ...]], ...]

    @property
    def size(self) -> int:
        """Bytes held (the derived values not counted)."""
        return sum(map(len, self.static)) + sum(len(t) for t, _ in self.derived)


_NO_DERIVED: Final = (b"", ())


def render_lines(layout: Layout, samples: Iterable[Sample]) -> Lines:
    """Render samples once; a sample of a family the layout does not hold is a bug.

    On the poll path (once per tenant per poll), so it is written for speed: one %-operation
    per series, label values escaped once per distinct value.
    """
    specs, index, formats = layout.specs, layout.index, layout.formats
    static: dict[int, list[str]] = {}
    derived: dict[int, tuple[list[str], list[float]]] = {}
    escaped: dict[str, str] = {}
    for name, labels, value in samples:
        i = index[name]
        values = []
        for label in labels:
            clean = escaped.get(label)
            if clean is None:
                clean = escaped[label] = _escape_label_value(label)
            values.append(clean)
        prefix = formats[i] % tuple(values) if values else formats[i]
        if specs[i].derived is None:
            static.setdefault(i, []).append(f"{prefix} {_value_text(value)}\n")
        else:
            template, stamps = derived.setdefault(i, ([], []))
            template.append(prefix.replace("%", "%%") + " %b\n")
            stamps.append(value)
    count = len(specs)
    return Lines(
        tuple("".join(static[i]).encode() if i in static else b"" for i in range(count)),
        tuple(
            ("".join(derived[i][0]).encode(), tuple(derived[i][1])) if i in derived else _NO_DERIVED
            for i in range(count)
        ),
    )


def wants_openmetrics(accept: str) -> tuple[bool, str]:
    """(OpenMetrics?, content type) for an `Accept` header, decided as prometheus-client does."""
    _, content_type = choose_encoder(accept)
    return content_type.startswith("application/openmetrics-text"), content_type


# Parts per %-operation of a derived family: one operation holds the GIL from start to end, and
# at 10,000 tenants a family's single operation held it for ~40 ms, stalling health probes.
DERIVED_GROUP: Final = 256


@dataclass(frozen=True, slots=True)
class Joined:
    """One family's lines from every part, joined: what a scrape reuses until a part changes.

    A derived family is kept in groups of parts: (%-template, timestamps) each. A static
    family's lines are also kept compressed, once a gzip scrape has needed them.
    """

    static: bytes
    groups: tuple[tuple[bytes, Sequence[float]], ...] = ()
    deflated: Deflated | None = None


def join_family(parts: Sequence[Lines], i: int, derived: bool) -> Joined:
    """Family `i` of every part, in order."""
    if not derived:
        return Joined(b"".join([part.static[i] for part in parts]))
    groups = []
    for start in range(0, len(parts), DERIVED_GROUP):
        group = parts[start : start + DERIVED_GROUP]
        template = b"".join([part.derived[i][0] for part in group])
        if template:
            # Contiguous doubles: the parts' float objects lie all over the heap, and reading
            # 9,000 of them per scrape at 1,000 tenants missed the cache on most of them.
            stamps = array("d", [stamp for part in group for stamp in part.derived[i][1]])
            groups.append((template, stamps))
    return Joined(b"", tuple(groups))


def value_texts(values: list[float]) -> list[bytes]:
    """Each value as the exposition writes it: shortest round-trip text, from orjson in one
    call. orjson writes a non-finite float as ``null``; such a list takes prometheus-client's
    path (``+Inf``, ``NaN``) instead."""
    text = orjson.dumps(values)
    if b"null" in text:
        return [_value_text(value).encode() for value in values]
    return text[1:-1].split(b",") if values else []


def _derived_text(
    groups: Iterable[tuple[bytes, Sequence[float]]], derived: str, now: float
) -> list[bytes]:
    out = []
    for template, stamps in groups:
        if derived == "days_until":  # the formula of timetext.days_until, inlined for speed
            values = [(stamp - now) / SECONDS_PER_DAY for stamp in stamps]
        else:
            values = [now - stamp for stamp in stamps]
        out.append(template % tuple(value_texts(values)))
    return out


def _pieces(
    layout: Layout,
    families: Sequence[Joined | None],
    now: float,
    *,
    openmetrics: bool,
    names: frozenset[str] | None,
    extra: Lines | None,
    compressed: bool,
) -> list[bytes | Deflated]:
    """The exposition at `now`; with `compressed`, headers and static families as the
    `Deflated` pieces held for them (every static family must then have its `deflated`)."""
    headers: Sequence[bytes | Deflated]
    if compressed:
        headers = layout.om_headers_deflated if openmetrics else layout.text_headers_deflated
    else:
        headers = layout.om_headers if openmetrics else layout.text_headers
    chunks: list[bytes | Deflated] = []
    for i, spec in enumerate(layout.specs):
        if names is not None and spec.name not in names:
            continue
        chunks.append(headers[i])
        joined = families[i]
        assert joined is not None  # every family that is not filtered out is joined
        if spec.derived is None:
            if compressed:
                assert joined.deflated is not None
                chunks.append(joined.deflated)
            else:
                chunks.append(joined.static)
            if extra is not None:
                chunks.append(extra.static[i])
        else:
            chunks.extend(_derived_text(joined.groups, spec.derived, now))
            if extra is not None and extra.derived[i][0]:
                chunks.extend(_derived_text([extra.derived[i]], spec.derived, now))
    if openmetrics:
        chunks.append(OPENMETRICS_EOF)
    return chunks


def _with_deflated(joined: Joined | None, spec: MetricSpec) -> Joined | None:
    if joined is None or spec.derived is not None or joined.deflated is not None:
        return joined
    return replace(joined, deflated=deflate(joined.static, GZIP_LEVEL))


def assemble(
    layout: Layout,
    families: Sequence[Joined | None],
    now: float,
    *,
    openmetrics: bool,
    names: frozenset[str] | None = None,
    extra: Lines | None = None,
    compress: bool = False,
) -> tuple[list[bytes | memoryview], list[Joined | None]]:
    """The exposition at `now` as chunks: every family's header, its joined lines, then the
    `extra` part's (rendered per scrape), and the families as used (with `compress`, with their
    compressed lines). Blocking and CPU-bound at scale: run it in a thread. `names` keeps only
    those families (Prometheus's `name[]` parameter).

    With `compress`, only what changes per scrape is gzipped here: the time-derived families
    and the `extra` part (as stored blocks), and families whose lines changed since they were
    last compressed.
    """
    used = list(families)
    if compress:
        used = [
            _with_deflated(joined, spec) for joined, spec in zip(used, layout.specs, strict=True)
        ]
    pieces = _pieces(
        layout, used, now, openmetrics=openmetrics, names=names, extra=extra, compressed=compress
    )
    if compress:
        return gzip_pieces(pieces), used
    return [piece for piece in pieces if not isinstance(piece, Deflated)], used


def render(
    layout: Layout,
    parts: Sequence[Lines],
    now: float,
    *,
    openmetrics: bool,
    names: frozenset[str] | None = None,
    compress: bool = False,
) -> bytes:
    """The whole exposition of `parts` at `now`, joined from scratch (no cache)."""
    families = [
        join_family(parts, i, spec.derived is not None) for i, spec in enumerate(layout.specs)
    ]
    chunks, _ = assemble(
        layout, families, now, openmetrics=openmetrics, names=names, compress=compress
    )
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one scrape renders: immutable, so a thread can read it while the loop goes on."""

    layout: Layout
    parts: tuple[Lines, ...]
    families: tuple[Joined | None, ...]  # None: join it from `parts` (a part changed)
    generations: tuple[int, ...]


class Exposition:
    """Every part's lines (a part is a tenant), and per family the lines of all parts joined,
    kept until a part's lines of that family change.

    Most families do not change from one poll to the next (token info, expiry, state), so a
    scrape joins only the few that did (poll timestamps, counters). Changed on the event loop;
    scrapes render from a `Snapshot` in a thread and hand their joins back with `keep`.
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._parts: dict[str, Lines] = {}
        self._generations = [0] * len(layout.specs)
        self._joined: list[Joined | None] = [None] * len(layout.specs)
        self._joined_at = [-1] * len(layout.specs)

    def put(self, key: str, lines: Lines) -> None:
        """Add or replace a part's lines."""
        old = self._parts.get(key)
        self._parts[key] = lines
        for i in range(len(self._generations)):
            if (
                old is None
                or old.static[i] != lines.static[i]
                or old.derived[i] != lines.derived[i]
            ):
                self._generations[i] += 1

    def remove(self, key: str) -> None:
        """Drop a part."""
        old = self._parts.pop(key, None)
        if old is not None:
            for i in range(len(self._generations)):
                if old.static[i] or old.derived[i][0]:
                    self._generations[i] += 1

    def __len__(self) -> int:
        return len(self._parts)

    def snapshot(self) -> Snapshot:
        """The current parts and joins (references only: cheap on the loop)."""
        generations = tuple(self._generations)
        families = tuple(
            joined if joined is not None and joined_at == generation else None
            for joined, joined_at, generation in zip(
                self._joined, self._joined_at, generations, strict=True
            )
        )
        return Snapshot(self.layout, tuple(self._parts.values()), families, generations)

    def keep(self, snapshot: Snapshot, families: Sequence[Joined | None]) -> None:
        """Keep a scrape's joins for the families that have not changed since its snapshot."""
        for i, joined in enumerate(families):
            if (
                joined is not None
                and joined is not snapshot.families[i]  # joined or compressed by the scrape
                and self._generations[i] == snapshot.generations[i]
            ):
                self._joined[i] = joined
                self._joined_at[i] = snapshot.generations[i]


def render_snapshot(
    snapshot: Snapshot,
    now: float,
    *,
    openmetrics: bool,
    names: frozenset[str] | None = None,
    extra: Lines | None = None,
    compress: bool = False,
) -> tuple[list[bytes | memoryview], list[Joined | None]]:
    """A scrape, in a thread: (the body's chunks, gzipped with `compress`; the families' joins)."""
    specs = snapshot.layout.specs
    families: list[Joined | None] = [
        joined
        if joined is not None or (names is not None and specs[i].name not in names)
        else join_family(snapshot.parts, i, specs[i].derived is not None)
        for i, joined in enumerate(snapshot.families)
    ]
    chunks, used = assemble(
        snapshot.layout,
        families,
        now,
        openmetrics=openmetrics,
        names=names,
        extra=extra,
        compress=compress,
    )
    return coalesce(chunks), used


# The HTTP handler writes pieces of at least this size as they are: copying them into larger
# chunks cost more than the writes it saved (1,000 tenants, side by side in one process:
# copying everything into 256 KiB chunks 8.5 ms plain and 5.6 ms gzip per scrape, passing on
# pieces of 16 KiB and more 5.9 and 4.8 ms).
PASS_SIZE: Final = 16 * 1024
# Runs of smaller pieces (HELP and TYPE lines, small families) are joined into chunks of up to
# this size: each write is a syscall. (A stored block's 5-byte header mostly sits alone between
# two large views and goes out as a write of its own: ~22 per gzip scrape at 1,000 tenants.)
WRITE_SIZE: Final = 256 * 1024


def coalesce(chunks: Iterable[bytes | memoryview]) -> list[bytes | memoryview]:
    """The same bytes, with runs of small chunks joined (up to `WRITE_SIZE`) and chunks of
    `PASS_SIZE` or more passed on as they are, not copied."""
    out: list[bytes | memoryview] = []
    pending: list[bytes | memoryview] = []
    size = 0
    for chunk in chunks:
        if len(chunk) >= PASS_SIZE:
            if pending:
                out.append(b"".join(pending))
                pending, size = [], 0
            out.append(chunk)
            continue
        if not chunk:
            continue
        pending.append(chunk)
        size += len(chunk)
        if size >= WRITE_SIZE:
            out.append(b"".join(pending))
            pending, size = [], 0
    if pending:
        out.append(b"".join(pending))
    return out
