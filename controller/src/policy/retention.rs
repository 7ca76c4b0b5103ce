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
}
