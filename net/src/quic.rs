//! QUIC between ferry processes: mutual TLS 1.3 (rustls with ring), bounded framing on
//! streams, and the version handshake.
//!
//! Every connection is mutually authenticated: each side presents a node certificate and
//! accepts only certificates chaining to the CAs it trusts (for data connections, the CAs of
//! paired sites). After the TLS handshake the client opens the control stream and sends a
//! [`Hello`]; the server checks that the Hello's node and site are the ones in the client's
//! certificate ([`Trust::identify`]), answers with its own, and both use the negotiated version.
//! A peer that breaks the protocol (an oversized or malformed frame, a Hello that contradicts
//! its certificate) is disconnected with an application close code from
//! `ferry_wire::msg::close`, never answered with a large allocation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_wire::codec::{self, CodecError};
use ferry_wire::frame::{FrameError, PREFIX};
use ferry_wire::msg::{self, close, Hello, VersionError, HELLO_LIMIT};
use ferry_wire::Name;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::pki::{Identity, Trust, SERVER_NAME};

/// ALPN protocol id of ferry connections.
pub const ALPN: &[u8] = b"ferry/1";
/// How long a peer may take to complete the ferry handshake after TLS.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the network layer, classed for retry decisions.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream read: {}", stream_detail(.0.to_string(), read_lost(.0)))]
    Read(#[from] quinn::ReadError),
    #[error("stream write: {}", stream_detail(.0.to_string(), write_lost(.0)))]
    Write(#[from] quinn::WriteError),
    #[error("bad frame from peer: {0}")]
    Frame(#[from] FrameError),
    #[error("bad message from peer: {0}")]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Version(#[from] VersionError),
    #[error("peer identity refused: {0}")]
    Identity(String),
    /// The peer broke the protocol (data that fails its hash, frames for no session).
    #[error("the peer broke the protocol: {0}")]
    Protocol(String),
    #[error("peer did not complete the handshake within {0:?}")]
    Timeout(Duration),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl NetError {
    /// Whether this is the peer closing the connection normally.
    pub fn is_clean_close(&self) -> bool {
        let closed = |e: &quinn::ConnectionError| {
            matches!(e, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == VarInt::from_u32(close::DONE))
                || matches!(e, quinn::ConnectionError::LocallyClosed)
        };
        match self {
            NetError::Read(quinn::ReadError::ConnectionLost(e))
            | NetError::Write(quinn::WriteError::ConnectionLost(e))
            | NetError::Connection(e) => closed(e),
            _ => false,
        }
    }

    /// The code and reason the peer closed the connection with, if it did.
    pub fn closed_by_peer(&self) -> Option<(u32, String)> {
        let e = match self {
            NetError::Read(quinn::ReadError::ConnectionLost(e))
            | NetError::Write(quinn::WriteError::ConnectionLost(e))
            | NetError::Connection(e) => e,
            _ => return None,
        };
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => Some((
                c.error_code.into_inner() as u32,
                String::from_utf8_lossy(&c.reason).into_owned(),
            )),
            _ => None,
        }
    }

    /// Whether retrying later can help (network trouble) or not (the peer or its data are
    /// wrong, or we are misconfigured).
    pub fn retryable(&self) -> bool {
        match self {
            NetError::Read(e) => read_lost(e).is_none_or(connection_retryable),
            NetError::Write(e) => write_lost(e).is_none_or(connection_retryable),
            NetError::Connect { .. } | NetError::Timeout(_) | NetError::Io(_) => true,
            NetError::Connection(e) => connection_retryable(e),
            NetError::Tls(_)
            | NetError::Frame(_)
            | NetError::Codec(_)
            | NetError::Version(_)
            | NetError::Identity(_)
            | NetError::Protocol(_) => false,
        }
    }
}

fn read_lost(e: &quinn::ReadError) -> Option<&quinn::ConnectionError> {
    match e {
        quinn::ReadError::ConnectionLost(c) => Some(c),
        _ => None,
    }
}

fn write_lost(e: &quinn::WriteError) -> Option<&quinn::ConnectionError> {
    match e {
        quinn::WriteError::ConnectionLost(c) => Some(c),
        _ => None,
    }
}

/// A stream error's text, with the connection error that caused it (quinn prints only
/// "connection lost").
fn stream_detail(text: String, lost: Option<&quinn::ConnectionError>) -> String {
    match lost {
        Some(c) => format!("{text}: {c}"),
        None => text,
    }
}

/// A TLS refusal (QUIC crypto error codes 0x100..=0x1ff) or a ferry protocol, identity or
/// version close is permanent; losing the network or a peer shutting down is not.
fn connection_retryable(e: &quinn::ConnectionError) -> bool {
    use quinn::ConnectionError as C;
    match e {
        C::VersionMismatch | C::TransportError(_) => false,
        C::ConnectionClosed(c) => !(0x100..0x200).contains(&u64::from(c.error_code)),
        C::ApplicationClosed(c) => c.error_code == VarInt::from_u32(close::SHUTDOWN),
        _ => true,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(trust: &Trust) -> Result<rustls::RootCertStore, NetError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in trust.roots() {
        roots
            .add(ca.clone())
            .map_err(|e| NetError::Tls(format!("bad CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(NetError::Tls("no trusted CA configured".into()));
    }
    Ok(roots)
}

/// Flow-control windows of replication connections, bytes: how much may be in flight per
/// stream and per connection. A link moves at most a window per round trip, so a long fast
/// link needs a connection window of at least its bandwidth-delay product (1 Gbit/s at
/// 100 ms: 12.5 MB). A stream's window is kept small and a transfer spreads over several
/// streams instead: quinn closes a connection whose stream holds more than 1,024 gaps of
/// lost data waiting to be sent again, and a stream window of 64 MiB at 5% loss and 100 ms
/// reaches that within seconds (measured through the test relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub stream: u64,
    pub connection: u64,
    /// The congestion window a connection starts with (bytes): what it may send in its first
    /// round trip, before BBR has measured the link.
    pub initial: u64,
}

/// quinn's initial congestion window for BBR: 200 datagrams of 1,200 bytes.
pub const DEFAULT_INITIAL_WINDOW: u64 = 200 * 1200;

/// The largest stream window allowed: about 14,000 datagrams of 1,200 bytes, which at 5% loss
/// leaves some 700 gaps, under quinn's 1,024.
pub const MAX_STREAM_WINDOW: u64 = 16 << 20;

/// Data streams one replication session uses at most.
pub const MAX_DATA_STREAMS: usize = 16;

impl Default for Windows {
    fn default() -> Self {
        Windows {
            stream: 8 << 20,
            connection: 128 << 20,
            initial: DEFAULT_INITIAL_WINDOW,
        }
    }
}

impl Windows {
    /// Data streams for a session that sends about `bytes`: enough streams that their windows
    /// together fill the connection's window, but no more than the data needs (a stream per
    /// stream window of data), at least one, at most [`MAX_DATA_STREAMS`].
    pub fn data_streams(&self, bytes: u64) -> usize {
        let stream = self.stream.max(1);
        let fill = self.connection / stream;
        let need = bytes.div_ceil(stream);
        fill.min(need).clamp(1, MAX_DATA_STREAMS as u64) as usize
    }
}

/// Transport settings with the default [`Windows`].
pub fn transport() -> Arc<quinn::TransportConfig> {
    transport_with(Windows::default())
}

/// Transport settings: flow-control windows and the initial congestion window `w` (clamped
/// to what QUIC can express), keep-alives, and limits on concurrent streams.
pub fn transport_with(w: Windows) -> Arc<quinn::TransportConfig> {
    let var = |n: u64| VarInt::from_u64(n).unwrap_or(VarInt::MAX);
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(var(w.stream))
        .receive_window(var(w.connection))
        .send_window(w.connection)
        .max_concurrent_bidi_streams(VarInt::from_u32(64))
        .max_concurrent_uni_streams(VarInt::from_u32(1024))
        .keep_alive_interval(Some(Duration::from_secs(5)));
    // BBR paces by measured bandwidth and RTT instead of backing off at every loss, so
    // random loss on long links does not collapse throughput (5% loss, 100 ms RTT: see the
    // replication tests).
    let mut bbr = quinn::congestion::BbrConfig::default();
    bbr.initial_window(w.initial);
    t.congestion_controller_factory(Arc::new(bbr));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// Transport settings for links that carry control only (agent to controller, controller
/// to controller): keep-alives every 2 s and an idle timeout of 10 s, so a peer that died
/// without a word is noticed in seconds rather than half a minute.
pub fn control_transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(64))
        .keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

/// Server side: present `id`, require client certificates chaining to `trust`.
pub fn server_config(id: &Identity, trust: &Trust) -> Result<quinn::ServerConfig, NetError> {
    let p = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(trust)?),
        p.clone(),
    )
    .build()
    .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(q));
    sc.transport_config(transport());
    Ok(sc)
}

/// Client side: present `id`, accept servers chaining to `trust`.
pub fn client_config(id: &Identity, trust: &Trust) -> Result<quinn::ClientConfig, NetError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_root_certificates(roots(trust)?)
        .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let q = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut cc = quinn::ClientConfig::new(Arc::new(q));
    cc.transport_config(transport());
    Ok(cc)
}

/// Writes one frame (length prefix and payload).
pub async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), NetError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len() as u64,
        limit: u32::MAX as usize,
    })?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(NetError::Write)?;
    send.write_all(payload).await.map_err(NetError::Write)
}

