//! One port for gRPC and the raw protocol ([`hoard_proto::raw`]): the listener serves raw connections with the
//! role's own handler and passes the others on to tonic, and it bounds what connections may hold.
//!
//! A connection proves what it speaks before it takes anything that others wait for: within
//! [`HANDSHAKE`] of being accepted it must have sent a whole HTTP/2 preface (gRPC) or the first
//! [`hoard_proto::raw::MIN_REQUEST_LEN`] bytes of a raw request. Connections that are still proving themselves
//! hold no slot; there may be at most [`Limits::handshakes`] of them at once, and past that new ones are
//! closed at once. Served connections are bounded in total and per peer address.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// How long a raw connection past the limit waits for a slot, and how long a raw request's body (an
/// append's fragment, a put's block) may take to arrive.
pub const IDLE: Duration = Duration::from_secs(30);

/// How long a new connection has to show what it speaks: the HTTP/2 preface, or the start of a raw
/// request. Real clients send either with their first segment.
pub const HANDSHAKE: Duration = Duration::from_secs(5);

/// How long a raw request's header may take once its first byte has arrived.
pub const HEADER: Duration = Duration::from_secs(5);

/// The slowest a request's body (an append's fragment, a put's block) may arrive: a megabyte a second,
/// far below any link between roles, so that a peer that stops sending is dropped in seconds.
pub const MIN_BODY_RATE: u64 = 1 << 20;

/// How long a body of `len` bytes may take to arrive once its header has: [`HEADER`] plus `len` at
/// [`MIN_BODY_RATE`].
pub fn body_deadline(len: usize) -> Duration {
    HEADER + Duration::from_millis(len as u64 * 1000 / MIN_BODY_RATE)
}

/// How long a raw connection may sit idle between requests: longer than clients keep an idle
/// connection pooled (a minute), so that a pooled connection is never closed under a request.
pub const BETWEEN_REQUESTS: Duration = Duration::from_secs(75);

/// The next raw request of a connection, with the port's deadlines ([`BETWEEN_REQUESTS`] idle, then
/// [`HEADER`]): `None` when the peer closed, missed a deadline or the stream broke; `Some(Err)` for a
/// malformed request, with why.
pub async fn next_request(
    stream: &mut tokio::net::TcpStream,
) -> Option<Result<hoard_proto::raw::Request, String>> {
    hoard_proto::raw::read_request_timed(stream, BETWEEN_REQUESTS, HEADER)
        .await
        .ok()
        .flatten()
}

/// The HTTP/2 connection preface every gRPC client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a role's connections are counted and bounded.
#[derive(Clone, Copy, Debug)]
pub struct RawListener {
    /// Raw connections served at once; a connection past it waits up to [`IDLE`] for a slot.
    pub connections: usize,
    /// The gauge of raw connections being served.
    pub connections_gauge: &'static str,
    /// The counter of waits for room, labelled `for` (`connection` here, the role's own otherwise).
    pub waits_counter: &'static str,
}

/// Bounds on the connections one listener serves.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections accepted but not yet proven (no preface or request header yet).
    pub handshakes: usize,
    /// Raw connections one peer address may have served at once.
    pub raw_per_peer: usize,
    /// gRPC connections served at once, and per peer address.
    pub grpc: usize,
    pub grpc_per_peer: usize,
}

impl Limits {
    /// Defaults for a listener serving `raw` raw connections at once.
    pub fn for_raw(raw: usize) -> Limits {
        Limits {
            handshakes: 4096,
            raw_per_peer: (raw / 2).max(1),
            grpc: 4096,
            grpc_per_peer: 1024,
        }
    }
}

/// Counts of served connections per peer address.
#[derive(Default)]
struct PerPeer {
    counts: std::sync::Mutex<HashMap<IpAddr, usize>>,
    /// Woken when a slot is given back.
    freed: tokio::sync::Notify,
}

impl PerPeer {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One peer's share, given back when dropped.
pub struct PeerSlot {
    peers: Arc<PerPeer>,
    ip: IpAddr,
}

impl PerPeer {
    /// A slot for `ip`, waiting up to `wait` for one of its own to be given back.
    async fn take_waiting(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        wait: Duration,
    ) -> Option<PeerSlot> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            if let Some(slot) = self.take(ip, max) {
                return Some(slot);
            }
            tokio::time::timeout_at(until, freed).await.ok()?;
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut c = self.counts();
        let n = c.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut c = self.peers.counts();
        if let Some(n) = c.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
        drop(c);
        self.peers.freed.notify_waiters();
    }
}

