//! When a protection plan runs: pure functions of a [`Schedule`] and instants, no clock, no
//! IO, table-tested (daylight-saving changes included).
//!
//! A schedule is a start (a wall-clock date and time in an IANA time zone), a period and an
//! optional end. Its *slots* are:
//! * hourly: the start instant plus whole hours (elapsed time: a DST change neither adds nor
//!   skips a run);
//! * daily / weekly: the start's wall-clock time on every day / every 7th day;
//! * monthly: the start's day of the month, on the last day of shorter months (a plan
//!   starting on 31 January runs on 28 or 29 February and again on 31 March).
//!
//! A wall-clock time that a spring-forward skips runs at the same distance after the gap
//! (02:30 becomes 03:30); one that a fall-back repeats runs at its first occurrence. Each
//! day, week or month has exactly one slot. A slot after the end does not exist: the plan
//! stops by itself. After downtime, [`due`] gives the latest missed slot only, so a plan
//! that missed ten slots runs once, not ten times.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// How often a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl std::str::FromStr for Every {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, ScheduleError> {
        match s {
            "hourly" => Ok(Every::Hourly),
            "daily" => Ok(Every::Daily),
            "weekly" => Ok(Every::Weekly),
            "monthly" => Ok(Every::Monthly),
            _ => Err(ScheduleError {
                field: "schedule.every",
                problem: format!("must be hourly, daily, weekly or monthly, not {s:?}"),
            }),
        }
    }
}

/// A schedule that failed validation: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub problem: String,
}

/// A validated schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    every: Every,
    start: DateTime,
    tz: TimeZone,
    start_at: Timestamp,
    end: Option<Timestamp>,
}

/// The years a schedule's start and end may be in.
pub const YEARS: std::ops::RangeInclusive<i16> = 2000..=2200;

impl Schedule {
    /// `start` is a wall-clock time like `2026-11-24T02:30` in `timezone` (an IANA name such
    /// as `Europe/Berlin`, or `UTC`); `end`, if any, is in the same zone and after the start.
    pub fn new(
        every: Every,
        start: &str,
        timezone: &str,
        end: Option<&str>,
    ) -> Result<Schedule, ScheduleError> {
        let tz = TimeZone::get(timezone).map_err(|_| ScheduleError {
            field: "schedule.timezone",
            problem: format!("unknown time zone {timezone:?} (an IANA name such as Europe/Berlin)"),
        })?;
        let civil = |field, s: &str| -> Result<DateTime, ScheduleError> {
            let d = s.parse::<DateTime>().map_err(|_| ScheduleError {
                field,
                problem: format!("{s:?} is not a date and time like 2026-11-24T02:30"),
            })?;
            if !YEARS.contains(&d.year()) {
                return Err(ScheduleError {
                    field,
                    problem: format!(
                        "{s:?}: the year must be {} to {}",
                        YEARS.start(),
                        YEARS.end()
                    ),
                });
            }
            Ok(d)
        };
        let start = civil("schedule.start", start)?;
        let start_at = at(&tz, start).ok_or_else(|| ScheduleError {
            field: "schedule.start",
            problem: "outside the supported range".into(),
        })?;
        let end = match end {
            None => None,
            Some(e) => {
                let e = civil("schedule.end", e)?;
                let t = at(&tz, e).ok_or_else(|| ScheduleError {
                    field: "schedule.end",
                    problem: "outside the supported range".into(),
                })?;
                if t <= start_at {
                    return Err(ScheduleError {
                        field: "schedule.end",
                        problem: "must be after the start".into(),
                    });
                }
                Some(t)
            }
        };
        Ok(Schedule {
            every,
            start,
            tz,
            start_at,
            end,
        })
    }

    /// The `k`-th slot (0 is the start), ignoring the end.
    fn slot(&self, k: i64) -> Option<Timestamp> {
        match self.every {
            Every::Hourly => self.start_at.checked_add(k.hours()).ok(),
            Every::Daily => self.civil_slot(k.days()),
            Every::Weekly => self.civil_slot((7 * k).days()),
            Every::Monthly => self.civil_slot(k.months()),
        }
    }