/// Bytes a frame buffer for [`write_framed`] starts with (room for the length prefix).
pub const FRAME_PREFIX: usize = PREFIX;

/// Sends a frame built in `buf` after [`FRAME_PREFIX`] placeholder bytes, without copying it:
/// the buffer itself is handed to the stream.
pub async fn write_framed(send: &mut SendStream, mut buf: Vec<u8>) -> Result<(), NetError> {
    let len = buf.len().saturating_sub(PREFIX);
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len: len as u64,
        limit: u32::MAX as usize,
    })?;
    if len == 0 {
        return Err(FrameError::Empty.into());
    }
    buf[..PREFIX].copy_from_slice(&len32.to_be_bytes());
    send.write_chunk(bytes::Bytes::from(buf))
        .await
        .map_err(NetError::Write)
}

/// Reads one frame of at most `limit` bytes; `None` at a clean end of stream. The length is
/// checked before anything is allocated for the payload.
pub async fn read_frame(recv: &mut RecvStream, limit: usize) -> Result<Option<Vec<u8>>, NetError> {
    let mut prefix = [0u8; PREFIX];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => return Err(FrameError::Truncated(n).into()),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(NetError::Read(e)),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty.into());
    }
    if len > limit {
        return Err(FrameError::TooLarge {
            len: len as u64,
            limit,
        }
        .into());
    }
    // Filled from the stream's chunks as they come: no zeroing, one copy.
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        match recv.read_chunk(len - buf.len(), true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(FrameError::Truncated(buf.len()).into()),
            Err(e) => return Err(NetError::Read(e)),
        }
    }
    Ok(Some(buf))
}

