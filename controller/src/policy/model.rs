//! The inventory of protected objects and protection plans, with their validation: pure
//! functions, table-tested. Every validation error names the field (`objects[1]`,
//! `kind.disks[0].volume.node`) and says what is wrong with it.
//!
//! Objects (the seed's four kinds) refer to volumes on agents by node and volume name:
//! * a virtual volume: one volume;
//! * an iSCSI LUN: target IQN, LUN id, backing volume;
//! * an NFS file: export, path within it, backing volume;
//! * a VM: vCPUs, memory, disks (volumes; CD-ROM and shared disks are marked and excluded
//!   from protection), NICs on named virtual switches.

use ferry_wire::Name;
use serde::{Deserialize, Serialize};

use crate::policy::schedule::{Every, Schedule};

/// A validation failure: the field's path and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A volume on an agent.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct VolumeRef {
    pub node: Name,
    pub volume: Name,
}

/// What a VM disk is; only `Disk` is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiskRole {
    #[default]
    Disk,
    Cdrom,
    Shared,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    pub volume: VolumeRef,
    #[serde(default)]
    pub role: DiskRole,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The virtual switch the NIC is on (a backup plan needs it mapped at each target).
    pub switch: Name,
    #[serde(default)]
    #[schema(
        pattern = "^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$",
        example = "52:54:00:12:34:56"
    )]
    pub mac: Option<String>,
}

/// The four kinds of protected object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectKind {
    VirtualVolume {
        volume: VolumeRef,
    },
    IscsiLun {
        /// `iqn.YYYY-MM.reversed.domain[:anything]` (RFC 3720).
        #[schema(
            max_length = 223,
            pattern = "^iqn\\.[0-9]{4}-(0[1-9]|1[0-2])\\.[a-z0-9][a-z0-9.-]*(:[a-z0-9.:-]*)?$",
            example = "iqn.2026-11.com.example:db"
        )]
        target_iqn: String,
        #[schema(maximum = 16383)]
        lun: u32,
        volume: VolumeRef,
    },
    NfsFile {
        /// The export's absolute path, without `.` or `..`.
        #[schema(max_length = 1024, pattern = "^/", example = "/srv/nfs/vms")]
        export: String,
        /// The file's path within the export: relative, without empty, `.` or `..` parts.
        #[schema(max_length = 1024, pattern = "^[^/]", example = "web/disk0.img")]
        path: String,
        volume: VolumeRef,
    },
    Vm {
        #[schema(minimum = 1, maximum = 1024)]
        vcpus: u32,
        #[schema(minimum = 16, maximum = 67108864)]
        memory_mib: u64,
        /// At least one of role `disk`; CD-ROM and shared disks are not protected.
        #[schema(min_items = 1)]
        disks: Vec<VmDisk>,
        #[serde(default)]
        nics: Vec<Nic>,
    },
}

/// A protected object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Object {
    pub name: Name,
    pub kind: ObjectKind,
}

/// What the controller knows of one node's volumes (see [`Object::check_volumes_exist`]).
#[derive(Debug, Clone, Default)]
pub struct NodeVolumes {
    pub volumes: std::collections::BTreeSet<Name>,
    /// Whether the agent listed all its volumes.
    pub complete: bool,
}

/// Largest LUN id (SAM's flat addressing).
pub const MAX_LUN: u32 = 16383;

impl Object {
    /// The volumes a snapshot of this object covers (a VM's CD-ROM and shared disks are not).
    pub fn protected_volumes(&self) -> Vec<&VolumeRef> {
        match &self.kind {
            ObjectKind::VirtualVolume { volume }
            | ObjectKind::IscsiLun { volume, .. }
            | ObjectKind::NfsFile { volume, .. } => vec![volume],
            ObjectKind::Vm { disks, .. } => disks
                .iter()
                .filter(|d| d.role == DiskRole::Disk)
                .map(|d| &d.volume)
                .collect(),
        }
    }

