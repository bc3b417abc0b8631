//! The demo: three local servers, one of which goes silent mid-run.
//!
//! Each server answers a line over TCP after its own latency. At 4s server C hangs: it
//! keeps its connections open and reads nothing, like a host that was unplugged — no FIN,
//! no RST, so TCP alone would leave its callers waiting for minutes. The layer notices
//! the missed deadlines, declares C silent, cuts every call in flight to it at once and
//! fails new calls fast while probing it (backoff 0.5s doubling to 2s). At 9s C comes
//! back, and the next probe that gets an answer returns it to healthy.
//!
//! ```text
//! cargo run --example silent_peer
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower::{service_fn, BoxError, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, Interrupted, Reason, TimeoutPolicy,
};

/// How long the demo runs, and when server C hangs and recovers.
const RUN: Duration = Duration::from_secs(14);
const HANG_AT: Duration = Duration::from_secs(4);
const RECOVER_AT: Duration = Duration::from_secs(9);
/// Concurrent callers per server.
const CALLERS: usize = 4;

/// A server that answers each line after `latency` (with some jitter), or hangs.
struct Server {
    addr: SocketAddr,
    hung: Arc<AtomicBool>,
}

async fn serve(latency: Duration) -> io::Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hung = Arc::new(AtomicBool::new(false));
    let flag = hung.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream, latency, flag.clone()));
        }
    });
    Ok(Server { addr, hung })
}

/// Answers one connection's lines; while hung, holds the connection open and does nothing.
async fn answer(stream: TcpStream, latency: Duration, hung: Arc<AtomicBool>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        while hung.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A little spread: latency x [0.5, 1.5).
        let jitter = f64::from(line.len() as u32 % 10) / 10.0 + 0.5;
        tokio::time::sleep(latency.mul_f64(jitter)).await;
        write.write_all(format!("{line}\n").as_bytes()).await?;
    }
    Ok(())
}

/// One call: connect, send a line, read the answer.
async fn call(addr: SocketAddr) -> io::Result<String> {
    let stream = TcpStream::connect(addr).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"ping-123\n").await?;
    let mut lines = BufReader::new(read).lines();
    lines
        .next_line()
        .await?
        .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
}

/// What the callers of one server saw.
#[derive(Default)]
struct Tally {
    longest_wait_while_hung: Duration,
    sample: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let names = ["A", "B", "C"];
    let latencies = [5, 20, 10].map(Duration::from_millis);
    let mut servers = Vec::new();
    for latency in latencies {
        servers.push(serve(latency).await?);
    }
    let peers: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();

    let layer = AdaptiveTimeoutLayer::builder(|addr: &SocketAddr| *addr)
        .policy(
            TimeoutPolicy::default()
                .cold_start(Duration::from_millis(500))
                .probe_backoff_max(Duration::from_secs(2)),
        )
        .build()?;
    let handle = layer.handle();
    let svc = layer.layer(service_fn(call));

    println!("servers: A={} B={} C={}", peers[0], peers[1], peers[2]);
    println!("C hangs at {HANG_AT:?} and comes back at {RECOVER_AT:?}\n");
    let start = Instant::now();
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    for (i, &addr) in peers.iter().enumerate() {
        for _ in 0..CALLERS {
            let (svc, tally) = (svc.clone(), tally.clone());
            tokio::spawn(async move {
                while start.elapsed() < RUN {
                    let began = Instant::now();
                    let result = svc.clone().oneshot(addr).await;
                    let hung = (HANG_AT..RECOVER_AT).contains(&start.elapsed());
                    if i == 2 && hung {
                        note(&tally, began.elapsed(), result.err());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
    }

    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while start.elapsed() < RUN {
        ticker.tick().await;
        let t = start.elapsed();
        servers[2]
            .hung
            .store((HANG_AT..RECOVER_AT).contains(&t), Ordering::Relaxed);
        print_table(&handle, &peers, &names, t);
    }

    let tally = tally.lock().unwrap();
    println!(
        "\nWhile C was hung, no call to it waited longer than {:?}.",
        tally.longest_wait_while_hung
    );
    if let Some(line) = &tally.sample {
        println!("A call cut while C was hung:\n  {line}");
    }
    Ok(())
}

/// Keeps the longest wait and one interrupt's message.
fn note(tally: &std::sync::Mutex<Tally>, waited: Duration, err: Option<BoxError>) {
    let mut tally = tally.lock().unwrap();
    tally.longest_wait_while_hung = tally.longest_wait_while_hung.max(waited);
    let silent = err.as_deref().and_then(|e| e.downcast_ref::<Interrupted>());
    if let Some(i) = silent.filter(|i| matches!(i.reason(), Reason::PeerSilent { .. })) {
        if i.elapsed() > Duration::ZERO {
            tally.sample.get_or_insert_with(|| i.to_string());
        }
    }
}

fn print_table(
    handle: &AdaptiveTimeoutHandle<SocketAddr>,
    peers: &[SocketAddr],
    names: &[&str],
    t: Duration,
) {
    println!(
        "t={:>4.1}s  peer  state    p50      p99      deadline  in-flight  ok     timeouts  cut-silent  fail-fast",
        t.as_secs_f64()
    );
    for (addr, name) in peers.iter().zip(names) {
        let Some(s) = handle.peer(addr) else { continue };
        println!(
            "         {name:<5} {:<8} {:<8} {:<8} {:<9} {:<10} {:<6} {:<9} {:<11} {}",
            s.state.as_str(),
            format!("{:.1?}", s.p50),
            format!("{:.1?}", s.p99),
            format!("{:.1?}", s.deadline),
            s.in_flight,
            s.completed,
            s.deadline_exceeded,
            s.silent_interrupts,
            s.fail_fast,
        );
    }
}