/// Encodes and sends one message as a frame.
pub async fn send_msg<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), NetError> {
    write_frame(send, &codec::encode(msg)?).await
}

/// Receives and decodes one message; an end of stream is a protocol error here.
pub async fn recv_msg<T: DeserializeOwned>(
    recv: &mut RecvStream,
    limit: usize,
) -> Result<T, NetError> {
    let frame = read_frame(recv, limit)
        .await?
        .ok_or(NetError::Frame(FrameError::Truncated(0)))?;
    Ok(codec::decode(&frame, limit)?)
}

/// A handshaken connection and who is on the other end.
#[derive(Debug)]
pub struct Session {
    pub conn: Connection,
    pub send: SendStream,
    pub recv: RecvStream,
    pub peer_node: Name,
    pub peer_site: Name,
    pub version: u32,
}

fn peer_cert(conn: &Connection) -> Result<CertificateDer<'static>, NetError> {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned())
        .ok_or_else(|| NetError::Identity("the peer presented no certificate".into()))
}

/// Closes `conn` with the code matching `err`.
pub fn close_for(conn: &Connection, err: &NetError) {
    let code = match err {
        NetError::Identity(_) => close::IDENTITY,
        NetError::Version(_) => close::VERSION,
        _ => close::PROTOCOL,
    };
    close_with(conn, code, &err.to_string());
}

/// Closes `conn` with `code` and `reason` (cut to what a close frame comfortably carries).
pub fn close_with(conn: &Connection, code: u32, reason: &str) {
    let end = (0..=reason.len().min(200))
        .rev()
        .find(|i| reason.is_char_boundary(*i))
        .unwrap_or(0);
    conn.close(VarInt::from_u32(code), &reason.as_bytes()[..end]);
}

/// How long [`close_done`] waits for the close to leave: far more than the endpoint task
/// needs to hand one packet to the socket, far less than the draining period.
pub const CLOSE_FLUSH: Duration = Duration::from_millis(200);