    /// Every volume the object names (CD-ROM and shared disks too), with its field's path.
    pub fn volume_fields(&self) -> Vec<(String, &VolumeRef)> {
        match &self.kind {
            ObjectKind::VirtualVolume { volume }
            | ObjectKind::IscsiLun { volume, .. }
            | ObjectKind::NfsFile { volume, .. } => vec![("kind.volume".into(), volume)],
            ObjectKind::Vm { disks, .. } => disks
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("kind.disks[{i}].volume"), &d.volume))
                .collect(),
        }
    }

    /// Checks that every volume the object names is on a registered agent. `node` tells what
    /// is known of a node: `None` if no agent of that name registered, else its volumes and
    /// whether that list is complete (an agent lists a bounded number).
    pub fn check_volumes_exist(
        &self,
        node: impl Fn(&Name) -> Option<NodeVolumes>,
    ) -> Result<(), FieldError> {
        const AHEAD: &str = "or pass allow_missing=true to declare the object ahead of it";
        for (field, v) in self.volume_fields() {
            let Some(known) = node(&v.node) else {
                return Err(bad(
                    format!("{field}.node"),
                    format!(
                        "no agent named {} has registered with this controller; start its \
                         agent (ferry agents lists those that have), {AHEAD}",
                        v.node
                    ),
                ));
            };
            if known.complete && !known.volumes.contains(&v.volume) {
                return Err(bad(
                    field,
                    format!(
                        "agent {} has no volume named {}; create it first (ferry volumes \
                         create {} {} --size SIZE), {AHEAD}",
                        v.node, v.volume, v.node, v.volume
                    ),
                ));
            }
        }
        Ok(())
    }

    /// This object as its mirror at a target site, named `name`: each protected volume
    /// replaced by its mirror (`mirror_of`), CD-ROM and shared disks left out (they are not
    /// replicated), every NIC on its switch's counterpart in `switches`. The rest (vCPUs,
    /// memory, MACs, LUN ids, export paths) stays as it is. An error says what is missing.
    pub fn mirrored(
        &self,
        name: Name,
        mirror_of: impl Fn(&VolumeRef) -> Option<VolumeRef>,
        switches: &std::collections::BTreeMap<Name, Name>,
    ) -> Result<Object, String> {
        self.remapped(
            name,
            |v| mirror_of(v).ok_or_else(|| format!("{}/{} has no mirror", v.node, v.volume)),
            |sw| {
                switches
                    .get(sw)
                    .cloned()
                    .ok_or_else(|| format!("switch {sw} is not mapped"))
            },
        )
    }

    /// This object named `name`, its protected volumes replaced by `volume_of`'s (a
    /// rebuild's new volumes), its switches as they are.
    pub fn renamed(
        &self,
        name: Name,
        volume_of: impl Fn(&VolumeRef) -> Result<VolumeRef, String>,
    ) -> Result<Object, String> {
        self.remapped(name, volume_of, |sw| Ok(sw.clone()))
    }

    /// The object named `name` with every protected volume and switch replaced (CD-ROM and
    /// shared disks left out).
    fn remapped(
        &self,
        name: Name,
        m: impl Fn(&VolumeRef) -> Result<VolumeRef, String>,
        switch: impl Fn(&Name) -> Result<Name, String>,
    ) -> Result<Object, String> {
        let kind = match &self.kind {
            ObjectKind::VirtualVolume { volume } => {
                ObjectKind::VirtualVolume { volume: m(volume)? }
            }
            ObjectKind::IscsiLun {
                target_iqn,
                lun,
                volume,
            } => ObjectKind::IscsiLun {
                target_iqn: target_iqn.clone(),
                lun: *lun,
                volume: m(volume)?,
            },
            ObjectKind::NfsFile {
                export,
                path,
                volume,
            } => ObjectKind::NfsFile {
                export: export.clone(),
                path: path.clone(),
                volume: m(volume)?,
            },
            ObjectKind::Vm {
                vcpus,
                memory_mib,
                disks,
                nics,
            } => ObjectKind::Vm {
                vcpus: *vcpus,
                memory_mib: *memory_mib,
                disks: disks
                    .iter()
                    .filter(|d| d.role == DiskRole::Disk)
                    .map(|d| {
                        Ok(VmDisk {
                            volume: m(&d.volume)?,
                            role: DiskRole::Disk,
                        })
                    })
                    .collect::<Result<_, String>>()?,
                nics: nics
                    .iter()
                    .map(|n| {
                        Ok(Nic {
                            switch: switch(&n.switch)?,
                            mac: n.mac.clone(),
                        })
                    })
                    .collect::<Result<_, String>>()?,
            },
        };
        Ok(Object { name, kind })
    }

    /// The virtual switches the object's NICs use.
    pub fn switches(&self) -> Vec<&Name> {
        match &self.kind {
            ObjectKind::Vm { nics, .. } => nics.iter().map(|n| &n.switch).collect(),
            _ => Vec::new(),
        }
    }

    /// Checks everything names cannot check by themselves.
    pub fn validate(&self) -> Result<(), FieldError> {
        match &self.kind {
            ObjectKind::VirtualVolume { .. } => Ok(()),
            ObjectKind::IscsiLun {
                target_iqn, lun, ..
            } => {
                check_iqn(target_iqn).map_err(|p| bad("kind.target_iqn", p))?;
                if *lun > MAX_LUN {
                    return Err(bad(
                        "kind.lun",
                        format!("must be 0 to {MAX_LUN}, not {lun}"),
                    ));
                }
                Ok(())
            }
            ObjectKind::NfsFile { export, path, .. } => {
                check_abs_path(export).map_err(|p| bad("kind.export", p))?;
                check_rel_path(path).map_err(|p| bad("kind.path", p))
            }
            ObjectKind::Vm {
                vcpus,
                memory_mib,
                disks,
                nics,
            } => {
                if !(1..=1024).contains(vcpus) {
                    return Err(bad("kind.vcpus", format!("must be 1 to 1024, not {vcpus}")));
                }
                if !(16..=(64 << 20)).contains(memory_mib) {
                    return Err(bad(
                        "kind.memory_mib",
                        format!("must be 16 to {} MiB, not {memory_mib}", 64u64 << 20),
                    ));
                }
                if !disks.iter().any(|d| d.role == DiskRole::Disk) {
                    return Err(bad(
                        "kind.disks",
                        "a VM needs at least one disk that is not a CD-ROM or shared",
                    ));
                }
                let mut seen = std::collections::BTreeSet::new();
                for (i, d) in disks.iter().enumerate() {
                    if !seen.insert(&d.volume) {
                        return Err(bad(
                            format!("kind.disks[{i}].volume"),
                            format!("{}/{} is attached twice", d.volume.node, d.volume.volume),
                        ));
                    }
                }
                for (i, n) in nics.iter().enumerate() {
                    if let Some(mac) = &n.mac {
                        check_mac(mac).map_err(|p| bad(format!("kind.nics[{i}].mac"), p))?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// `iqn.YYYY-MM.reversed.domain[:anything]` (RFC 3720, 3.2.6.3.1).
fn check_iqn(iqn: &str) -> Result<(), String> {
    let want = || format!("{iqn:?} is not an IQN like iqn.2026-11.com.example:storage.lun1");
    if iqn.len() > 223 || !iqn.is_ascii() || iqn.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(want());
    }
    let rest = iqn.strip_prefix("iqn.").ok_or_else(want)?;
    let (date, rest) = rest.split_at_checked(7).ok_or_else(want)?;
    let b = date.as_bytes();
    let date_ok = b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..].iter().all(u8::is_ascii_digit)
        && (1..=12).contains(&date[5..].parse::<u8>().unwrap_or(0));
    let authority = rest.strip_prefix('.').ok_or_else(want)?;
    let naming = authority.split(':').next().unwrap_or_default();
    let naming_ok = !naming.is_empty()
        && naming
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    let all_ok = iqn
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    if date_ok && naming_ok && all_ok {
        Ok(())
    } else {
        Err(want())
    }
}

fn check_abs_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.len() > 1024 || p.chars().any(char::is_control) {
        return Err(format!("{p:?} must be an absolute path"));
    }
    if p.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("{p:?} must not contain . or .."));
    }
    Ok(())
}

