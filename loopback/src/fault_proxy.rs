//! A loopback TCP proxy with faults switchable at runtime, to put a misbehaving network
//! between a real client and a real server: latency, a silent peer (no FIN, no RST), resets,
//! half-open connections, trickling bytes, replies cut off mid-way, and a retransmission
//! tail (one reply in so many held a retransmission timeout).

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Loopback;

/// Largest chunk read from one side before it is forwarded to the other.
const CHUNK: usize = 16 * 1024;

/// What the proxy does to the bytes of every connection, existing and new.
///
/// A change takes effect promptly on connections already open: a proxy blocked reading or
/// waiting wakes up for it. Bytes are never dropped by a mode change; they wait in the proxy
/// or in kernel buffers until a forwarding mode resumes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward both directions as they come.
    #[default]
    Pass,
    /// Forward both directions, each chunk held this long after it was read.
    Delay(Duration),
    /// Accept and keep connections open but forward nothing either way and never close:
    /// the peer that went silent. Switching back to a forwarding mode lets the buffered bytes
    /// flow, as when a peer comes back.
    Blackhole,
    /// Close every connection, and each new one on accept, with an RST (`SO_LINGER` 0).
    Reset,
    /// Forward what the client sends but hold everything the server sends back: requests get
    /// through, replies never arrive (until the mode changes).
    HalfOpen,
    /// Forward both directions at most `bytes_per_tick` bytes (at least 1) every `tick`.
    SlowDrip {
        /// Bytes written per tick.
        bytes_per_tick: usize,
        /// Pause after each write.
        tick: Duration,
    },
    /// Forward what the client sends and the first `after` bytes the server sends back on
    /// each connection, then hold the rest: a peer that goes silent mid-reply (headers and
    /// part of a body arrive, then nothing, with no FIN and no RST).
    Truncate {
        /// Reply bytes forwarded per connection before the silence.
        after: usize,
    },
    /// Forward both directions, but hold every `one_in`-th reply chunk through the proxy
    /// (at least 1: every one) `rto` longer: a lossy link, where a lost segment waits a
    /// TCP retransmission timeout (200 ms at least on Linux). The same chunks in every
    /// run, so a test sees the same tail.
    Retransmit {
        /// One reply chunk in this many waits.
        one_in: u32,
        /// How long it waits.
        rto: Duration,
    },
}

/// A loopback proxy to one upstream address, with a [`Fault`] mode switchable from the test.
///
/// Each accepted connection opens its own connection to the upstream (a failed upstream
/// connect resets the client). Dropping the proxy closes its listener and all connections.
#[derive(Debug)]
pub struct FaultProxy {
    server: Loopback,
    mode: watch::Sender<Fault>,
    active: Arc<AtomicUsize>,
}

