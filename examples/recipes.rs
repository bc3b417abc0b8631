//! README's quick start and its response-body recipe, as written, beside
//! `tower::timeout` of 1s, in the same run over real sockets, every call counted from the
//! first one.
//!
//! Three loopback HTTP servers, each behind a fault proxy per stack; hyper-util's client.
//! Every stack gets the same calls: per server, one call every 10 ms whatever the earlier
//! ones are doing (callers that do not wait for each other), each to one of four routes
//! (`/sleep/{2,5,10,20}`), one in ten a streamed body of four frames 5 ms apart. Each call
//! reads its whole body. The faults, the same for every stack:
//!
//! * server 0 is behind a lossy link from the start: one reply chunk in 50 waits 200 ms
//!   (a TCP retransmission);
//! * server 1 is healthy;
//! * server 2 goes silent (blackholed: no FIN, no RST) from 4s to 9s, then comes back.
//!
//! Printed per stack: the calls that failed on the healthy servers (healthy calls cut),
//! on the silent server during its silence and after it came back, the caller-seconds
//! all calls waited, the latency of the calls that succeeded, and the longest call.
//!
//! ```text
//! cargo run --release --example recipes
//! ```
//!
//! It runs in real time, about 16 seconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use loopback::http_server::{self, get};
use loopback::{Fault, FaultProxy, Loopback, Rng};
use tokio::time::Instant;
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_adaptive_timeout::{AdaptiveTimeoutLayer, IdleRule, Interrupted, TimeoutPolicy};

const EVERY: Duration = Duration::from_millis(10);
const RUN: Duration = Duration::from_secs(15);
const SILENT_FROM: Duration = Duration::from_secs(4);
const SILENT_UNTIL: Duration = Duration::from_secs(9);
const ROUTES: [&str; 4] = ["/sleep/2", "/sleep/5", "/sleep/10", "/sleep/20"];
const STREAM: &str = "/stream/4/5";

/// A whole call: the response and its body, read to the end.
type Client = BoxCloneSyncService<http::Uri, (), BoxError>;

/// One finished call.
struct Call {
    server: usize,
    started: Duration,
    took: Duration,
    ok: bool,
    /// Why it failed, without the peer's address and the numbers: `Interrupted`'s kind, or
    /// the client's own error.
    why: Option<String>,
}

/// Makes a stack's client from the hyper-util client.
type Recipe = fn() -> Result<Client, BoxError>;

fn fixed() -> Result<Client, BoxError> {
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(http_server::client());
    Ok(read_all(svc))
}

/// README's quick start: `http()` keyed, p99.9 x 2.
fn quick_start() -> Result<Client, BoxError> {
    let layer = AdaptiveTimeoutLayer::http()
        .policy(TimeoutPolicy::default().quantile(0.999).factor(2.0))
        .build()?;
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(http_server::client());
    Ok(read_all(svc))
}

/// README's response-body recipe: `with_bodies()`, idle deadlines learned.
fn bodies() -> Result<Client, BoxError> {
    let layer = AdaptiveTimeoutLayer::http().build()?;
    let svc = ServiceBuilder::new()
        .layer(layer.with_bodies().idle_rule(IdleRule::Learned))
        .service(http_server::client());
    Ok(read_all(svc))
}

/// A service whose call ends when the response's body has been read to the end.
fn read_all<S, B>(svc: S) -> Client
where
    S: tower::Service<
            http::Request<http_body_util::Empty<bytes::Bytes>>,
            Response = http::Response<B>,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let svc = svc.map_err(Into::into);
    Client::new(
        svc.map_request(get)
            .and_then(|resp: http::Response<B>| async move {
                resp.into_body().collect().await.map_err(Into::into)?;
                Ok(())
            }),
    )
}

/// One stack: a proxy per server, and the client.
struct Stack {
    name: &'static str,
    proxies: Vec<FaultProxy>,
    client: Client,
    calls: Arc<Mutex<Vec<Call>>>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let latencies = [1, 2, 3].map(Duration::from_millis);
    let mut servers: Vec<Loopback> = Vec::new();
    for latency in latencies {
        servers.push(http_server::start(latency).await?);
    }
    let recipes: [(&str, Recipe); 3] = [
        ("tower::timeout(1s)", fixed),
        ("quick start", quick_start),
        ("with_bodies()", bodies),
    ];
    let mut stacks = Vec::new();
    for (name, recipe) in recipes {
        let mut proxies = Vec::new();
        for server in &servers {
            proxies.push(FaultProxy::start(server.addr()).await);
        }
        proxies[0].set(Fault::Retransmit {
            one_in: 50,
            rto: Duration::from_millis(200),
        });
        let calls = Arc::new(Mutex::new(Vec::new()));
        stacks.push(Stack {
            name,
            proxies,
            client: recipe()?,
            calls,
        });
    }