fn check_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') || p.len() > 1024 || p.chars().any(char::is_control) {
        return Err(format!("{p:?} must be a path relative to the export"));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("{p:?} must not contain empty, . or .. parts"));
    }
    Ok(())
}

fn check_mac(m: &str) -> Result<(), String> {
    let parts: Vec<&str> = m.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then_some(())
        .ok_or_else(|| format!("{m:?} is not a MAC address like 52:54:00:12:34:56"))
}

/// When a plan runs, as users write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// hourly, daily, weekly or monthly.
    #[schema(pattern = "^(hourly|daily|weekly|monthly)$", example = "daily")]
    pub every: String,
    /// Wall-clock start in the time zone, YYYY-MM-DDTHH:MM.
    #[schema(example = "2026-11-24T02:30")]
    pub start: String,
    /// IANA time zone; UTC if omitted.
    #[serde(default = "utc")]
    #[schema(example = "Europe/Berlin", default = "UTC")]
    pub timezone: String,
    /// Optional wall-clock end after which the plan stops by itself.
    #[serde(default)]
    pub end: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}

/// Commands run around a plan's snapshot on each node (e.g. fsfreeze).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HookSpec {
    /// Run on each node before its snapshot (e.g. a freeze); its failure fails the run.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 4096)]
    pub pre: Option<String>,
    /// Run on each node after its snapshot, also when it failed (e.g. a thaw).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 4096)]
    pub post: Option<String>,
    /// Seconds a hook may run.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_secs: Option<u64>,
    /// When the plan's volumes are on several nodes and there is a pre hook, runs go
    /// prepare / snapshot / release: every node must have run its pre hook within this
    /// many seconds, and a node not released this long after its pre hook releases itself
    /// (runs its post hook). Default 60.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub deadline_secs: Option<u64>,
}

/// A protection plan as users write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    pub name: Name,
    /// The objects it protects, each once.
    #[schema(min_items = 1, max_items = 1024)]
    pub objects: Vec<Name>,
    pub schedule: ScheduleSpec,
    /// Snapshot groups kept (a change applies at the next prune).
    #[schema(minimum = 1, maximum = 10000)]
    pub retention: u32,
    /// false: created paused.
    #[serde(default = "yes")]
    #[schema(default = true)]
    pub enabled: bool,
    #[serde(default)]
    pub hooks: HookSpec,
    /// Paired sites to replicate every group to, each keeping its own number of groups
    /// (`retention` above is this site's). A plan with targets is a backup plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub targets: Vec<TargetSpec>,
    /// Recovery point objective, seconds: the most data, by age, the plan may lose. A
    /// target whose newest mirror group is older (plus a grace for the transfer under way,
    /// see `policy::rpo`) is in violation: shown in status and metrics, logged, and sent to
    /// the webhooks. Default: the schedule's interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 31536000)]
    pub rpo_secs: Option<u64>,
}

/// A target site of a backup plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// A paired site (`ferry sites list`).
    pub site: Name,
    /// Mirror snapshot groups that site keeps.
    #[schema(minimum = 1, maximum = 10000)]
    pub retention: u32,
    /// Per target, each source virtual switch's switch at the target: every NIC of a
    /// protected VM needs one.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub switches: std::collections::BTreeMap<Name, Name>,
    /// Recovery drills at this site (run there by its controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillSpec>,
}

