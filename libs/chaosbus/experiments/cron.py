"""When a scheduled experiment runs next: cron expressions and Go durations, in UTC.

Chaos Mesh v0.9 parsed ``scheduler.cron`` with robfig/cron's standard parser, so this
module accepts what that parser accepted and computes the same next times:

* five fields, ``minute hour day-of-month month day-of-week``, each a ``*`` (or ``?``),
  a number, a name (``jan``..``dec``, ``sun``..``sat``, any case), a range ``a-b``, a
  step ``*/n``, ``a-b/n`` or ``a/n`` (``a`` up to the field's maximum), or a comma list
  of those; day of week runs from 0 (Sunday) to 6, as in robfig/cron;
* day of month and day of week are OR-ed when both are restricted, and AND-ed when
  either is a bare ``*`` (robfig/cron's rule, which differs from some other crons in
  how ``*/1`` counts: it is a ``*`` there, while ``*/2`` is a restriction);
* ``@yearly`` (``@annually``), ``@monthly``, ``@weekly``, ``@daily`` (``@midnight``),
  ``@hourly``, and ``@every <Go duration>`` (at least one second; fractions of a second
  are dropped, as robfig/cron did);
* an optional ``CRON_TZ=UTC`` or ``TZ=UTC`` prefix: every time here is UTC, and other
  zones are refused rather than silently read as UTC.

A date that can never occur (``0 0 30 2 *``: February 30th) is refused when parsed, and
``next_after`` jumps field by field instead of walking minute by minute, so a rare but
possible date (February 29th) costs a few thousand steps at most.
"""

from __future__ import annotations

import bisect
import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from ..durations import units_total
from .errors import SpecError

MAX_CRON_LENGTH = 256
# A schedule whose next time is further away than this is treated as never firing.
SEARCH_YEARS = 10

_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_MONTHS = {name: number for number, name in enumerate(_MONTH_NAMES, start=1)}
_DAYS = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
# (name, minimum, maximum, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)
# Longest month each month can have (February in a leap year).
_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# Go's time.Duration holds at most about 292 years.
MAX_GO_DURATION = (2**63 - 1) / 1e9


def _error(message: str) -> SpecError:
    return SpecError(message)


def parse_go_duration(text: str, *, field: str) -> float:
    """Seconds in a Go duration string ("300ms", "1h30m", "1.5s"), as time.ParseDuration reads it.

    A sign is accepted as Go accepts it, but a negative duration is refused: nothing here
    can last less than nothing. "0" alone is zero, as in Go; any other number needs a unit.
    """
    if not isinstance(text, str):
        raise _error(f'{field}: must be a duration string like "30s" or "1m30s", got {text!r}')
    raw = text
    text = text.strip()
    if len(text) > 64:
        raise _error(f"{field}: duration is longer than 64 characters")
    negative = text.startswith("-")
    if text[:1] in ("+", "-"):
        text = text[1:]
    if text == "0":
        return 0.0
    total = units_total(text)
    if total is None:
        raise _error(
            f"{field}: invalid duration {_quote(raw)}; "
            'use a number with a unit: ns, us, ms, s, m, h (e.g. "300ms", "1m30s")'
        )
    if negative and total > 0:
        raise _error(f"{field}: must not be negative, got {_quote(raw)}")
    if not math.isfinite(total) or total > MAX_GO_DURATION:
        raise _error(f"{field}: duration {_quote(raw)} is too long")
    return total


