//! `ferry-net`: the transport every ferry process shares (agents with agents, agents with
//! their controller): the site PKI ([`pki`]) and QUIC with mutual TLS, bounded framing and
//! the ferry handshake ([`quic`]). IO lives here, never in `ferry-wire`; `agent/` and
//! `controller/` both build on it and still never import each other.

pub mod pki;
pub mod quic;
