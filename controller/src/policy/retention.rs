//! Which snapshot groups a prune removes: a pure function of the groups, the retention count
//! and what must stay, table-tested (in the spirit of zrepl's pruning policy).
//!
//! The newest `keep` complete groups stay. Older ones go, except those pinned: the base of
//! the next incremental replication to a target, or a group a rollback or rebuild is using.
//! Incomplete groups (a run still taking them, or one that failed) never count toward the
//! `keep` newest and are never pruned here; the run that owns them cleans them up. A
//! retention change simply applies at the next prune.

/// What the policy needs to know of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo<'a> {
    pub name: &'a str,
    /// When it was taken (any monotonic order; ties broken by name).
    pub taken: i64,
    pub complete: bool,
    pub pinned: bool,
}

/// The names of the groups to delete, oldest first.
pub fn prune<'a>(groups: &[GroupInfo<'a>], keep: usize) -> Vec<&'a str> {
    let mut complete: Vec<&GroupInfo<'a>> = groups.iter().filter(|g| g.complete).collect();
    complete.sort_by(|a, b| (b.taken, b.name).cmp(&(a.taken, a.name)));
    let mut out: Vec<&GroupInfo<'a>> = complete
        .into_iter()
        .skip(keep)
        .filter(|g| !g.pinned)
        .collect();
    out.sort_by(|a, b| (a.taken, a.name).cmp(&(b.taken, b.name)));
    out.into_iter().map(|g| g.name).collect()
}

/// The groups local retention must keep for a backup plan's targets: every group whose
/// snapshot some mirror at a target still holds as its newest (`held`: target -> those
/// groups, one per volume) is the base of that volume's next transfer. A target this run
/// reached (`reached`) holds `this` on every volume now. A run that reached a target only
/// in part leaves some volumes on an older base: those stay pinned too, so no volume is
/// ever sent in full again because its base was pruned.
pub fn target_bases<'a>(
    held: &[(&'a str, Vec<&'a str>)],
    reached: impl Fn(&str) -> bool,
    this: &'a str,
) -> Vec<&'a str> {
    let mut out: Vec<&'a str> = held
        .iter()
        .filter(|(t, _)| !reached(t))
        .flat_map(|(_, g)| g.iter().copied())
        .collect();
    out.push(this);
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, taken: i64) -> GroupInfo<'_> {
        GroupInfo {
            name,
            taken,
            complete: true,
            pinned: false,
        }
    }

    #[test]
    fn prune_table() {
        let pinned = |mut x: GroupInfo<'static>| {
            x.pinned = true;
            x
        };
        let incomplete = |mut x: GroupInfo<'static>| {
            x.complete = false;
            x
        };
        let cases: Vec<(Vec<GroupInfo<'static>>, usize, Vec<&str>)> = vec![
            (vec![], 3, vec![]),
            (vec![g("a", 1), g("b", 2)], 3, vec![]),
            (vec![g("a", 1), g("b", 2), g("c", 3)], 3, vec![]),
            // N+2 groups with keep N: the two oldest go, oldest first.
            (
                vec![g("c", 3), g("a", 1), g("e", 5), g("b", 2), g("d", 4)],
                3,
                vec!["a", "b"],
            ),
            // keep 1.
            (vec![g("a", 1), g("b", 2), g("c", 3)], 1, vec!["a", "b"]),
            // A pinned old group (the base of the next incremental) stays.
            (
                vec![pinned(g("a", 1)), g("b", 2), g("c", 3), g("d", 4)],
                2,
                vec!["b"],
            ),
            // Incomplete groups neither count nor go.
            (
                vec![
                    g("a", 1),
                    g("b", 2),
                    incomplete(g("c", 3)),
                    incomplete(g("d", 4)),
                ],
                2,
                vec![],
            ),
            (
                vec![g("a", 1), g("b", 2), g("c", 3), incomplete(g("d", 4))],
                2,
                vec!["a"],
            ),
            // Same time: the name breaks the tie, consistently.
            (vec![g("x", 1), g("y", 1), g("z", 1)], 2, vec!["x"]),
        ];
        for (groups, keep, want) in cases {
            assert_eq!(prune(&groups, keep), want, "{groups:?} keep {keep}");
        }
    }

    #[test]
    fn lowering_retention_applies_at_the_next_prune() {
        let groups: Vec<GroupInfo<'_>> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, n)| g(n, i as i64))
            .collect();
        assert!(prune(&groups, 5).is_empty());
        assert_eq!(prune(&groups, 2), ["a", "b", "c"]);
    }

    #[test]
    fn target_bases_table() {
        type Held = Vec<(&'static str, Vec<&'static str>)>;
        let cases: Vec<(Held, Vec<&str>, Vec<&str>)> = vec![
            // No target has anything yet: only this run's group.
            (vec![("b", vec![])], vec![], vec!["g5"]),
            // A target that missed this run keeps its old base pinned.
            (
                vec![("b", vec!["g3"]), ("c", vec!["g1"])],
                vec!["b"],
                vec!["g1", "g5"],
            ),
            // Reached by this run: its old base is free to go.
            (
                vec![("b", vec!["g3"]), ("c", vec!["g3"])],
                vec!["b", "c"],
                vec!["g5"],
            ),
            (
                vec![("b", vec!["g3"]), ("c", vec!["g3"])],
                vec![],
                vec!["g3", "g5"],
            ),
            // Reached in part before: each volume's own base stays.
            (
                vec![("b", vec!["g2", "g4", "g4"])],
                vec![],
                vec!["g2", "g4", "g5"],
            ),
        ];
        for (held, reached, want) in cases {
            let got = target_bases(&held, |t| reached.contains(&t), "g5");
            assert_eq!(got, want, "{held:?} reached {reached:?}");
        }
    }
}
