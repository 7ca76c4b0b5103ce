//! The site PKI lives in `ferry-net` (shared with the controller); re-exported here.

pub use ferry_net::pki::*;