    fn civil_slot(&self, span: jiff::Span) -> Option<Timestamp> {
        // Date arithmetic keeps the start's day where the month has it and takes the
        // month's last day otherwise; always from the start, so 31 Jan -> 28 Feb -> 31 Mar.
        let date = self.start.date().checked_add(span).ok()?;
        at(&self.tz, date.to_datetime(self.start.time()))
    }

    /// A slot index at or before the one for `t` (slots are about this far apart).
    fn estimate(&self, t: Timestamp) -> i64 {
        let period: i64 = match self.every {
            Every::Hourly => 3600,
            Every::Daily => 86_400,
            Every::Weekly => 604_800,
            Every::Monthly => 2_629_746,
        };
        let elapsed = t.as_second() - self.start_at.as_second();
        (elapsed.div_euclid(period) - 2).max(0)
    }

    fn within_end(&self, t: Timestamp) -> Option<Timestamp> {
        match self.end {
            Some(e) if t > e => None,
            _ => Some(t),
        }
    }

    /// The first slot strictly after `after`, or `None` when the schedule has ended.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let mut k = self.estimate(after);
        loop {
            let t = self.slot(k)?;
            if t > after {
                return self.within_end(t);
            }
            k += 1;
        }
    }

    /// The last slot at or before `now` (and not after the end), if any.
    pub fn latest_at_or_before(&self, now: Timestamp) -> Option<Timestamp> {
        let now = match self.end {
            Some(e) if now > e => e,
            _ => now,
        };
        if now < self.start_at {
            return None;
        }
        let mut k = self.estimate(now);
        let mut last = None;
        loop {
            let t = self.slot(k)?;
            if t > now {
                return last;
            }
            last = Some(t);
            k += 1;
        }
    }

    /// Whether the schedule has ended by `now` (its plan stops by itself).
    pub fn ended(&self, now: Timestamp) -> bool {
        self.end.is_some_and(|e| now > e) && self.next_after(now).is_none()
    }

    pub fn every(&self) -> Every {
        self.every
    }
}

/// The civil time in `tz` as an instant: a skipped time moves forward by the gap, a repeated
/// one takes its first occurrence.
fn at(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    tz.to_ambiguous_zoned(dt)
        .compatible()
        .ok()
        .map(|z| z.timestamp())
}