def _quote(value: object) -> str:
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: either a fixed interval (``every``) or cron fields."""

    text: str
    every: float | None = None
    minutes: tuple[int, ...] = ()
    hours: tuple[int, ...] = ()
    days: frozenset[int] = frozenset()
    months: tuple[int, ...] = ()
    weekdays: frozenset[int] = frozenset()
    # robfig/cron's "star bit": a bare * (or */1, ?) in the day fields changes OR to AND.
    days_star: bool = True
    weekdays_star: bool = True

    @classmethod
    def parse(cls, text: str, *, field: str = "schedule") -> Schedule:
        if not isinstance(text, str):
            raise _error(f'{field}: must be a cron string like "*/5 * * * *", got {text!r}')
        if len(text) > MAX_CRON_LENGTH:
            raise _error(f"{field}: longer than {MAX_CRON_LENGTH} characters")
        spec = text.strip()
        if not spec:
            raise _error(f"{field}: empty schedule")
        if spec.startswith(("CRON_TZ=", "TZ=")):
            zone, _, rest = spec.partition(" ")
            if zone.split("=", 1)[1] not in ("UTC", "Etc/UTC"):
                raise _error(
                    f"{field}: time zone {_quote(zone)} is not supported; schedules run in UTC"
                )
            spec = rest.strip()
        if spec.startswith("@every"):
            rest = spec[len("@every") :]
            if not rest[:1].isspace() or not rest.strip():
                raise _error(f'{field}: "@every" needs a duration, like "@every 10m"')
            seconds = parse_go_duration(rest.strip(), field=field)
            if seconds < 1:
                raise _error(f"{field}: @every needs at least 1s, got {_quote(rest.strip())}")
            # robfig/cron dropped fractions of a second from the interval.
            return cls(text=text, every=float(math.floor(seconds)))
        if spec.startswith("@"):
            expanded = _DESCRIPTORS.get(spec.lower())
            if expanded is None:
                raise _error(
                    f"{field}: unknown descriptor {_quote(spec)}; known: "
                    f"{', '.join(_DESCRIPTORS)}, @every <duration>"
                )
            spec = expanded
        parts = spec.split()
        if len(parts) != 5:
            raise _error(
                f"{field}: expected 5 fields (minute hour day-of-month month day-of-week), "
                f"found {len(parts)} in {_quote(text)}"
            )
        sets: list[set[int]] = []
        stars: list[bool] = []
        for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True):
            values, star = _parse_field(part, name, low, high, names, field)
            sets.append(values)
            stars.append(star)
        schedule = cls(
            text=text,
            minutes=tuple(sorted(sets[0])),
            hours=tuple(sorted(sets[1])),
            days=frozenset(sets[2]),
            months=tuple(sorted(sets[3])),
            weekdays=frozenset(sets[4]),
            days_star=stars[2],
            weekdays_star=stars[4],
        )
        if schedule._only_day_of_month() and not any(
            day <= _MAX_DAYS[month] for month in schedule.months for day in schedule.days
        ):
            raise _error(f"{field}: {_quote(text)} names a date that never occurs")
        return schedule

    def _only_day_of_month(self) -> bool:
        """True when only the day-of-month field decides which days match."""
        return self.weekdays_star and not self.days_star

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        dom = day in self.days
        # Python counts Monday as 0; cron counts Sunday as 0.
        dow = (calendar.weekday(year, month, day) + 1) % 7 in self.weekdays
        if self.days_star or self.weekdays_star:
            return dom and dow
        return dom or dow

    def next_after(self, t: float) -> float:
        """The first time this schedule fires strictly after ``t`` (UTC epoch seconds)."""
        if not math.isfinite(t):
            raise ValueError(f"time must be a finite number of seconds, got {t!r}")
        if self.every is not None:
            return float(math.floor(t) + self.every)
        start = datetime.fromtimestamp((math.floor(t) // 60 + 1) * 60, UTC)
        year, month, day = start.year, start.month, start.day
        hour, minute = start.hour, start.minute
        last_year = year + SEARCH_YEARS
        while year <= last_year:
            if month not in self.months:
                month, year = _next_in(self.months, month, year)
                day, hour, minute = 1, 0, 0
                continue
            if day > calendar.monthrange(year, month)[1]:
                month, year = (1, year + 1) if month == 12 else (month + 1, year)
                day, hour, minute = 1, 0, 0
                continue
            if not self._day_matches(year, month, day):
                day, hour, minute = day + 1, 0, 0
                continue
            if hour not in self.hours:
                index = bisect.bisect_right(self.hours, hour)
                if index == len(self.hours):
                    day, hour, minute = day + 1, 0, 0
                else:
                    hour, minute = self.hours[index], 0
                continue
            if minute not in self.minutes:
                index = bisect.bisect_right(self.minutes, minute)
                if index == len(self.minutes):
                    hour, minute = hour + 1, 0
                    if hour == 24:
                        day, hour = day + 1, 0
                else:
                    minute = self.minutes[index]
                continue
            return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()
        raise _error(f"schedule: {_quote(self.text)} does not fire within {SEARCH_YEARS} years")


def _next_in(months: tuple[int, ...], month: int, year: int) -> tuple[int, int]:
    index = bisect.bisect_right(months, month)
    if index == len(months):
        return months[0], year + 1
    return months[index], year


def _parse_field(
    text: str, name: str, low: int, high: int, names: dict[str, int], field: str
) -> tuple[set[int], bool]:
    values: set[int] = set()
    star = False
    for item in text.split(","):
        bits, item_star = _parse_range(item, name, low, high, names, field)
        values |= bits
        star = star or item_star
    return values, star


def _parse_range(
    item: str, name: str, low: int, high: int, names: dict[str, int], field: str
) -> tuple[set[int], bool]:
    range_part, slash, step_text = item.partition("/")
    if "/" in step_text:
        raise _error(f"{field}: too many '/' in {name} {_quote(item)}")
    star = False
    if range_part in ("*", "?"):
        start, end, star = low, high, True
    else:
        bounds = range_part.split("-")
        if len(bounds) > 2:
            raise _error(f"{field}: too many '-' in {name} {_quote(item)}")
        start = _value(bounds[0], name, names, field)
        end = _value(bounds[1], name, names, field) if len(bounds) == 2 else start
        if slash and len(bounds) == 1:
            end = high  # "N/step" means from N to the maximum
    step = 1
    if slash:
        if not (step_text.isascii() and step_text.isdigit()) or len(step_text) > 4:
            raise _error(f"{field}: step in {name} {_quote(item)} must be a positive number")
        step = int(step_text)
        if step == 0:
            raise _error(f"{field}: step in {name} {_quote(item)} must be a positive number")
        if step > 1:
            star = False
    if start < low or end > high:
        raise _error(f"{field}: {name} {_quote(item)} is outside {low}-{high}")
    if start > end:
        raise _error(f"{field}: {name} range {_quote(item)} starts after it ends")
    return set(range(start, end + 1, step)), star


def _value(text: str, name: str, names: dict[str, int], field: str) -> int:
    number = names.get(text.lower())
    if number is not None:
        return number
    if not (text.isascii() and text.isdigit()) or len(text) > 4:
        raise _error(
            f"{field}: {name} {_quote(text)} is not a number"
            + (f" or a name ({', '.join(names)})" if names else "")
        )
    return int(text)