/// A gRPC connection handed to tonic, holding its share of the limits until tonic drops it.
pub struct GrpcConn {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    _peer: PeerSlot,
}

impl GrpcConn {
    /// The peer's address.
    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Why a connection was closed before it was served, for `hoard_listener_refused_total{why}`.
fn refused(why: &'static str) {
    metrics::counter!("hoard_listener_refused_total", "why" => why).increment(1);
}

/// Waits until at least `want` bytes can be peeked, for at most `deadline`; fills `buf[..want]`.
async fn peek_at_least(
    stream: &TcpStream,
    buf: &mut [u8],
    want: usize,
    deadline: Duration,
) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let n = match tokio::time::timeout_at(until, stream.peek(&mut buf[..want])).await {
            Ok(Ok(n)) => n,
            _ => return false,
        };
        if n == 0 {
            return false;
        }
        if n >= want {
            return true;
        }
        // The rest of the first segment is on its way; real clients send it at once. Peeking again
        // at once would spin, so wait a moment.
        if tokio::time::timeout_at(until, tokio::time::sleep(Duration::from_millis(5)))
            .await
            .is_err()
        {
            return false;
        }
    }
}

/// Accepts connections on `listener`; raw ones are served by `serve`, the others come out of the
/// returned stream for the gRPC server. Accepting stops when the stream is dropped.
pub fn split_incoming<F, Fut>(
    listener: TcpListener,
    raw_limits: RawListener,
    serve: F,
) -> ReceiverStream<std::io::Result<GrpcConn>>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    split_incoming_with(
        listener,
        raw_limits,
        Limits::for_raw(raw_limits.connections),
        serve,
    )
}