/// A recovery drill at a target site: on its schedule, that site rebuilds the newest mirror
/// group into scratch objects, re-reads every volume against its manifest (its root must be
/// the source's), runs the check per object, records the outcome with its timings and
/// deletes the scratch objects. A failed drill is a failed run of the foreign plan there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillSpec {
    pub schedule: ScheduleSpec,
    /// A command run for each rebuilt object (`/bin/sh -c`) on the node of its first
    /// volume, with `FERRY_OBJECT`, `FERRY_VOLUME` (the first volume's image),
    /// `FERRY_VOLUMES` and `FERRY_VOLUME_PATHS` (that node's volumes of the object) in its
    /// environment; exit 0 passes (`fsck -n "$FERRY_VOLUME"`, a boot test). The target
    /// runs commands from this site only if its configuration allows (`drills.checks_from`).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 4096)]
    pub check: Option<String>,
    /// Seconds each check may run; default 600.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 21600)]
    pub timeout_secs: Option<u64>,
}

/// Longest a drill's check may run.
pub const MAX_CHECK_SECS: u64 = 21_600;
/// A drill check's time limit when none is given.
pub const DEFAULT_CHECK_SECS: u64 = 600;
/// Longest RPO a plan may set (a year).
pub const MAX_RPO_SECS: u64 = 31_536_000;

/// Checks a drill's check command and its timeout (`field`: where they are).
pub fn check_drill_check(
    field: &str,
    check: Option<&str>,
    timeout_secs: Option<u64>,
) -> Result<(), FieldError> {
    if let Some(c) = check {
        if c.trim().is_empty() || c.len() > 4096 || c.contains('\0') {
            return Err(bad(
                format!("{field}.check"),
                "must be a non-empty command of at most 4096 bytes",
            ));
        }
    }
    if let Some(t) = timeout_secs {
        if !(1..=MAX_CHECK_SECS).contains(&t) {
            return Err(bad(
                format!("{field}.timeout_secs"),
                format!("must be 1 to {MAX_CHECK_SECS}, not {t}"),
            ));
        }
    }
    Ok(())
}

/// Most target sites of one plan.
pub const MAX_TARGETS: usize = 16;

fn yes() -> bool {
    true
}

/// Most snapshot groups a plan may keep.
pub const MAX_RETENTION: u32 = 10_000;
/// Most objects in one plan.
pub const MAX_PLAN_OBJECTS: usize = 1024;
/// Longest hook timeout.
pub const MAX_HOOK_TIMEOUT_SECS: u64 = 3600;

