//! The controller's stored records as read from etcd or redb: any bytes either parse to a
//! record whose derived views work, or are skipped.
#![no_main]

use ferry_controller::machines::group_job::GroupJob;
use ferry_controller::machines::recovery::Recovery;
use ferry_controller::policy::model::Object;
use ferry_controller::state::schema::{
    AgentRecord, AlarmRecord, Event, GroupRecord, LineageRecord, OrphanRecord, PlanRecord,
    RunRecord, VerifiedRecord,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, b)) = data.split_first() else {
        return;
    };
    let now = jiff::Timestamp::from_second(1_780_000_000).expect("time");
    match which % 8 {
        0 => {
            if let Ok(p) = serde_json::from_slice::<PlanRecord>(b) {
                let _ = p.id();
                let _ = p.spec.validate(|_| None);
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<RunRecord>(b) {
                let _ = r.key();
                let _ = r.report();
            }
        }
        2 => {
            let _ = serde_json::from_slice::<GroupRecord>(b);
        }
        3 => {
            if let Ok(a) = serde_json::from_slice::<AgentRecord>(b) {
                let _ = a.status_at(now);
            }
        }
        4 => {
            let _ = serde_json::from_slice::<OrphanRecord>(b);
        }
        5 => {
            let _ = serde_json::from_slice::<GroupJob>(b);
        }
        6 => {
            // A recovery as the executor reads it back: its next actions, its reports.
            if let Ok(mut r) = serde_json::from_slice::<Recovery>(b) {
                let _ = r.actions();
                let _ = r.made();
                let node = ferry_wire::Name::new("n1").expect("name");
                let task = ferry_wire::Name::new("t1").expect("name");
                r.on_report(&node, &task, &ferry_wire::task::TaskState::Interrupted, now);
                r.on_recorded(&[0, 1, usize::MAX], Ok(()), now);
                r.on_unrecorded(&[0, usize::MAX], now);
            }
            let _ = serde_json::from_slice::<VerifiedRecord>(b);
            let _ = serde_json::from_slice::<LineageRecord>(b);
            let _ = serde_json::from_slice::<AlarmRecord>(b);
            let _ = serde_json::from_slice::<Event>(b);
        }
        _ => {
            if let Ok(o) = serde_json::from_slice::<Object>(b) {
                let _ = o.validate();
                let _ = o.volume_fields();
            }
        }
    }
});