/// [`split_incoming`] with explicit connection limits.
pub fn split_incoming_with<F, Fut>(
    listener: TcpListener,
    raw_limits: RawListener,
    limits: Limits,
    serve: F,
) -> ReceiverStream<std::io::Result<GrpcConn>>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let raw_slots = Arc::new(Semaphore::new(raw_limits.connections.max(1)));
    let grpc_slots = Arc::new(Semaphore::new(limits.grpc.max(1)));
    let raw_peers = Arc::new(PerPeer::default());
    let grpc_peers = Arc::new(PerPeer::default());
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: say so, wait, go on.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            if handshakes.fetch_add(1, Ordering::AcqRel) >= limits.handshakes {
                handshakes.fetch_sub(1, Ordering::AcqRel);
                refused("handshakes");
                continue;
            }
            let _ = stream.set_nodelay(true);
            set_keepalive(&stream);
            let (tx, serve) = (tx.clone(), Arc::clone(&serve));
            let (raw_slots, grpc_slots) = (Arc::clone(&raw_slots), Arc::clone(&grpc_slots));
            let (raw_peers, grpc_peers) = (Arc::clone(&raw_peers), Arc::clone(&grpc_peers));
            let handshakes = Arc::clone(&handshakes);
            tokio::spawn(async move {
                let mut head = [0u8; 36];
                let proven = {
                    let first = peek_at_least(&stream, &mut head, 1, HANDSHAKE).await;
                    let want = if first && hoard_proto::raw::is_raw(head[0]) {
                        hoard_proto::raw::MIN_REQUEST_LEN
                    } else {
                        H2_PREFACE.len()
                    };
                    first && peek_at_least(&stream, &mut head, want, HANDSHAKE).await
                };
                handshakes.fetch_sub(1, Ordering::AcqRel);
                if !proven {
                    refused("handshake");
                    return;
                }
                let ip = peer.ip();
                if hoard_proto::raw::is_raw(head[0]) {
                    // Past either limit a connection waits (back-pressure), as long as a body may.
                    let Some(_peer) = raw_peers.take_waiting(ip, limits.raw_per_peer, IDLE).await
                    else {
                        refused("raw_per_peer");
                        return;
                    };
                    if raw_slots.available_permits() == 0 {
                        metrics::counter!(raw_limits.waits_counter, "for" => "connection")
                            .increment(1);
                    }
                    if let Ok(Ok(_slot)) = tokio::time::timeout(IDLE, raw_slots.acquire()).await {
                        let gauge = metrics::gauge!(raw_limits.connections_gauge);
                        gauge.increment(1.0);
                        serve(stream).await;
                        gauge.decrement(1.0);
                    } else {
                        refused("raw_connections");
                    }
                    return;
                }
                if &head[..H2_PREFACE.len()] != H2_PREFACE {
                    refused("not_http2");
                    return;
                }
                let Some(peer_slot) = grpc_peers.take(ip, limits.grpc_per_peer) else {
                    refused("grpc_per_peer");
                    return;
                };
                let Ok(slot) = grpc_slots.try_acquire_owned() else {
                    refused("grpc_connections");
                    return;
                };
                let _ = tx
                    .send(Ok(GrpcConn {
                        stream,
                        _slot: slot,
                        _peer: peer_slot,
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A listener for a role that serves gRPC only (meta): the same handshake deadline and connection caps;
/// a raw request is answered as malformed and the connection closed.
pub fn grpc_only(listener: TcpListener) -> ReceiverStream<std::io::Result<GrpcConn>> {
    let limits = RawListener {
        connections: 16,
        connections_gauge: "hoard_listener_raw_connections",
        waits_counter: "hoard_listener_raw_waits_total",
    };
    split_incoming(listener, limits, |mut stream| async move {
        let why = "this port serves gRPC only";
        let _ =
            hoard_proto::raw::write_failure(&mut stream, hoard_proto::raw::STATUS_MALFORMED, why)
                .await;
    })
}

fn set_keepalive(s: &TcpStream) {
    let on: libc::c_int = 1;
    let idle: libc::c_int = 60;
    // SAFETY: setsockopt on a socket this process owns, with pointers to live c_ints of the right size.
    unsafe {
        let fd = s.as_raw_fd();
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let p = |v: &libc::c_int| v as *const libc::c_int as *const libc::c_void;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, p(&on), len);
        libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, p(&idle), len);
    }
}

/// Bytes that raw requests may hold in memory at once, counted in 64 KiB units. A request waits for
/// room before its bytes are read off the connection, in turn (a small request does not overtake a
/// large one that waits); one larger than the whole budget waits for all of it.
pub struct Budget {
    units: Semaphore,
    max_units: u32,
    waits_counter: &'static str,
    waits_for: &'static str,
}

/// The unit in which a [`Budget`] counts.
pub const UNIT: usize = 64 << 10;

impl Budget {
    /// A budget of `bytes`; waits for room are counted as `waits_counter{for=waits_for}`.
    pub fn new(bytes: usize, waits_counter: &'static str, waits_for: &'static str) -> Budget {
        let max_units = bytes.div_ceil(UNIT).clamp(1, 1 << 24);
        Budget {
            units: Semaphore::new(max_units),
            max_units: max_units as u32,
            waits_counter,
            waits_for,
        }
    }

    /// Room for `bytes`, held until the permit is dropped.
    pub async fn room(&self, bytes: usize) -> Option<SemaphorePermit<'_>> {
        let units = bytes.div_ceil(UNIT).min(self.max_units as usize) as u32;
        if (self.units.available_permits() as u32) < units {
            metrics::counter!(self.waits_counter, "for" => self.waits_for).increment(1);
        }
        self.units.acquire_many(units).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_budget_makes_requests_wait_in_turn_and_fits_one_larger_than_itself() {
        let budget = Arc::new(Budget::new(4 * UNIT, "test_waits_total", "memory"));
        let three = budget.room(3 * UNIT).await.unwrap();
        // One unit is left: a request for two waits until the first gives its room back.
        let b = Arc::clone(&budget);
        let waiting = tokio::spawn(async move {
            let _two = b.room(2 * UNIT).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "a request past the budget went ahead"
        );
        // Waiting is first come, first served: a small request that would fit queues behind it, so
        // that large requests are not starved by small ones.
        let b = Arc::clone(&budget);
        let small = tokio::spawn(async move {
            let _one = b.room(1).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !small.is_finished(),
            "a later request went ahead of one waiting"
        );
        drop(three);
        for t in [waiting, small] {
            tokio::time::timeout(Duration::from_secs(1), t)
                .await
                .expect("served once room was given back")
                .unwrap();
        }
        // A request larger than the whole budget takes all of it rather than waiting forever.
        let all = tokio::time::timeout(Duration::from_secs(1), budget.room(100 * UNIT))
            .await
            .expect("a request larger than the budget is not left waiting")
            .unwrap();
        assert_eq!(budget.units.available_permits(), 0);
        drop(all);
        assert_eq!(budget.units.available_permits(), 4);
    }
}