impl PlanSpec {
    /// Checks the plan against the inventory (`object` looks one up by name); returns its
    /// schedule.
    pub fn validate<'a>(
        &self,
        object: impl Fn(&Name) -> Option<&'a Object>,
    ) -> Result<Schedule, FieldError> {
        if self.objects.is_empty() {
            return Err(bad("objects", "a plan protects at least one object"));
        }
        if self.objects.len() > MAX_PLAN_OBJECTS {
            return Err(bad(
                "objects",
                format!("at most {MAX_PLAN_OBJECTS} objects per plan"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut volumes = std::collections::BTreeMap::new();
        for (i, name) in self.objects.iter().enumerate() {
            if !seen.insert(name) {
                return Err(bad(
                    format!("objects[{i}]"),
                    format!("{name} is listed twice"),
                ));
            }
            let Some(o) = object(name) else {
                return Err(bad(
                    format!("objects[{i}]"),
                    format!("no object named {name}"),
                ));
            };
            for v in o.protected_volumes() {
                if let Some(other) = volumes.insert(v, name) {
                    return Err(bad(
                        format!("objects[{i}]"),
                        format!("volume {}/{} is also in object {other}", v.node, v.volume),
                    ));
                }
            }
        }
        if !(1..=MAX_RETENTION).contains(&self.retention) {
            return Err(bad(
                "retention",
                format!("must be 1 to {MAX_RETENTION}, not {}", self.retention),
            ));
        }
        if let Some(t) = self.hooks.timeout_secs {
            if !(1..=MAX_HOOK_TIMEOUT_SECS).contains(&t) {
                return Err(bad(
                    "hooks.timeout_secs",
                    format!("must be 1 to {MAX_HOOK_TIMEOUT_SECS}, not {t}"),
                ));
            }
        }
        if let Some(t) = self.hooks.deadline_secs {
            if !(1..=MAX_HOOK_TIMEOUT_SECS).contains(&t) {
                return Err(bad(
                    "hooks.deadline_secs",
                    format!("must be 1 to {MAX_HOOK_TIMEOUT_SECS}, not {t}"),
                ));
            }
        }
        for (field, cmd) in [
            ("hooks.pre", &self.hooks.pre),
            ("hooks.post", &self.hooks.post),
        ] {
            if let Some(c) = cmd {
                if c.trim().is_empty() || c.len() > 4096 || c.contains('\0') {
                    return Err(bad(
                        field,
                        "must be a non-empty command of at most 4096 bytes",
                    ));
                }
            }
        }
        if let Some(r) = self.rpo_secs {
            if !(1..=MAX_RPO_SECS).contains(&r) {
                return Err(bad(
                    "rpo_secs",
                    format!("must be 1 to {MAX_RPO_SECS} seconds, not {r}"),
                ));
            }
        }
        self.validate_targets(&object)?;
        let every: Every = self
            .schedule
            .every
            .parse()
            .map_err(|e: crate::policy::schedule::ScheduleError| bad(e.field, e.problem))?;
        Schedule::new(
            every,
            &self.schedule.start,
            &self.schedule.timezone,
            self.schedule.end.as_deref(),
        )
        .map_err(|e| bad(e.field, e.problem))
    }
}

impl PlanSpec {
    /// The targets: at most [`MAX_TARGETS`], each site once, a retention in range, and (the
    /// spec's rule) every NIC of a protected VM on a switch mapped at every target.
    fn validate_targets<'a>(
        &self,
        object: &impl Fn(&Name) -> Option<&'a Object>,
    ) -> Result<(), FieldError> {
        if self.targets.len() > MAX_TARGETS {
            return Err(bad(
                "targets",
                format!("at most {MAX_TARGETS} target sites per plan"),
            ));
        }
        let mut sites = std::collections::BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if !sites.insert(&t.site) {
                return Err(bad(
                    format!("targets[{i}].site"),
                    format!("site {} is listed twice", t.site),
                ));
            }
            if !(1..=MAX_RETENTION).contains(&t.retention) {
                return Err(bad(
                    format!("targets[{i}].retention"),
                    format!("must be 1 to {MAX_RETENTION}, not {}", t.retention),
                ));
            }
            if let Some(d) = &t.drill {
                let field = format!("targets[{i}].drill");
                check_drill_check(&field, d.check.as_deref(), d.timeout_secs)?;
                let every: Every = d.schedule.every.parse().map_err(
                    |e: crate::policy::schedule::ScheduleError| {
                        bad(format!("{field}.{}", e.field), e.problem)
                    },
                )?;
                Schedule::new(
                    every,
                    &d.schedule.start,
                    &d.schedule.timezone,
                    d.schedule.end.as_deref(),
                )
                .map_err(|e| bad(format!("{field}.{}", e.field), e.problem))?;
            }
            for name in &self.objects {
                let Some(o) = object(name) else { continue };
                for (k, sw) in o.switches().into_iter().enumerate() {
                    if !t.switches.contains_key(sw) {
                        return Err(bad(
                            format!("targets[{i}].switches"),
                            format!(
                                "VM {name}'s NIC {k} is on virtual switch {sw}, which has no switch at site {}: map it (\"switches\": {{\"{sw}\": \"SWITCH-AT-{}\"}})",
                                t.site, t.site
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The id of a job of plan `plan_id` started at `ms`: `tag`, the millisecond and a hash of
/// the plan id, so that jobs of two plans started in the same millisecond (in one executor
/// tick) differ, and so do the agent tasks named after them. A plan runs one job at a time.
pub fn plan_job_id(tag: &str, plan_id: &Name, ms: i64) -> Name {
    let h = blake3::hash(plan_id.as_str().as_bytes()).to_hex();
    Name::new(&format!("{tag}{ms}-{}", &h.as_str()[..8])).unwrap_or_else(|_| plan_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_job_ids_differ_by_plan_not_by_call() {
        let (p1, p2) = (
            Name::new("plan.1").expect("n"),
            Name::new("plan.2").expect("n"),
        );
        // (tag, plan, ms, prefix)
        let table = [
            ("rm", &p1, 1_800_000_000_000, "rm1800000000000-"),
            ("rb", &p1, 1_800_000_000_000, "rb1800000000000-"),
            ("rm", &p2, 1_800_000_000_001, "rm1800000000001-"),
        ];
        for (tag, plan, ms, prefix) in table {
            let id = plan_job_id(tag, plan, ms);
            assert!(id.as_str().starts_with(prefix), "{id}");
            assert_eq!(id.as_str().len(), prefix.len() + 8, "{id}");
            assert_eq!(id, plan_job_id(tag, plan, ms), "the same plan and instant");
        }
        let ms = 1_800_000_000_000;
        assert_ne!(plan_job_id("rm", &p1, ms), plan_job_id("rm", &p2, ms));
    }

    fn n(s: &str) -> Name {
        Name::new(s).expect("name")
    }
    fn vol(node: &str, v: &str) -> VolumeRef {
        VolumeRef {
            node: n(node),
            volume: n(v),
        }
    }

    fn vm(disks: Vec<VmDisk>) -> Object {
        Object {
            name: n("web"),
            kind: ObjectKind::Vm {
                vcpus: 4,
                memory_mib: 8192,
                disks,
                nics: vec![Nic {
                    switch: n("vsw-prod"),
                    mac: Some("52:54:00:12:34:56".into()),
                }],
            },
        }
    }

    fn disk(v: &str, role: DiskRole) -> VmDisk {
        VmDisk {
            volume: vol("n1", v),
            role,
        }
    }

    #[test]
    fn objects_table() {
        let lun = |iqn: &str, lun: u32| Object {
            name: n("lun"),
            kind: ObjectKind::IscsiLun {
                target_iqn: iqn.into(),
                lun,
                volume: vol("n1", "v1"),
            },
        };
        let nfs = |export: &str, path: &str| Object {
            name: n("file"),
            kind: ObjectKind::NfsFile {
                export: export.into(),
                path: path.into(),
                volume: vol("n1", "v2"),
            },
        };
        let cases: Vec<(Object, Option<&str>)> = vec![
            (lun("iqn.2026-11.com.example:storage.lun1", 0), None),
            (lun("iqn.2026-11.com.example", MAX_LUN), None),
            (lun("iqn.2026-13.com.example", 1), Some("kind.target_iqn")),
            (lun("eui.02004567A425678D", 1), Some("kind.target_iqn")),
            (lun("iqn.2026-11.Com.Example", 1), Some("kind.target_iqn")),
            (lun("iqn.2026-11.", 1), Some("kind.target_iqn")),
            (
                lun("iqn.2026-11.com.example", MAX_LUN + 1),
                Some("kind.lun"),
            ),
            (nfs("/exports/vms", "images/disk0.raw"), None),
            (nfs("exports", "disk0.raw"), Some("kind.export")),
            (nfs("/exports/../etc", "disk0.raw"), Some("kind.export")),
            (nfs("/exports", "/abs.raw"), Some("kind.path")),
            (nfs("/exports", "a/../../b"), Some("kind.path")),
            (nfs("/exports", "a//b"), Some("kind.path")),
            (
                vm(vec![
                    disk("d0", DiskRole::Disk),
                    disk("iso", DiskRole::Cdrom),
                ]),
                None,
            ),
            (vm(vec![disk("iso", DiskRole::Cdrom)]), Some("kind.disks")),
            (
                vm(vec![
                    disk("d0", DiskRole::Disk),
                    disk("d0", DiskRole::Shared),
                ]),
                Some("kind.disks[1].volume"),
            ),
        ];
        for (o, want) in cases {
            assert_eq!(
                o.validate().err().map(|e| e.field),
                want.map(String::from),
                "{o:?}"
            );
        }
        let mut bad_vm = vm(vec![disk("d0", DiskRole::Disk)]);
        if let ObjectKind::Vm { vcpus, .. } = &mut bad_vm.kind {
            *vcpus = 0;
        }
        assert_eq!(bad_vm.validate().expect_err("vcpus").field, "kind.vcpus");
        let mut bad_mac = vm(vec![disk("d0", DiskRole::Disk)]);
        if let ObjectKind::Vm { nics, .. } = &mut bad_mac.kind {
            nics[0].mac = Some("52:54:00:12:34".into());
        }
        assert_eq!(
            bad_mac.validate().expect_err("mac").field,
            "kind.nics[0].mac"
        );
    }

    #[test]
    fn objects_name_volumes_that_exist() {
        let node1 = NodeVolumes {
            volumes: [n("d0"), n("iso")].into_iter().collect(),
            complete: true,
        };
        let lookup = |node: &Name| match node.as_str() {
            "n1" => Some(node1.clone()),
            "big" => Some(NodeVolumes {
                volumes: Default::default(),
                complete: false,
            }),
            _ => None,
        };
        let cases: Vec<(Object, Option<&str>)> = vec![
            (
                vm(vec![
                    disk("d0", DiskRole::Disk),
                    disk("iso", DiskRole::Cdrom),
                ]),
                None,
            ),
            (
                vm(vec![
                    disk("d0", DiskRole::Disk),
                    disk("nope", DiskRole::Cdrom),
                ]),
                Some("kind.disks[1].volume"),
            ),
            (
                Object {
                    name: n("v"),
                    kind: ObjectKind::VirtualVolume {
                        volume: vol("n9", "d0"),
                    },
                },
                Some("kind.volume.node"),
            ),
            (
                Object {
                    name: n("v"),
                    kind: ObjectKind::VirtualVolume {
                        volume: vol("n1", "x"),
                    },
                },
                Some("kind.volume"),
            ),
            // A node that listed only some of its volumes: not refused on a guess.
            (
                Object {
                    name: n("v"),
                    kind: ObjectKind::VirtualVolume {
                        volume: vol("big", "x"),
                    },
                },
                None,
            ),
        ];
        for (o, want) in cases {
            let got = o.check_volumes_exist(lookup).err();
            assert_eq!(got.as_ref().map(|e| e.field.as_str()), want, "{o:?}");
            if let Some(e) = got {
                assert!(e.problem.contains("allow_missing=true"), "{e}");
            }
        }
    }

    #[test]
    fn cdrom_and_shared_disks_are_not_protected() {
        let o = vm(vec![
            disk("d0", DiskRole::Disk),
            disk("iso", DiskRole::Cdrom),
            disk("quorum", DiskRole::Shared),
            disk("d1", DiskRole::Disk),
        ]);
        let v: Vec<&str> = o
            .protected_volumes()
            .iter()
            .map(|v| v.volume.as_str())
            .collect();
        assert_eq!(v, ["d0", "d1"]);
        assert_eq!(o.switches(), [&n("vsw-prod")]);
    }

    #[test]
    fn objects_decode_from_json_and_refuse_unknown_fields() {
        let o: Object = serde_json::from_str(
            r#"{"name":"db","kind":{"type":"iscsi_lun","target_iqn":"iqn.2026-11.com.example:db","lun":3,"volume":{"node":"n1","volume":"db0"}}}"#,
        )
        .expect("decode");
        assert!(o.validate().is_ok());
        let e = serde_json::from_str::<Object>(
            r#"{"name":"db","kind":{"type":"virtual_volume","volume":{"node":"n1","volume":"v"},"extra":1}}"#,
        );
        assert!(e.is_err());
        let e = serde_json::from_str::<Object>(
            r#"{"name":"../etc","kind":{"type":"virtual_volume","volume":{"node":"n1","volume":"v"}}}"#,
        );
        assert!(e.is_err(), "names are validated while decoding");
    }

    #[test]
    fn plans_table() {
        let inventory = [
            Object {
                name: n("a"),
                kind: ObjectKind::VirtualVolume {
                    volume: vol("n1", "va"),
                },
            },
            Object {
                name: n("b"),
                kind: ObjectKind::VirtualVolume {
                    volume: vol("n2", "vb"),
                },
            },
            Object {
                name: n("a-again"),
                kind: ObjectKind::VirtualVolume {
                    volume: vol("n1", "va"),
                },
            },
        ];
        let lookup = |name: &Name| inventory.iter().find(|o| &o.name == name);
        let plan =
            |objects: &[&str], every: &str, start: &str, tz: &str, retention: u32| PlanSpec {
                name: n("p"),
                objects: objects.iter().map(|o| n(o)).collect(),
                schedule: ScheduleSpec {
                    every: every.into(),
                    start: start.into(),
                    timezone: tz.into(),
                    end: None,
                },
                retention,
                enabled: true,
                hooks: HookSpec::default(),
                targets: Vec::new(),
                rpo_secs: None,
            };
        let with_rpo = |rpo: u64| PlanSpec {
            rpo_secs: Some(rpo),
            ..plan(&["a"], "hourly", "2026-11-24T02:30", "UTC", 3)
        };
        let cases: Vec<(PlanSpec, Option<&str>)> = vec![
            (with_rpo(1), None),
            (with_rpo(MAX_RPO_SECS), None),
            (with_rpo(0), Some("rpo_secs")),
            (with_rpo(MAX_RPO_SECS + 1), Some("rpo_secs")),
            (
                plan(&["a", "b"], "daily", "2026-11-24T02:30", "Europe/Berlin", 7),
                None,
            ),
            (
                plan(&[], "daily", "2026-11-24T02:30", "UTC", 7),
                Some("objects"),
            ),
            (
                plan(&["a", "a"], "daily", "2026-11-24T02:30", "UTC", 7),
                Some("objects[1]"),
            ),
            (
                plan(&["a", "zz"], "daily", "2026-11-24T02:30", "UTC", 7),
                Some("objects[1]"),
            ),
            (
                plan(&["a", "a-again"], "daily", "2026-11-24T02:30", "UTC", 7),
                Some("objects[1]"),
            ),
            (
                plan(&["a"], "daily", "2026-11-24T02:30", "UTC", 0),
                Some("retention"),
            ),
            (
                plan(
                    &["a"],
                    "daily",
                    "2026-11-24T02:30",
                    "UTC",
                    MAX_RETENTION + 1,
                ),
                Some("retention"),
            ),
            (
                plan(&["a"], "yearly", "2026-11-24T02:30", "UTC", 7),
                Some("schedule.every"),
            ),
            (
                plan(&["a"], "daily", "tomorrow", "UTC", 7),
                Some("schedule.start"),
            ),
            (
                plan(&["a"], "daily", "2026-11-24T02:30", "Nowhere/City", 7),
                Some("schedule.timezone"),
            ),
        ];
        for (p, want) in cases {
            assert_eq!(
                p.validate(lookup).err().map(|e| e.field),
                want.map(String::from),
                "{p:?}"
            );
        }
        let mut hooked = plan(&["a"], "hourly", "2026-11-24T00:00", "UTC", 3);
        hooked.hooks.timeout_secs = Some(0);
        assert_eq!(
            hooked.validate(lookup).expect_err("t").field,
            "hooks.timeout_secs"
        );
        hooked.hooks.timeout_secs = Some(30);
        hooked.hooks.deadline_secs = Some(0);
        assert_eq!(
            hooked.validate(lookup).expect_err("deadline").field,
            "hooks.deadline_secs"
        );
        hooked.hooks.deadline_secs = Some(MAX_HOOK_TIMEOUT_SECS + 1);
        assert_eq!(
            hooked.validate(lookup).expect_err("deadline").field,
            "hooks.deadline_secs"
        );
        hooked.hooks.deadline_secs = Some(20);
        hooked.hooks.pre = Some("  ".into());
        assert_eq!(hooked.validate(lookup).expect_err("pre").field, "hooks.pre");
    }

    #[test]
    fn targets_table() {
        let web = vm(vec![VmDisk {
            volume: vol("n1", "d0"),
            role: DiskRole::Disk,
        }]);
        let inventory = [web];
        let lookup = |name: &Name| inventory.iter().find(|o| &o.name == name);
        let target = |site: &str, retention: u32, map: &[(&str, &str)]| TargetSpec {
            site: n(site),
            retention,
            switches: map.iter().map(|(a, b)| (n(a), n(b))).collect(),
            drill: None,
        };
        let mapped = [("vsw-prod", "vsw-dr")];
        let drill = |every: &str, check: Option<&str>, timeout: Option<u64>| TargetSpec {
            drill: Some(DrillSpec {
                schedule: ScheduleSpec {
                    every: every.into(),
                    start: "2026-11-29T03:00".into(),
                    timezone: "UTC".into(),
                    end: None,
                },
                check: check.map(String::from),
                timeout_secs: timeout,
            }),
            ..target("b", 3, &mapped)
        };
        let cases: Vec<(Vec<TargetSpec>, Option<&str>)> = vec![
            (vec![], None),
            (
                vec![drill("weekly", Some("fsck -n \"$FERRY_VOLUME\""), Some(60))],
                None,
            ),
            (vec![drill("weekly", None, None)], None),
            (
                vec![drill("yearly", None, None)],
                Some("targets[0].drill.schedule.every"),
            ),
            (
                vec![drill("weekly", Some(" "), None)],
                Some("targets[0].drill.check"),
            ),
            (
                vec![drill("weekly", Some("true"), Some(MAX_CHECK_SECS + 1))],
                Some("targets[0].drill.timeout_secs"),
            ),
            (vec![target("b", 3, &mapped)], None),
            (vec![target("b", 3, &mapped), target("c", 1, &mapped)], None),
            // The spec's rule: every NIC's switch is mapped at every target.
            (vec![target("b", 3, &[])], Some("targets[0].switches")),
            (
                vec![target("b", 3, &mapped), target("c", 1, &[("other", "x")])],
                Some("targets[1].switches"),
            ),
            (
                vec![target("b", 3, &mapped), target("b", 2, &mapped)],
                Some("targets[1].site"),
            ),
            (vec![target("b", 0, &mapped)], Some("targets[0].retention")),
            (
                vec![target("b", MAX_RETENTION + 1, &mapped)],
                Some("targets[0].retention"),
            ),
            (
                (0..=MAX_TARGETS)
                    .map(|i| target(&format!("s{i}"), 1, &mapped))
                    .collect(),
                Some("targets"),
            ),
        ];
        let plan = |targets: Vec<TargetSpec>| PlanSpec {
            name: n("p"),
            objects: vec![n("web")],
            schedule: ScheduleSpec {
                every: "daily".into(),
                start: "2026-11-24T02:30".into(),
                timezone: "UTC".into(),
                end: None,
            },
            retention: 2,
            enabled: true,
            hooks: HookSpec::default(),
            targets,
            rpo_secs: None,
        };
        for (targets, want) in cases {
            let got = plan(targets.clone())
                .validate(lookup)
                .err()
                .map(|e| e.field);
            assert_eq!(got.as_deref(), want, "{targets:?}");
        }
        let e = plan(vec![target("b", 3, &[])])
            .validate(lookup)
            .expect_err("unmapped");
        assert!(
            e.problem.contains("web")
                && e.problem.contains("vsw-prod")
                && e.problem.contains("site b"),
            "{e}"
        );
    }

    #[test]
    fn a_mirror_object_keeps_everything_but_volumes_and_switches() {
        let web = vm(vec![
            VmDisk {
                volume: vol("n1", "d0"),
                role: DiskRole::Disk,
            },
            VmDisk {
                volume: vol("n2", "d1"),
                role: DiskRole::Disk,
            },
            VmDisk {
                volume: vol("n1", "iso"),
                role: DiskRole::Cdrom,
            },
            VmDisk {
                volume: vol("n1", "quorum"),
                role: DiskRole::Shared,
            },
        ]);
        let mirror = |v: &VolumeRef| {
            Some(vol("m1", &format!("site-a.{}.{}", v.node, v.volume)))
                .filter(|_| v.volume.as_str().starts_with('d'))
        };
        let map: std::collections::BTreeMap<Name, Name> =
            [(n("vsw-prod"), n("vsw-dr"))].into_iter().collect();
        let m = web.mirrored(n("site-a.web"), mirror, &map).expect("mirror");
        let ObjectKind::Vm {
            vcpus,
            memory_mib,
            disks,
            nics,
        } = &m.kind
        else {
            panic!("{m:?}");
        };
        assert_eq!((*vcpus, *memory_mib), (4, 8192));
        let names: Vec<String> = disks
            .iter()
            .map(|d| format!("{}/{}", d.volume.node, d.volume.volume))
            .collect();
        assert_eq!(
            names,
            ["m1/site-a.n1.d0", "m1/site-a.n2.d1"],
            "CD-ROM and shared left out"
        );
        assert_eq!(nics[0].switch.as_str(), "vsw-dr");
        assert_eq!(nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        let e = web
            .mirrored(n("x"), mirror, &Default::default())
            .expect_err("unmapped");
        assert!(e.contains("vsw-prod"), "{e}");
        let lun = Object {
            name: n("db"),
            kind: ObjectKind::IscsiLun {
                target_iqn: "iqn.2026-11.com.example:db".into(),
                lun: 7,
                volume: vol("n1", "d9"),
            },
        };
        let m = lun.mirrored(n("site-a.db"), mirror, &map).expect("lun");
        assert!(
            matches!(&m.kind, ObjectKind::IscsiLun { lun: 7, target_iqn, volume } if target_iqn.ends_with(":db") && volume.node.as_str() == "m1")
        );
        let lost = Object {
            name: n("x"),
            kind: ObjectKind::VirtualVolume {
                volume: vol("n1", "zz"),
            },
        };
        assert!(lost.mirrored(n("x"), mirror, &map).is_err());
    }
}
