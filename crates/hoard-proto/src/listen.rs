//! One port for gRPC and the raw protocol ([`crate::raw`]): the listener serves raw connections with the
//! role's own handler and passes the others on to tonic, and it bounds what raw connections may hold.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// How long a new connection may stay silent before it is dropped, and how long a connection past the
/// limit waits for a slot.
pub const IDLE: Duration = Duration::from_secs(30);

/// How a role's raw connections are counted and bounded.
#[derive(Clone, Copy, Debug)]
pub struct RawListener {
    /// Raw connections served at once; a connection past it waits up to [`IDLE`] for a slot.
    pub connections: usize,
    /// The gauge of raw connections being served.
    pub connections_gauge: &'static str,
    /// The counter of waits for room, labelled `for` (`connection` here, the role's own otherwise).
    pub waits_counter: &'static str,
}

/// Accepts connections on `listener`; raw ones are served by `serve`, the others come out of the
/// returned stream for the gRPC server. Accepting stops when the stream is dropped.
pub fn split_incoming<F, Fut>(
    listener: TcpListener,
    limits: RawListener,
    serve: F,
) -> ReceiverStream<std::io::Result<TcpStream>>
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
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
            let _ = stream.set_nodelay(true);
            set_keepalive(&stream);
            let (tx, serve, slots) = (tx.clone(), Arc::clone(&serve), Arc::clone(&slots));
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                match tokio::time::timeout(IDLE, stream.peek(&mut first)).await {
                    Ok(Ok(1)) if crate::raw::is_raw(first[0]) => {
                        if slots.available_permits() == 0 {
                            metrics::counter!(limits.waits_counter, "for" => "connection")
                                .increment(1);
                        }
                        if let Ok(Ok(_slot)) = tokio::time::timeout(IDLE, slots.acquire()).await {
                            let gauge = metrics::gauge!(limits.connections_gauge);
                            gauge.increment(1.0);
                            serve(stream).await;
                            gauge.decrement(1.0);
                        }
                    }
                    Ok(Ok(1)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    _ => {}
                }
            });
        }
    });
    ReceiverStream::new(rx)
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