/// Closes `conn` with `code` and waits until quinn has built its close packet (the
/// connection's count of datagrams sent moves; the same step writes it to the socket unless
/// the socket is full), at most [`CLOSE_FLUSH`]: for a process about to exit with its work
/// confirmed.
///
/// `Endpoint::wait_idle` would wait out the draining period instead, three probe timeouts,
/// to answer the peer's late packets with the close again in case the first was lost. After
/// a bulk transfer that was 0.1 to 0.8 s of a `replicate` call's wall time, measured on
/// loopback and through a 100 ms relay. A lost close costs the peer only its idle timeout.
pub async fn close_done(conn: &Connection, code: u32, reason: &str) {
    if conn.close_reason().is_some() {
        return;
    }
    let sent = conn.stats().udp_tx.datagrams;
    close_with(conn, code, reason);
    let until = tokio::time::Instant::now() + CLOSE_FLUSH;
    while conn.stats().udp_tx.datagrams == sent && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn check_hello(trust: &Trust, conn: &Connection, hello: &Hello) -> Result<(Name, Name), NetError> {
    let (node, site) = identify(trust, conn)?;
    hello_agrees(hello, &node, &site)?;
    Ok((node, site))
}

/// The peer's node and site, as its certificate names them.
fn identify(trust: &Trust, conn: &Connection) -> Result<(Name, Name), NetError> {
    trust
        .identify(&peer_cert(conn)?)
        .map_err(|e| NetError::Identity(e.to_string()))
}

/// A Hello must name the node and site of the certificate it came with.
fn hello_agrees(hello: &Hello, node: &Name, site: &Name) -> Result<(), NetError> {
    if hello.node != *node || hello.site != *site {
        return Err(NetError::Identity(format!(
            "the peer says it is {}@{} but its certificate is {node}@{site}",
            hello.node, hello.site
        )));
    }
    Ok(())
}

/// `f`, a step of the handshake on `conn`, within the handshake's time; when it fails or
/// times out, `conn` is closed with the reason.
async fn in_time_or_close<T>(
    conn: &Connection,
    f: impl std::future::Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    let res = tokio::time::timeout(HANDSHAKE_TIMEOUT, f)
        .await
        .unwrap_or(Err(NetError::Timeout(HANDSHAKE_TIMEOUT)));
    if let Err(e) = &res {
        close_for(conn, e);
    }
    res
}

/// Which end of a connection runs the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The server: accepts the control stream, checks the client's Hello, then answers.
    Accept,
    /// The client: opens the control stream and speaks first.
    Open,
}

/// The ferry handshake on a TLS-established connection; closes it with a reason on failure.
async fn handshake(
    conn: Connection,
    id: &Identity,
    trust: &Trust,
    role: Role,
) -> Result<Session, NetError> {
    let ours = Hello::new(id.node.clone(), id.site.clone());
    let (send, recv, peer_node, peer_site, version) = in_time_or_close(&conn, async {
        let (mut send, mut recv) = match role {
            Role::Accept => conn.accept_bi().await?,
            Role::Open => conn.open_bi().await?,
        };
        if role == Role::Open {
            send_msg(&mut send, &ours).await?;
        }
        let theirs: Hello = recv_msg(&mut recv, HELLO_LIMIT).await?;
        let (peer_node, peer_site) = check_hello(trust, &conn, &theirs)?;
        if role == Role::Accept {
            send_msg(&mut send, &ours).await?;
        }
        let version = msg::negotiate(&ours, &theirs)?;
        Ok::<_, NetError>((send, recv, peer_node, peer_site, version))
    })
    .await?;
    Ok(Session {
        conn,
        send,
        recv,
        peer_node,
        peer_site,
        version,
    })
}

/// Server side of the ferry handshake on an accepted connection.
pub async fn accept_session(
    conn: Connection,
    id: &Identity,
    trust: &Trust,
) -> Result<Session, NetError> {
    handshake(conn, id, trust, Role::Accept).await
}

/// Client side: connects to `addr` and completes the ferry handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    id: &Identity,
    trust: &Trust,
) -> Result<Session, NetError> {
    handshake(dial(endpoint, addr).await?, id, trust, Role::Open).await
}

/// A connection to `addr` with TLS up (the peer's certificate checked against our trust).
async fn dial(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<Connection, NetError> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|source| NetError::Connect { addr, source })?;
    Ok(connecting.await?)
}

/// A client's session whose peer's Hello is still on its way ([`connect_early`]).
pub struct EarlySession {
    pub conn: Connection,
    /// The handshake stream, kept open for the connection's life.
    pub send: SendStream,
    pub peer_node: Name,
    pub peer_site: Name,
    /// Checks the peer's Hello when it comes; yields the handshake stream's receiving half.
    pub hello: tokio::task::JoinHandle<Result<RecvStream, NetError>>,
}