/// The slot a plan should run for now, if any: the latest slot at or before `now` that is
/// later than its last run. After downtime this is the latest missed slot only.
pub fn due(s: &Schedule, last_run: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    let slot = s.latest_at_or_before(now)?;
    match last_run {
        Some(l) if l >= slot => None,
        _ => Some(slot),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn sched(every: Every, start: &str, tz: &str, end: Option<&str>) -> Schedule {
        Schedule::new(every, start, tz, end).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn next_slot_table() {
        use Every::*;
        // (every, start, zone, end, after, next)
        type Case<'a> = (
            Every,
            &'a str,
            &'a str,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            // Before the start: the start itself.
            (
                Daily,
                "2026-11-24T02:30",
                "UTC",
                None,
                "2026-01-01T00:00Z",
                Some("2026-11-24T02:30Z"),
            ),
            // Strictly after: a run at the slot time moves to the next day.
            (
                Daily,
                "2026-11-24T02:30",
                "UTC",
                None,
                "2026-11-24T02:30Z",
                Some("2026-11-25T02:30Z"),
            ),
            (
                Daily,
                "2026-11-24T02:30",
                "UTC",
                None,
                "2027-03-10T12:00Z",
                Some("2027-03-11T02:30Z"),
            ),
            // Berlin, spring forward on 2026-03-29 (02:00 -> 03:00): 02:30 does not exist
            // that day and runs at 03:30 CEST (01:30 UTC); the day before it is 02:30 CET.
            (
                Daily,
                "2026-03-01T02:30",
                "Europe/Berlin",
                None,
                "2026-03-28T12:00Z",
                Some("2026-03-29T01:30Z"),
            ),
            (
                Daily,
                "2026-03-01T02:30",
                "Europe/Berlin",
                None,
                "2026-03-27T12:00Z",
                Some("2026-03-28T01:30Z"),
            ),
            (
                Daily,
                "2026-03-01T02:30",
                "Europe/Berlin",
                None,
                "2026-03-29T12:00Z",
                Some("2026-03-30T00:30Z"),
            ),
            // Fall back on 2026-10-25 (03:00 -> 02:00): 02:30 happens twice; the first
            // (CEST, 00:30 UTC) is the slot, and there is no second run that day.
            (
                Daily,
                "2026-10-01T02:30",
                "Europe/Berlin",
                None,
                "2026-10-24T12:00Z",
                Some("2026-10-25T00:30Z"),
            ),
            (
                Daily,
                "2026-10-01T02:30",
                "Europe/Berlin",
                None,
                "2026-10-25T00:30Z",
                Some("2026-10-26T01:30Z"),
            ),
            // New York springs forward on 2026-03-08 at 02:00.
            (
                Daily,
                "2026-03-01T02:15",
                "America/New_York",
                None,
                "2026-03-08T00:00Z",
                Some("2026-03-08T07:15Z"),
            ),
            // Hourly is elapsed time: across the Berlin fall-back, one run per real hour.
            (
                Hourly,
                "2026-10-25T00:10",
                "Europe/Berlin",
                None,
                "2026-10-25T00:30Z",
                Some("2026-10-25T01:10Z"),
            ),
            (
                Hourly,
                "2026-10-25T00:10",
                "Europe/Berlin",
                None,
                "2026-10-25T01:10Z",
                Some("2026-10-25T02:10Z"),
            ),
            // Weekly keeps the weekday and the wall-clock time across DST.
            (
                Weekly,
                "2026-03-24T09:00",
                "Europe/Berlin",
                None,
                "2026-03-24T08:00Z",
                Some("2026-03-31T07:00Z"),
            ),
            // Monthly on the 31st: the last day of shorter months, back to the 31st after.
            (
                Monthly,
                "2026-01-31T01:00",
                "UTC",
                None,
                "2026-02-01T00:00Z",
                Some("2026-02-28T01:00Z"),
            ),
            (
                Monthly,
                "2026-01-31T01:00",
                "UTC",
                None,
                "2026-02-28T01:00Z",
                Some("2026-03-31T01:00Z"),
            ),
            (
                Monthly,
                "2026-01-31T01:00",
                "UTC",
                None,
                "2027-12-31T02:00Z",
                Some("2028-01-31T01:00Z"),
            ),
            (
                Monthly,
                "2028-01-31T01:00",
                "UTC",
                None,
                "2028-02-01T00:00Z",
                Some("2028-02-29T01:00Z"),
            ),
            // The end: a slot at the end still runs; nothing after it.
            (
                Daily,
                "2026-11-24T02:30",
                "UTC",
                Some("2026-11-26T02:30"),
                "2026-11-25T12:00Z",
                Some("2026-11-26T02:30Z"),
            ),
            (
                Daily,
                "2026-11-24T02:30",
                "UTC",
                Some("2026-11-26T02:30"),
                "2026-11-26T02:30Z",
                None,
            ),
            (
                Daily,
                "2026-11-24T02:30",
                "UTC",
                Some("2026-11-26T00:00"),
                "2026-11-25T12:00Z",
                None,
            ),
        ];
        for (every, start, tz, end, after, want) in cases {
            let s = sched(*every, start, tz, *end);
            assert_eq!(
                s.next_after(ts(after)),
                want.map(ts),
                "{every:?} from {start} {tz} (end {end:?}) after {after}"
            );
        }
    }

    #[test]
    fn slots_never_repeat_or_go_back() {
        // A year of daily and hourly slots in zones with DST: strictly increasing, one per
        // day for daily.
        for tz in ["Europe/Berlin", "America/New_York", "Australia/Sydney"] {
            let s = sched(Every::Daily, "2026-01-01T02:30", tz, None);
            let mut t = ts("2025-12-31T00:00Z");
            let mut days = std::collections::BTreeSet::new();
            for _ in 0..366 {
                let n = s.next_after(t).expect("next");
                assert!(n > t);
                let local = n.to_zoned(TimeZone::get(tz).expect("tz")).date();
                assert!(days.insert(local), "{tz}: two runs on {local}");
                t = n;
            }
            let h = sched(Every::Hourly, "2026-01-01T00:00", tz, None);
            let mut t = h.next_after(ts("2025-12-31T00:00Z")).expect("first");
            for _ in 0..(24 * 366) {
                let n = h.next_after(t).expect("next");
                assert_eq!(n.as_second() - t.as_second(), 3600, "{tz} at {t}");
                t = n;
            }
        }
    }

    #[test]
    fn missed_slots_run_once() {
        let s = sched(Every::Hourly, "2026-11-24T00:00", "UTC", None);
        // Down from 03:30 to 09:45: six slots missed, one run (for 09:00).
        let last = Some(ts("2026-11-24T03:00Z"));
        assert_eq!(
            due(&s, last, ts("2026-11-24T09:45Z")),
            Some(ts("2026-11-24T09:00Z"))
        );
        // Having run for 09:00, nothing is due until 10:00.
        let last = Some(ts("2026-11-24T09:00Z"));
        assert_eq!(due(&s, last, ts("2026-11-24T09:59Z")), None);
        assert_eq!(
            due(&s, last, ts("2026-11-24T10:00Z")),
            Some(ts("2026-11-24T10:00Z"))
        );
        // Never run, before the start: nothing; at the start: the start.
        assert_eq!(due(&s, None, ts("2026-11-23T23:00Z")), None);
        assert_eq!(
            due(&s, None, ts("2026-11-24T00:00Z")),
            Some(ts("2026-11-24T00:00Z"))
        );
        // After the end only the last slot before it can still be due, once.
        let e = sched(
            Every::Daily,
            "2026-11-24T02:00",
            "UTC",
            Some("2026-11-26T12:00"),
        );
        assert_eq!(
            due(&e, None, ts("2026-12-31T00:00Z")),
            Some(ts("2026-11-26T02:00Z"))
        );
        assert_eq!(
            due(&e, Some(ts("2026-11-26T02:00Z")), ts("2026-12-31T00:00Z")),
            None
        );
        assert!(e.ended(ts("2026-11-27T00:00Z")));
        assert!(!e.ended(ts("2026-11-25T00:00Z")));
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            (
                "2026-11-24T02:30",
                "Mars/Olympus",
                None,
                "schedule.timezone",
            ),
            ("24.11.2026 02:30", "UTC", None, "schedule.start"),
            ("2026-13-01T00:00", "UTC", None, "schedule.start"),
            ("0000-01-01T00:00", "UTC", None, "schedule.start"),
            ("1999-12-31T23:59", "UTC", None, "schedule.start"),
            ("9999-01-01T00:00", "UTC", None, "schedule.start"),
            (
                "2026-11-24T02:30",
                "UTC",
                Some("2201-01-01T00:00"),
                "schedule.end",
            ),
            ("2026-11-24T02:30", "UTC", Some("yesterday"), "schedule.end"),
            (
                "2026-11-24T02:30",
                "UTC",
                Some("2026-11-24T02:30"),
                "schedule.end",
            ),
            (
                "2026-11-24T02:30",
                "UTC",
                Some("2026-11-23T00:00"),
                "schedule.end",
            ),
        ];
        for (start, tz, end, field) in cases {
            let e = Schedule::new(Every::Daily, start, tz, *end).expect_err("must fail");
            assert_eq!(e.field, *field, "{start} {tz} {end:?}: {e}");
        }
        let e = "fortnightly".parse::<Every>().expect_err("must fail");
        assert_eq!(e.field, "schedule.every");
        assert_eq!("weekly".parse::<Every>(), Ok(Every::Weekly));
    }
}
