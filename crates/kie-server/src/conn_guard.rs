//! Protection against hostile or broken clients at the connection level.
//!
//! * **Connection limit** (`max_connections`): at most that many client connections
//!   are served at once; a connection accepted beyond it is closed at once, so idle
//!   sockets cannot exhaust file descriptors or memory.
//! * **Header timeout** (`header_read_timeout`): a connection must deliver a complete
//!   request head within this time after it opens, and again after every answer (so it
//!   is also the keep-alive idle timeout). Slow-header ("slowloris") clients and idle
//!   connections are closed when it passes. hyper runs it on the connection's own
//!   [`HeaderClock`] (one tokio timer per connection, not one per request).
//! * **Body timeout** (`request_body_timeout`): a request body must arrive completely
//!   within this time after its head. A trickling body is cut off and answered with the
//!   envelope code 408 (`Connection: close`).
//! * **Per-IP rate limit** (`ip_rate_limit`, requests per second and peer address,
//!   0 = off): answered 429 with `Retry-After`, before authentication, so it also
//!   covers unauthenticated requests.
//!
//! [`serve`] is the accept loop (hyper-util, HTTP/1.1 and HTTP/2) with graceful
//! shutdown: on the signal it stops accepting, asks every connection to finish its
//! in-flight requests, and waits for them.

use axum::body::Body;
use axum::extract::Request;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Connection-level limits (see the module documentation).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
}

/// Connections refused because the limit was reached (for logs and metrics).
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Serves on `listener` until `shutdown` flips to `true`; `app(peer)` is the service
/// for one connection from `peer`.
pub async fn serve<A, F>(
    listener: TcpListener,
    app: F,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    F: Fn(SocketAddr) -> A,
    A: hyper::service::Service<
            Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    A::Future: Send + 'static,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE and aborted handshakes: back off briefly, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let n = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    refused = n,
                    limit = max,
                    "connection limit reached; closing new connections"
                );
            }
            drop(tcp);
            continue;
        };
        // No Nagle: a streamed file body goes out after its headers in a second write,
        // which Nagle would hold until the client's (delayed) ACK.
        let _ = tcp.set_nodelay(true);
        let app = app(peer);
        // the connection's own header clock (a clone of the builder: a few words)
        let clock = HeaderClock::new();
        let mut builder = builder.clone();
        builder.http1().timer(clock.clone());
        let mut stop = shutdown.clone();
        let header_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            // HTTP version detection reads before hyper's own header timer runs: a
            // connection that sends nothing at all is closed here.
            // Shutting down: a connection that has not sent anything yet is just closed.
            let mut first = [0u8; 1];
            tokio::select! {
                r = tokio::time::timeout(header_timeout, tcp.peek(&mut first)) => match r {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
            // every request takes the one pipeline around the router (`http::pipeline`)
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), app);
            tokio::pin!(conn);
            // The clock's watch runs beside the connection, in this task: when a head's
            // deadline passes it returns, and hyper, polled again, finds its timer
            // elapsed and closes the connection.
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                        return;
                    }
                    _ = clock.expiry(header_timeout) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            conn.as_mut().graceful_shutdown();
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = clock.expiry(header_timeout) => {}
                }
            }
        });
    }
    drop(listener);
    // Every connection holds one slot: all slots back means all connections ended.
    let _ = slots.acquire_many(max as u32).await;
    Ok(())
}

/// hyper's HTTP/1 header-read timer for one connection. hyper asks its timer for a new
/// sleep every time it starts reading a request head and drops it once the head is in;
/// with hyper-util's `TokioTimer` each of those registered and removed a tokio timer
/// entry (with a box and a lock each way): 740 instructions of a 22k-instruction credit
/// request (`bench/callgrind.sh`, BENCHMARKS.md). Here a sleep only records its deadline
/// in the connection's clock; the connection task watches the clock
/// ([`HeaderClock::expiry`], one tokio timer per connection, re-armed at most once per
/// deadline) and, once the live sleep's deadline has passed, marks it elapsed and
/// returns, so hyper is polled again and finds its sleep ready. Same rule as before:
/// a head must be complete within `header_read_timeout` of hyper starting to wait for
/// it.
#[derive(Clone)]
struct HeaderClock(Arc<ClockState>);

struct ClockState {
    /// `Instant`s are kept as nanoseconds since this one.
    base: std::time::Instant,
    /// The latest live sleep's deadline (nanoseconds after `base`).
    deadline: AtomicU64,
    /// Sleeps alive (hyper holds at most one; a replaced one is dropped after its
    /// successor is made).
    live: std::sync::atomic::AtomicU32,
    /// The live sleep's deadline has passed (set by `expiry`, cleared by a new sleep).
    elapsed: AtomicBool,
}

impl HeaderClock {
    fn new() -> HeaderClock {
        HeaderClock(Arc::new(ClockState {
            base: std::time::Instant::now(),
            deadline: AtomicU64::new(0),
            live: std::sync::atomic::AtomicU32::new(0),
            elapsed: AtomicBool::new(false),
        }))
    }

    fn nanos(&self, t: std::time::Instant) -> u64 {
        t.saturating_duration_since(self.0.base).as_nanos() as u64
    }

    /// Returns once a live sleep's deadline has passed (and marks it elapsed); looks
    /// again every `period` while no sleep is live.
    async fn expiry(&self, period: Duration) {
        let c = &self.0;
        let mut at = tokio::time::Instant::now() + period;
        loop {
            tokio::time::sleep_until(at).await;
            let now = std::time::Instant::now();
            if c.live.load(Ordering::Acquire) == 0 {
                at = (now + period).into();
                continue;
            }
            let deadline = c.deadline.load(Ordering::Acquire);
            if self.nanos(now) >= deadline {
                c.elapsed.store(true, Ordering::Release);
                return;
            }
            at = (c.base + Duration::from_nanos(deadline)).into();
        }
    }
}

impl hyper::rt::Timer for HeaderClock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(std::time::Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let c = &self.0;
        c.live.fetch_add(1, Ordering::AcqRel);
        c.deadline.store(self.nanos(deadline), Ordering::Release);
        c.elapsed.store(false, Ordering::Release);
        Box::pin(HeaderSleep(self.clone()))
    }
}

/// A sleep of [`HeaderClock`]: ready once the clock marks it elapsed. It registers no
/// waker: the connection task that polls it also runs [`HeaderClock::expiry`].
struct HeaderSleep(HeaderClock);

impl Future for HeaderSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if (self.0).0.elapsed.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

impl Drop for HeaderSleep {
    fn drop(&mut self) {
        (self.0).0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body that must be complete by a deadline.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    fired: Arc<AtomicBool>,
}

impl hyper::body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.fired.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(axum::Error::new("request body timeout"))));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => {
                if self.sleep.as_mut().poll(cx).is_ready() {
                    self.fired.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new("request body timeout"))));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The request with a body that must arrive within `timeout` (see the module docs),
/// and the flag that says the deadline fired (then the answer is 408); `None`: the
/// request has no body to wait for.
pub fn with_body_deadline(req: Request, timeout: Duration) -> (Request, Option<Arc<AtomicBool>>) {
    use hyper::body::Body as _;
    if req.body().is_end_stream() {
        return (req, None);
    }
    let fired = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(timeout)),
        fired: fired.clone(),
    });
    (Request::from_parts(parts, body), Some(fired))
}