/// Client side, for a caller whose first request need not wait: connects to `addr`, sends
/// our Hello, and returns as soon as TLS is up, with the peer named by its certificate,
/// instead of a round trip later with the peer's Hello ([`connect`]). The peer reads our
/// Hello before any request of ours (it accepts streams in order). Our Hello offers only
/// this build's newest version, the one the caller's requests are in, so the peer either
/// speaks it or closes the connection. The peer's Hello is checked when it comes
/// ([`EarlySession::hello`]): one that disagrees with the certificate, or speaks another
/// version, closes the connection with the reason, and the caller's requests fail with it.
pub async fn connect_early(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    id: &Identity,
    trust: &Trust,
) -> Result<EarlySession, NetError> {
    let conn = dial(endpoint, addr).await?;
    let ours = Hello {
        min_version: msg::PROTOCOL_VERSION,
        ..Hello::new(id.node.clone(), id.site.clone())
    };
    let (send, mut recv, peer_node, peer_site) = in_time_or_close(&conn, async {
        let (node, site) = identify(trust, &conn)?;
        let (mut send, recv) = conn.open_bi().await?;
        send_msg(&mut send, &ours).await?;
        Ok::<_, NetError>((send, recv, node, site))
    })
    .await?;
    let (c, node, site) = (conn.clone(), peer_node.clone(), peer_site.clone());
    let hello = tokio::spawn(async move {
        in_time_or_close(&c, async {
            let theirs: Hello = recv_msg(&mut recv, HELLO_LIMIT).await?;
            hello_agrees(&theirs, &node, &site)?;
            msg::negotiate(&ours, &theirs)?;
            Ok::<_, NetError>(())
        })
        .await
        .map(|()| recv)
    });
    Ok(EarlySession {
        conn,
        send,
        peer_node,
        peer_site,
        hello,
    })
}

/// A client endpoint on an ephemeral port of the right address family.
pub fn client_endpoint(
    peer: SocketAddr,
    cc: quinn::ClientConfig,
) -> Result<quinn::Endpoint, NetError> {
    let bind: SocketAddr = if peer.is_ipv6() {
        "[::]:0".parse().expect("literal address")
    } else {
        "0.0.0.0:0".parse().expect("literal address")
    };
    let mut ep = endpoint(bind, None)?;
    ep.set_default_client_config(cc);
    Ok(ep)
}

/// Socket buffer size asked for: about 50 ms of a 10 Gbit/s link. A receiver that falls
/// behind for a moment drops what does not fit, and BBR takes those drops for congestion
/// (quinn's leaves its start-up at the first loss). Measured on this 2-CPU machine with both
/// agents and the test relay on it: with the kernel's default (208 KiB) 42% of a bulk
/// transfer's datagrams were lost on loopback; with 16 MiB, 0.5 to 5% of a 1 GiB transfer
/// (`UdpRcvbufErrors`), most in start-up; with 64 MiB none. The memory is only taken while
/// datagrams wait.
const SOCKET_BUFFER: libc::c_int = 64 << 20;

/// Sets a socket buffer option, forcing past `net.core.[rw]mem_max` where allowed (root).
fn set_buffer(fd: libc::c_int, force: libc::c_int, plain: libc::c_int) {
    let v = SOCKET_BUFFER;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let p = (&v as *const libc::c_int).cast();
    // SAFETY: setsockopt on a socket we own, reading `len` bytes from a live c_int.
    let ok = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) } == 0;
    if !ok {
        // SAFETY: as above; the kernel caps the plain option at its maximum.
        unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len) };
    }
}

/// Gives a UDP socket large send and receive buffers ([`SOCKET_BUFFER`]).
pub fn large_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
}

/// A QUIC endpoint on `bind` with large socket buffers; a server if `server` is given.
pub fn endpoint(
    bind: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(bind)?;
    large_buffers(&socket);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_takes_the_streams_its_data_and_the_windows_call_for() {
        const M: u64 = 1 << 20;
        let w = |stream, connection| Windows {
            stream,
            connection,
            ..Windows::default()
        };
        let cases = [
            // (windows, bytes to send, streams)
            (Windows::default(), 0, 1),
            (Windows::default(), 4096, 1),
            (Windows::default(), 8 * M, 1),
            (Windows::default(), 8 * M + 1, 2),
            (Windows::default(), 40 * M, 5),
            (Windows::default(), 4096 * M, 16),
            (w(16 * M, 32 * M), 4096 * M, 2),
            (w(M, 1024 * M), 4096 * M, MAX_DATA_STREAMS),
            (w(16 * M, 16 * M), 4096 * M, 1),
        ];
        for (windows, bytes, want) in cases {
            assert_eq!(windows.data_streams(bytes), want, "{windows:?} {bytes}");
        }
    }
}