    let start = Instant::now();
    let mut rng = Rng::new(20240601, 0);
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(EVERY);
    let (mut silent, mut back) = (false, false);
    while start.elapsed() < RUN {
        tick.tick().await;
        let now = start.elapsed();
        if !silent && now >= SILENT_FROM {
            silent = true;
            stacks
                .iter()
                .for_each(|s| s.proxies[2].set(Fault::Blackhole));
        }
        if !back && now >= SILENT_UNTIL {
            back = true;
            stacks.iter().for_each(|s| s.proxies[2].set(Fault::Pass));
        }
        for server in 0..servers.len() {
            let path = match rng.below(10) {
                0 => STREAM,
                _ => ROUTES[rng.below(ROUTES.len() as u64) as usize],
            };
            for stack in &stacks {
                let uri: http::Uri =
                    format!("http://{}{path}", stack.proxies[server].addr()).parse()?;
                let (client, calls) = (stack.client.clone(), stack.calls.clone());
                tasks.spawn(async move {
                    let started = start.elapsed();
                    let result = client.oneshot(uri).await;
                    let took = start.elapsed() - started;
                    let why = result.err().map(|err| match Interrupted::find(&*err) {
                        Some(interrupted) => interrupted.reason().as_str().to_string(),
                        None => "the client's own error".to_string(),
                    });
                    let call = Call {
                        server,
                        started,
                        took,
                        ok: why.is_none(),
                        why,
                    };
                    calls.lock().expect("no panic while held").push(call);
                });
            }
        }
    }
    while tasks.join_next().await.is_some() {}

    println!(
        "{} calls per stack, every call counted from the first one:\n",
        count(&stacks[0])
    );
    println!(
        "| stack | failed on healthy servers | silent server: failed in silence | failed after return | caller-seconds waited | ok p50 / p99 / max | longest call |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|");
    for stack in &stacks {
        print_row(stack);
    }
    println!("\nwhy calls on the healthy servers failed:");
    for stack in &stacks {
        let calls = stack.calls.lock().expect("no panic while held");
        let mut why = std::collections::BTreeMap::<(usize, &str), usize>::new();
        for call in calls.iter().filter(|c| c.server != 2) {
            if let Some(reason) = &call.why {
                *why.entry((call.server, reason)).or_default() += 1;
            }
        }
        println!("  {}: {why:?}", stack.name);
    }
    Ok(())
}

fn count(stack: &Stack) -> usize {
    stack.calls.lock().expect("no panic while held").len()
}

fn print_row(stack: &Stack) {
    let calls = stack.calls.lock().expect("no panic while held");
    let in_silence =
        |c: &&Call| c.server == 2 && c.started >= SILENT_FROM && c.started < SILENT_UNTIL;
    let after = |c: &&Call| c.server == 2 && c.started >= SILENT_UNTIL;
    let failed_healthy = calls.iter().filter(|c| c.server != 2 && !c.ok).count();
    let failed_silent = calls.iter().filter(in_silence).filter(|c| !c.ok).count();
    let silent_calls = calls.iter().filter(in_silence).count();
    let failed_after = calls.iter().filter(after).filter(|c| !c.ok).count();
    let waited: f64 = calls.iter().map(|c| c.took.as_secs_f64()).sum();
    let mut ok: Vec<Duration> = calls.iter().filter(|c| c.ok).map(|c| c.took).collect();
    ok.sort();
    let at = |q: f64| ok.get(((ok.len() as f64 * q) as usize).min(ok.len().saturating_sub(1)));
    let ms =
        |d: Option<&Duration>| d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
    let longest = calls.iter().map(|c| c.took).max().unwrap_or_default();
    println!(
        "| {} | {failed_healthy} | {failed_silent} of {silent_calls} | {failed_after} | {waited:.1} | {} / {} / {} ms | {:.0} ms |",
        stack.name,
        ms(at(0.5)),
        ms(at(0.99)),
        ms(ok.last()),
        longest.as_secs_f64() * 1e3,
    );
}
