//! Raw block puts (see [`hoard_proto::raw`]): the frontend's listener hands gRPC connections to tonic and
//! serves raw ones here. A put's block is read off the connection straight into the buffer it is hashed
//! and encoded from; over gRPC the same block is copied into the client's frame buffer and gathered from
//! HTTP/2 frames into another before the frontend sees it. Everything after the read (hash check, dedup,
//! placement, the stripe's writes, the commit) is the gRPC put's, and so is every answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hoard_net::listen;
use hoard_proto::raw::{self, PutAnswer, RawPut, Request};
use hoard_types::BlockHash;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_stream::wrappers::ReceiverStream;

use crate::Frontend;

/// Bounds on what raw put connections may hold at once; past them, new connections wait. The memory
/// that puts' blocks take is bounded by the frontend ([`crate::FrontendConfig::put_memory`]), for raw
/// and gRPC puts together.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Raw connections served at once.
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { connections: 1024 }
    }
}

/// The raw puts of one listener: shared by its connections, and drained when the frontend stops.
pub struct RawPuts {
    fe: Arc<Frontend>,
    closing: AtomicBool,
    in_flight: AtomicUsize,
    done: Notify,
}

impl RawPuts {
    /// Stops taking raw puts (a put not yet being stored is closed unanswered) and waits, up to 30 s,
    /// for those being stored to be answered, so that none is still writing once the frontend gives
    /// its volumes back.
    pub async fn drain(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(listen::IDLE, async {
            loop {
                let done = self.done.notified();
                if self.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
    }
}

/// Accepts connections on `listener`; raw puts are served here, the others come out of the returned
/// stream for the gRPC server. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    fe: Arc<Frontend>,
) -> (
    ReceiverStream<std::io::Result<listen::GrpcConn>>,
    Arc<RawPuts>,
) {
    incoming_with(listener, fe, Limits::default())
}

/// [`incoming`] with explicit limits.
pub fn incoming_with(
    listener: TcpListener,
    fe: Arc<Frontend>,
    limits: Limits,
) -> (
    ReceiverStream<std::io::Result<listen::GrpcConn>>,
    Arc<RawPuts>,
) {
    const WAITS: &str = "hoard_frontend_raw_waits_total";
    let puts = Arc::new(RawPuts {
        fe,
        closing: AtomicBool::new(false),
        in_flight: AtomicUsize::new(0),
        done: Notify::new(),
    });
    let raw = listen::RawListener {
        connections: limits.connections,
        connections_gauge: "hoard_frontend_raw_connections",
        waits_counter: WAITS,
    };
    let p = Arc::clone(&puts);
    let incoming = listen::split_incoming(listener, raw, move |stream| {
        let puts = Arc::clone(&p);
        async move { serve(&puts, stream).await }
    });
    (incoming, puts)
}

/// Serves raw puts on one connection until the client closes it, the stream falls out of step or the
/// frontend stops.
async fn serve(puts: &RawPuts, mut stream: TcpStream) {
    loop {
        let Some(req) = listen::next_request(&mut stream).await else {
            return;
        };
        let why = match req {
            Ok(Request::Put(req)) => {
                if put(puts, &mut stream, req).await {
                    continue;
                }
                return;
            }
            Ok(Request::Read(_) | Request::Append(_)) => {
                "a frontend takes raw puts only: fragments are read from and appended to volume servers"
                    .to_string()
            }
            Err(why) => why,
        };
        // A request the frontend does not serve leaves the stream out of step: answer, then close.
        let _ = raw::write_failure(&mut stream, raw::STATUS_MALFORMED, &why).await;
        return;
    }
}

/// A put being stored, counted for [`RawPuts::drain`] until it is dropped (also when the put panics).
struct InFlight<'a>(&'a RawPuts);

impl<'a> InFlight<'a> {
    fn new(puts: &'a RawPuts) -> Self {
        puts.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(puts)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.done.notify_waiters();
    }
}

/// Takes one put's block off the stream, stores it and answers; `false` when the connection is done for.
/// A stopping frontend stores nothing more: it closes the connection unanswered (as gRPC clients of a
/// stopping frontend see), however long the put waited for room or for its block.
async fn put(puts: &RawPuts, stream: &mut TcpStream, req: RawPut) -> bool {
    let len = req.len as usize;
    let Some(_room) = puts.fe.put_room(len).await else {
        return false;
    };
    // A pooled buffer: a fresh 4 MiB allocation would be faulted in page by page on every put.
    let mut buf = hoard_erasure::pool::take(len);
    match tokio::time::timeout(listen::body_deadline(len), stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) => {}
        _ => return false,
    }
    // Counted before `closing` is checked, so that `drain` either waits for this put or the put sees
    // `closing` and goes no further.
    let _counted = InFlight::new(puts);
    if puts.closing.load(Ordering::SeqCst) {
        return false;
    }
    let data = hoard_erasure::pool::share(buf);
    let sent = match puts
        .fe
        .put(data, req.expected.map(BlockHash::from_bytes))
        .await
    {
        Ok(out) => {
            metrics::counter!("hoard_frontend_raw_put_bytes_total").increment(len as u64);
            let answer = PutAnswer {
                hash: *out.hash.as_bytes(),
                deduplicated: out.deduplicated,
            };
            stream.write_all(&answer.encode()).await
        }
        Err(e) => {
            crate::service::log_failure("put", &e);
            let status = e.to_status();
            raw::write_put_failure(stream, status.code() as u8, status.message()).await
        }
    };
    sent.is_ok()
}
