//! Recovery point objectives: when the newest group a site holds of a plan is too old. A
//! pure function of that group's age, the plan's RPO and the time, table-tested.
//!
//! A plan's RPO is its `rpo_secs`, or by default its schedule's interval. The group that
//! will next restore the recovery point is taken at a slot and arrives after its transfer,
//! so a violation is raised only once the newest group is older than the RPO plus a grace
//! for that transfer: a quarter of the RPO, at most an hour (an hourly plan: 75 minutes).
//! A site that never got a group is in violation once that much time has passed since the
//! first attempt to send it one.

use crate::policy::schedule::Every;

/// A schedule's interval, seconds (a month counted as 31 days).
pub fn interval_secs(every: Every) -> u64 {
    match every {
        Every::Hourly => 3600,
        Every::Daily => 86_400,
        Every::Weekly => 7 * 86_400,
        Every::Monthly => 31 * 86_400,
    }
}

/// The RPO in force: `set`, else the interval of schedule `every` (a day when it does not
/// parse).
pub fn rpo_secs(set: Option<u64>, every: &str) -> u64 {
    set.unwrap_or_else(|| every.parse().map_or(86_400, interval_secs))
}

/// The grace allowed past the RPO for the transfer under way.
pub fn grace_secs(rpo: u64) -> u64 {
    (rpo / 4).min(3600)
}

/// Where a site's recovery point stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub violated: bool,
    /// Seconds since the newest group was taken, if there is one.
    pub age_secs: Option<u64>,
}

/// The standing at `now` (Unix seconds) of a site whose newest group was taken at `newest`,
/// or which has none since the first attempt at `since`.
pub fn standing(newest: Option<i64>, since: Option<i64>, rpo: u64, now: i64) -> Standing {
    let limit = (rpo + grace_secs(rpo)) as i64;
    match (newest, since) {
        (Some(t), _) => {
            let age = (now - t).max(0);
            Standing {
                violated: age > limit,
                age_secs: Some(age as u64),
            }
        }
        (None, Some(s)) => Standing {
            violated: now - s > limit,
            age_secs: None,
        },
        (None, None) => Standing {
            violated: false,
            age_secs: None,
        },
    }
}

/// Whether an alarm stored as `stored` (none: never raised) must be written as `now`:
/// `Some(state)` on a change (a violation raised or cleared), `None` otherwise.
pub fn change(stored: Option<bool>, now: bool) -> Option<bool> {
    match (stored, now) {
        (None, false) => None,
        (Some(s), n) if s == n => None,
        (_, n) => Some(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpo_defaults_to_the_interval() {
        assert_eq!(rpo_secs(None, "hourly"), 3600);
        assert_eq!(rpo_secs(None, "weekly"), 604_800);
        assert_eq!(rpo_secs(Some(90), "hourly"), 90);
        assert_eq!(rpo_secs(None, "nonsense"), 86_400);
        assert_eq!(grace_secs(3600), 900);
        assert_eq!(grace_secs(86_400), 3600);
        assert_eq!(grace_secs(20), 5);
    }

    #[test]
    fn standing_table() {
        let now = 1_000_000;
        // (newest group's time, first attempt, rpo, violated, age)
        let cases = [
            (Some(now - 3600), None, 3600, false, Some(3600)),
            (Some(now - 4500), None, 3600, false, Some(4500)), // within the grace
            (Some(now - 4501), None, 3600, true, Some(4501)),
            (Some(now + 5), None, 3600, false, Some(0)), // clock skew
            (None, Some(now - 4501), 3600, true, None),
            (None, Some(now - 60), 3600, false, None),
            (None, None, 1, false, None),
            (Some(now - 26), Some(now - 9999), 20, true, Some(26)),
            (Some(now - 25), Some(now - 9999), 20, false, Some(25)),
        ];
        for (newest, since, rpo, violated, age) in cases {
            let s = standing(newest, since, rpo, now);
            assert_eq!(
                s,
                Standing {
                    violated,
                    age_secs: age
                },
                "{newest:?} {since:?} {rpo}"
            );
        }
    }

    #[test]
    fn alarms_change_once_per_state() {
        assert_eq!(change(None, false), None);
        assert_eq!(change(None, true), Some(true));
        assert_eq!(change(Some(true), true), None);
        assert_eq!(change(Some(true), false), Some(false));
        assert_eq!(change(Some(false), false), None);
        assert_eq!(change(Some(false), true), Some(true));
    }
}