/// Counts the reply chunks of a proxy, to pick those [`Fault::Retransmit`] holds.
type Chunks = Arc<AtomicUsize>;

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream` in [`Fault::Pass`] mode.
    /// Panics if the listener cannot be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let (mode, rx) = watch::channel(Fault::Pass);
        let active = Arc::new(AtomicUsize::new(0));
        let open = Arc::clone(&active);
        let chunks = Chunks::default();
        let server = Loopback::start(move |client| {
            let open = Open::new(Arc::clone(&open));
            relay(client, upstream, rx.clone(), open, Arc::clone(&chunks))
        })
        .await;
        Self {
            server: server.expect("bind a loopback listener"),
            mode,
            active,
        }
    }

    /// The address clients connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Switches the fault mode for existing and new connections.
    pub fn set(&self, fault: Fault) {
        self.mode.send_replace(fault);
    }

    /// The current fault mode.
    pub fn fault(&self) -> Fault {
        *self.mode.borrow()
    }

    /// How many client connections the proxy has accepted so far.
    pub fn connections(&self) -> usize {
        self.server.accepted()
    }

    /// How many client connections are open through the proxy right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

/// Counts one open connection for [`FaultProxy::active`] while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    /// Counts a connection as open.
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Which way bytes flow through a [`pump`]; [`Fault::HalfOpen`] treats the two differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to upstream: requests.
    ToUpstream,
    /// Upstream to client: replies.
    ToClient,
}

/// What one direction of a connection does under a fault mode.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Read and write, each chunk `delay` after it was read, at most `drip.0` bytes per
    /// write with a pause of `drip.1` after each.
    Forward {
        delay: Duration,
        drip: Option<(usize, Duration)>,
    },
    /// Neither read nor write until the mode changes.
    Hold,
    /// Abort the connection.
    Reset,
}

impl Step {
    /// The behaviour of `direction` under `fault`.
    fn of(fault: Fault, direction: Direction) -> Self {
        let pass = Step::Forward {
            delay: Duration::ZERO,
            drip: None,
        };
        match fault {
            Fault::Pass => pass,
            Fault::Delay(delay) => Step::Forward { delay, drip: None },
            Fault::Blackhole => Step::Hold,
            Fault::Reset => Step::Reset,
            Fault::HalfOpen if direction == Direction::ToUpstream => pass,
            Fault::HalfOpen => Step::Hold,
            Fault::Truncate { .. } | Fault::Retransmit { .. } => pass,
            Fault::SlowDrip {
                bytes_per_tick,
                tick,
            } => Step::Forward {
                delay: Duration::ZERO,
                drip: Some((bytes_per_tick.max(1), tick)),
            },
        }
    }
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The source closed cleanly; the close was passed on.
    Closed,
    /// The mode became [`Fault::Reset`].
    Reset,
    /// An I/O error on either side, or the proxy is shutting down.
    Failed,
}

/// Closes `stream` with an RST instead of a FIN.
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Relays one client connection to the upstream under the current fault mode until both
/// directions close, a reset is ordered, or an error occurs (which resets both sides).
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<Fault>,
    _open: Open,
    chunks: Chunks,
) {
    if *mode.borrow() == Fault::Reset {
        return abort(client);
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return abort(client);
    };
    let _ = server.set_nodelay(true);
    let end = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let mut up = pin!(pump(
            client_read,
            server_write,
            (Direction::ToUpstream, None),
            mode.clone()
        ));
        let down = (Direction::ToClient, Some(chunks));
        let mut down = pin!(pump(server_read, client_write, down, mode));
        // A clean close of one direction leaves the other running; anything else ends both.
        tokio::select! {
            end = &mut up => if end == End::Closed { down.await } else { end },
            end = &mut down => if end == End::Closed { up.await } else { end },
        }
    };
    if end != End::Closed {
        abort(client);
        abort(server);
    }
}

/// Moves bytes from `src` to `dst` as the fault mode dictates, re-reading the mode whenever
/// it changes, until the source closes, an error occurs or a reset is ordered. `chunks`
/// counts the proxy's reply chunks, for [`Fault::Retransmit`].
async fn pump(
    mut src: ReadHalf<'_>,
    mut dst: WriteHalf<'_>,
    (direction, chunks): (Direction, Option<Chunks>),
    mut mode: watch::Receiver<Fault>,
) -> End {
    let mut buf = vec![0; CHUNK];
    // Bytes read but not yet written: `buf[start..end]`, read at `read_at`.
    let (mut start, mut end) = (0, 0);
    let mut read_at = Instant::now();
    // How much longer the chunk read waits: a retransmission's timeout, or nothing.
    let mut lost = Duration::ZERO;
    // Bytes written so far, for `Fault::Truncate`.
    let mut sent = 0;
    loop {
        // Copied out so the watch lock is not held across the awaits below.
        let fault = *mode.borrow_and_update();
        let left = match fault {
            Fault::Truncate { after } if direction == Direction::ToClient => {
                after - sent.min(after)
            }
            _ => usize::MAX,
        };
        let step = if left == 0 {
            Step::Hold
        } else {
            Step::of(fault, direction)
        };
        let (delay, drip) = match step {
            Step::Reset => return End::Reset,
            Step::Hold => match mode.changed().await {
                Ok(()) => continue,
                Err(_) => return End::Failed,
            },
            Step::Forward { delay, drip } => (delay, drip),
        };
        // Every wait below also wakes on a mode change, which restarts the loop; the I/O
        // futures are cancel-safe, so no bytes are lost when one is abandoned.
        if start == end {
            tokio::select! {
                changed = mode.changed() => if changed.is_err() { return End::Failed },
                read = src.read(&mut buf) => match read {
                    Ok(0) => {
                        let _ = dst.shutdown().await;
                        return End::Closed;
                    }
                    Ok(n) => {
                        (start, end, read_at) = (0, n, Instant::now());
                        lost = retransmission(fault, chunks.as_deref());
                    }
                    Err(_) => return End::Failed,
                },
            }
            continue;
        }
        let due = read_at + delay + lost;
        if Instant::now() < due {
            tokio::select! {
                changed = mode.changed() => if changed.is_err() { return End::Failed },
                () = tokio::time::sleep_until(due) => {}
            }
            continue;
        }
        let limit = drip.map_or(end, |(bytes, _)| end.min(start + bytes));
        let limit = limit.min(start.saturating_add(left));
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    return End::Failed;
                }
                continue;
            }
            written = dst.write(&buf[start..limit]) => match written {
                Ok(0) | Err(_) => return End::Failed,
                Ok(n) => (start, sent) = (start + n, sent + n),
            },
        }
        if let Some((_, tick)) = drip {
            tokio::select! {
                changed = mode.changed() => if changed.is_err() { return End::Failed },
                () = tokio::time::sleep(tick) => {}
            }
        }
    }
}

/// How much longer a reply chunk read under `fault` waits, counted by `chunks` (`None`: a
/// request chunk, never held).
fn retransmission(fault: Fault, chunks: Option<&AtomicUsize>) -> Duration {
    match (fault, chunks) {
        (Fault::Retransmit { one_in, rto }, Some(chunks)) => {
            let n = chunks.fetch_add(1, Ordering::Relaxed) + 1;
            let one_in = usize::try_from(one_in.max(1)).unwrap_or(usize::MAX);
            if n % one_in == 0 {
                rto
            } else {
                Duration::ZERO
            }
        }
        _ => Duration::ZERO,
    }
}
