//! The controller's IO shells: the [`scheduler`] (due slots into runs), the [`executor`]
//! (runs and jobs carried out on the agents), the agent endpoint and its links
//! ([`agents`]), [`leader`]ship on etcd, follower-to-leader [`forwarding`], and the paired
//! [`sites`] (trust, links, their requests); [`serve`]
//! starts them all with the HTTP API, and [`dev`] runs a whole site on one machine.

pub mod agents;
pub mod alarms;
pub mod executor;
pub mod forwarding;
pub mod leader;
pub mod notify;
pub mod recoveries;
pub mod scheduler;
pub mod sites;
