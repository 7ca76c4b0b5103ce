//! What a recovery from a mirror group makes, and under which names: pure functions of the
//! group, the request and what the site holds, table-tested.
//!
//! A rebuild makes, for each chosen object of the group, a new object with the target's
//! names: the object's own name (or as `names` maps it, or with `suffix`), its volumes new
//! volumes on the nodes that hold the mirrors, named after the source volumes (`names`
//! maps `node/volume` of the source, `suffix` is appended). Two new volumes that would
//! share a name on one node take their source node's name as a prefix. A name the site
//! already has is refused before anything is made, naming it and what to pass instead.

use std::collections::{BTreeMap, BTreeSet};

use ferry_wire::task::SnapshotRecord;
use ferry_wire::Name;

use crate::policy::model::{FieldError, Object, VolumeRef};

/// One snapshot of the group to recover from: where it is (the mirror), its root, and the
/// source volume it mirrors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceVolume {
    pub at: VolumeRef,
    pub root: String,
    pub origin: VolumeRef,
}

/// What a recovery covers: the objects (as recorded with the group, their volumes the
/// mirrors) and every volume they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recoverable {
    pub objects: Vec<Object>,
    pub volumes: Vec<SourceVolume>,
}

/// Why a request cannot be done: bad input (400) or a name the site has already (409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid(FieldError),
    Taken(String),
}

fn bad(field: &str, problem: String) -> Refusal {
    Refusal::Invalid(FieldError {
        field: field.into(),
        problem,
    })
}

/// The objects of a group (`objects`, their volumes its snapshots' volumes) named in
/// `select` (all when `None`), with the snapshots they need. `origin_of` tells which source
/// volume a mirror mirrors (one it does not know keeps its own name as origin).
pub fn recoverable(
    snapshots: &[(Name, SnapshotRecord)],
    objects: &[Object],
    origin_of: impl Fn(&VolumeRef) -> Option<VolumeRef>,
    select: Option<&[Name]>,
) -> Result<Recoverable, Refusal> {
    let chosen: Vec<&Object> = match select {
        None => objects.iter().collect(),
        Some(names) => {
            let mut seen = BTreeSet::new();
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    if !seen.insert(n) {
                        return Err(bad(
                            &format!("objects[{i}]"),
                            format!("{n} is listed twice"),
                        ));
                    }
                    objects.iter().find(|o| &o.name == n).ok_or_else(|| {
                        bad(
                            &format!("objects[{i}]"),
                            format!("the group has no object named {n}"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    if chosen.is_empty() {
        return Err(bad(
            "objects",
            "the group holds no object to recover".into(),
        ));
    }
    let mut volumes: Vec<SourceVolume> = Vec::new();
    for o in &chosen {
        for v in o.protected_volumes() {
            let Some((_, snap)) = snapshots
                .iter()
                .find(|(node, s)| *node == v.node && s.volume == v.volume)
            else {
                return Err(bad(
                    "group",
                    format!(
                        "object {} needs {}/{}, which the group has no snapshot of",
                        o.name, v.node, v.volume
                    ),
                ));
            };
            if volumes.iter().any(|x| x.at == *v) {
                continue;
            }
            let origin = origin_of(v).unwrap_or_else(|| v.clone());
            volumes.push(SourceVolume {
                at: v.clone(),
                root: snap.root.clone(),
                origin,
            });
        }
    }
    Ok(Recoverable {
        objects: chosen.into_iter().cloned().collect(),
        volumes,
    })
}

/// What a recovery makes: a new volume per [`Recoverable::volumes`] (in order), and per
/// object its name in the group and the new object.
pub type Made = (Vec<Name>, Vec<(Name, Object)>);

/// How a rebuild names what it makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Naming {
    /// Appended to every name not in `names`.
    pub suffix: String,
    /// Object name -> new name; source `node/volume` -> new volume name.
    pub names: BTreeMap<String, String>,
}

/// A rebuild's new volumes (one per [`Recoverable::volumes`], in order) and new objects (per
/// object: its name in the group and the new object). `object_taken` and `volume_taken` say
/// what the site has already.
pub fn name_rebuild(
    r: &Recoverable,
    naming: &Naming,
    object_taken: impl Fn(&Name) -> bool,
    volume_taken: impl Fn(&VolumeRef) -> bool,
) -> Result<Made, Refusal> {
    let field = |key: &str| {
        if naming.names.contains_key(key) {
            format!("names.{key}")
        } else {
            "suffix".to_string()
        }
    };
    let named = |key: &str, base: &str| -> Result<Name, Refusal> {
        let s = match naming.names.get(key) {
            Some(n) => n.clone(),
            None => format!("{base}{}", naming.suffix),
        };
        Name::new(&s).map_err(|e| bad(&field(key), format!("{s:?} is not a valid name: {e}")))
    };
    for key in naming.names.keys() {
        let known = r.objects.iter().any(|o| o.name.as_str() == key)
            || r.volumes
                .iter()
                .any(|v| format!("{}/{}", v.origin.node, v.origin.volume) == *key);
        if !known {
            return Err(bad(
                &format!("names.{key}"),
                "names no object of the rebuild and no source NODE/VOLUME of its volumes".into(),
            ));
        }
    }
    // Volumes: the source volume's name; a clash on one node takes the source node too.
    let mut volumes = Vec::new();
    for v in &r.volumes {
        let key = format!("{}/{}", v.origin.node, v.origin.volume);
        volumes.push(named(&key, v.origin.volume.as_str())?);
    }
    let clashes: Vec<bool> = (0..volumes.len())
        .map(|i| {
            (0..volumes.len()).any(|j| {
                j != i && volumes[j] == volumes[i] && r.volumes[j].at.node == r.volumes[i].at.node
            })
        })
        .collect();
    for (i, clash) in clashes.into_iter().enumerate() {
        let key = format!(
            "{}/{}",
            r.volumes[i].origin.node, r.volumes[i].origin.volume
        );
        if clash && !naming.names.contains_key(&key) {
            let o = &r.volumes[i].origin;
            volumes[i] = named(&key, &format!("{}.{}", o.node, o.volume))?;
        }
    }
    for i in 0..volumes.len() {
        let at = |k: usize| VolumeRef {
            node: r.volumes[k].at.node.clone(),
            volume: volumes[k].clone(),
        };
        if (0..i).any(|j| at(j) == at(i)) {
            return Err(bad(
                "names",
                format!(
                    "two volumes would both be {}/{}: map them apart in names",
                    at(i).node,
                    at(i).volume
                ),
            ));
        }
        if volume_taken(&at(i)) {
            let key = format!(
                "{}/{}",
                r.volumes[i].origin.node, r.volumes[i].origin.volume
            );
            return Err(Refusal::Taken(format!(
                "{}: node {} has a volume named {} already; pass a suffix (--suffix -dr) or map {key} in names",
                field(&key),
                at(i).node,
                at(i).volume
            )));
        }
    }
    let mut objects = Vec::new();
    let mut seen = BTreeSet::new();
    for o in &r.objects {
        let name = named(o.name.as_str(), o.name.as_str())?;
        if !seen.insert(name.clone()) {
            return Err(bad(
                "names",
                format!("two objects would both be named {name}"),
            ));
        }
        if object_taken(&name) {
            return Err(Refusal::Taken(format!(
                "{}: an object named {name} exists here already; pass a suffix (--suffix -dr) or map {} in names",
                field(o.name.as_str()),
                o.name
            )));
        }
        let new = o
            .renamed(name, |v| {
                let i = r
                    .volumes
                    .iter()
                    .position(|x| x.at == *v)
                    .ok_or_else(|| format!("{}/{} is not in the rebuild", v.node, v.volume))?;
                Ok(VolumeRef {
                    node: v.node.clone(),
                    volume: volumes[i].clone(),
                })
            })
            .map_err(|e| bad("objects", e))?;
        objects.push((o.name.clone(), new));
    }
    Ok((volumes, objects))
}

/// A drill's scratch volumes (`<drill id>-<n>`, never a user's name) and its objects as they
/// would be rebuilt (never recorded).
pub fn name_scratch(r: &Recoverable, drill: &Name) -> Made {
    let volumes: Vec<Name> = (0..r.volumes.len())
        .map(|i| Name::new(&format!("{drill}-{i}")).unwrap_or_else(|_| drill.clone()))
        .collect();
    let objects = r
        .objects
        .iter()
        .filter_map(|o| {
            let new = o
                .renamed(o.name.clone(), |v| {
                    let i = r
                        .volumes
                        .iter()
                        .position(|x| x.at == *v)
                        .ok_or_else(|| "not in the drill".to_string())?;
                    Ok(VolumeRef {
                        node: v.node.clone(),
                        volume: volumes[i].clone(),
                    })
                })
                .ok()?;
            Some((o.name.clone(), new))
        })
        .collect();
    (volumes, objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{DiskRole, Nic, ObjectKind, VmDisk};

    fn n(s: &str) -> Name {
        Name::new(s).expect("name")
    }
    fn vr(node: &str, v: &str) -> VolumeRef {
        VolumeRef {
            node: n(node),
            volume: n(v),
        }
    }
    fn snap(node: &str, v: &str, root: &str) -> (Name, SnapshotRecord) {
        (
            n(node),
            SnapshotRecord {
                volume: n(v),
                snapshot: n("g1"),
                size: 1 << 20,
                root: root.into(),
                bytes_read: 0,
                manifest_ms: 0,
            },
        )
    }
    /// Which source volume a mirror of site-a's is: `site-a.<node>.<volume>`.
    fn place(v: &VolumeRef) -> Option<VolumeRef> {
        let mut parts = v.volume.as_str().strip_prefix("site-a.")?.splitn(2, '.');
        Some(vr(parts.next()?, parts.next()?))
    }

    /// A mirror group at site-b of site-a's VM (disks on a1 and a2, both mirrored on b1)
    /// and LUN (a1, mirrored on b2).
    fn group() -> (Vec<(Name, SnapshotRecord)>, Vec<Object>) {
        let vm = Object {
            name: n("web"),
            kind: ObjectKind::Vm {
                vcpus: 2,
                memory_mib: 2048,
                disks: vec![
                    VmDisk {
                        volume: vr("b1", "site-a.a1.disk"),
                        role: DiskRole::Disk,
                    },
                    VmDisk {
                        volume: vr("b1", "site-a.a2.disk"),
                        role: DiskRole::Disk,
                    },
                ],
                nics: vec![Nic {
                    switch: n("vsw-b"),
                    mac: None,
                }],
            },
        };
        let lun = Object {
            name: n("db"),
            kind: ObjectKind::IscsiLun {
                target_iqn: "iqn.2026-11.com.example:db".into(),
                lun: 3,
                volume: vr("b2", "site-a.a1.lun0"),
            },
        };
        (
            vec![
                snap("b1", "site-a.a1.disk", "r1"),
                snap("b1", "site-a.a2.disk", "r2"),
                snap("b2", "site-a.a1.lun0", "r3"),
            ],
            vec![vm, lun],
        )
    }

    fn volumes_of(o: &Object) -> Vec<String> {
        o.protected_volumes()
            .iter()
            .map(|v| format!("{}/{}", v.node, v.volume))
            .collect()
    }

    #[test]
    fn what_a_rebuild_covers() {
        let (snaps, objects) = group();
        let all = recoverable(&snaps, &objects, place, None).expect("all");
        assert_eq!(all.objects.len(), 2);
        assert_eq!(all.volumes.len(), 3);
        assert_eq!(all.volumes[2].origin, vr("a1", "lun0"));
        assert_eq!(all.volumes[1].root, "r2");
        let one = recoverable(&snaps, &objects, place, Some(&[n("db")])).expect("one");
        assert_eq!(one.volumes.len(), 1);
        let cases: Vec<(Vec<Name>, &str)> = vec![
            (vec![n("nope")], "objects[0]"),
            (vec![n("db"), n("db")], "objects[1]"),
            (vec![], "objects"),
        ];
        for (select, field) in cases {
            match recoverable(&snaps, &objects, place, Some(&select)) {
                Err(Refusal::Invalid(e)) => assert_eq!(e.field, field, "{select:?}"),
                other => panic!("{select:?}: {other:?}"),
            }
        }
        // A group taken before the object's second disk joined cannot rebuild it.
        match recoverable(&snaps[..1], &objects, place, Some(&[n("web")])) {
            Err(Refusal::Invalid(e)) => assert!(e.problem.contains("site-a.a2.disk"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rebuilt_names_table() {
        let (snaps, objects) = group();
        let r = recoverable(&snaps, &objects, place, None).expect("all");
        let free = |_: &Name| false;
        let free_v = |_: &VolumeRef| false;
        // Source names; the two `disk`s on b1 take their source node's name.
        let (vols, objs) = name_rebuild(&r, &Naming::default(), free, free_v).expect("names");
        assert_eq!(
            vols.iter().map(Name::as_str).collect::<Vec<_>>(),
            ["a1.disk", "a2.disk", "lun0"]
        );
        assert_eq!(objs[0].1.name.as_str(), "web");
        assert_eq!(volumes_of(&objs[0].1), ["b1/a1.disk", "b1/a2.disk"]);
        assert_eq!(volumes_of(&objs[1].1), ["b2/lun0"]);
        // The VM is the mirror's, with its volumes replaced: vCPUs, memory, switches kept.
        match (&objs[0].1.kind, &objects[0].kind) {
            (
                ObjectKind::Vm {
                    vcpus,
                    memory_mib,
                    nics,
                    ..
                },
                ObjectKind::Vm {
                    vcpus: v0,
                    memory_mib: m0,
                    nics: n0,
                    ..
                },
            ) => assert!(vcpus == v0 && memory_mib == m0 && nics == n0),
            other => panic!("{other:?}"),
        }
        // A suffix goes on everything not mapped; a map wins.
        let naming = Naming {
            suffix: "-dr".into(),
            names: [
                ("db".to_string(), "db-restored".to_string()),
                ("a1/lun0".to_string(), "lun-x".to_string()),
            ]
            .into(),
        };
        let (vols, objs) = name_rebuild(&r, &naming, free, free_v).expect("names");
        assert_eq!(
            vols.iter().map(Name::as_str).collect::<Vec<_>>(),
            ["a1.disk-dr", "a2.disk-dr", "lun-x"]
        );
        assert_eq!(objs[0].1.name.as_str(), "web-dr");
        assert_eq!(objs[1].1.name.as_str(), "db-restored");
        // Refusals: taken names (409) and bad ones (400), naming what to change.
        let taken = name_rebuild(&r, &Naming::default(), |o| o.as_str() == "db", free_v);
        assert!(
            matches!(&taken, Err(Refusal::Taken(m)) if m.contains("object named db") && m.contains("--suffix")),
            "{taken:?}"
        );
        let taken = name_rebuild(&r, &Naming::default(), free, |v| v == &vr("b2", "lun0"));
        assert!(
            matches!(&taken, Err(Refusal::Taken(m)) if m.contains("node b2 has a volume named lun0")),
            "{taken:?}"
        );
        let cases: Vec<(Naming, &str)> = vec![
            (
                Naming {
                    suffix: "/x".into(),
                    names: BTreeMap::new(),
                },
                "suffix",
            ),
            (
                Naming {
                    suffix: String::new(),
                    names: [("ghost".to_string(), "x".to_string())].into(),
                },
                "names.ghost",
            ),
            (
                Naming {
                    suffix: String::new(),
                    names: [("a1/disk".to_string(), "..".to_string())].into(),
                },
                "names.a1/disk",
            ),
            (
                Naming {
                    suffix: String::new(),
                    names: [
                        ("a1/disk".to_string(), "same".to_string()),
                        ("a2/disk".to_string(), "same".to_string()),
                    ]
                    .into(),
                },
                "names",
            ),
            (
                Naming {
                    suffix: String::new(),
                    names: [("db".to_string(), "web".to_string())].into(),
                },
                "names",
            ),
        ];
        for (naming, field) in cases {
            match name_rebuild(&r, &naming, free, free_v) {
                Err(Refusal::Invalid(e)) => assert_eq!(e.field, field, "{naming:?}: {e}"),
                other => panic!("{naming:?}: {other:?}"),
            }
        }
        // A drill's scratch names are its own.
        let (vols, objs) = name_scratch(&r, &n("dr17"));
        assert_eq!(
            vols.iter().map(Name::as_str).collect::<Vec<_>>(),
            ["dr17-0", "dr17-1", "dr17-2"]
        );
        assert_eq!(volumes_of(&objs[1].1), ["b2/dr17-2"]);
    }
}
