//! Hedged calls on tokio's paused clock (and one over loopback sockets): a copy only for a
//! request that opts in and a peer that has learned, neither silent nor probing; the first
//! answer wins; the loser is interrupted through its token with `Reason::Hedged` and
//! records neither a sample nor a miss; the budget holds; the counts add up.

use crate::support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::util::BoxCloneService;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, ByPeer, HasPeer, HedgeLayer, HedgeStats, Hedging,
    Interrupt, PeerSnapshot, PeerState, Reason, TimeoutPolicy,
};

use support::{interrupted, ms};

/// A request to peer `peer`; `once`: not to be sent twice. It carries its caller's token,
/// and each call gets a child of it.
#[derive(Clone, Debug, Default)]
struct Get {
    peer: u32,
    once: bool,
    token: Option<Interrupt>,
}

impl HasPeer for Get {
    type Key = u32;
    fn peer(&self) -> Option<u32> {
        Some(self.peer)
    }
    fn interrupt_token(&mut self) -> Option<Interrupt> {
        let token = self
            .token
            .as_ref()
            .map_or_else(Interrupt::new, Interrupt::child);
        self.token = Some(token.clone());
        Some(token)
    }
}

/// The opt-in: every request but those marked `once`.
fn opt_in(r: &Get) -> Option<Get> {
    (!r.once).then(|| r.clone())
}

type OptIn = fn(&Get) -> Option<Get>;

/// What the peer does with the next call that reaches it.
#[derive(Clone, Copy, Debug)]
enum Step {
    Answer(Duration),
    Fail(Duration, &'static str),
    Hang,
}

/// A scripted peer: each arriving call takes the next step (10 ms answers once the script
/// is spent) and is recorded with the token it carried.
#[derive(Clone, Default)]
struct Peer {
    script: Arc<Mutex<VecDeque<Step>>>,
    /// The token each arriving call carried.
    arrivals: Arc<Mutex<Vec<Option<Interrupt>>>>,
    hang: Arc<Mutex<bool>>,
}

impl Peer {
    fn then(&self, steps: &[Step]) {
        self.script.lock().unwrap().extend(steps.iter().copied());
    }
    fn arrivals(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }
    fn token(&self, i: usize) -> Option<Interrupt> {
        self.arrivals.lock().unwrap()[i].clone()
    }
    fn service(&self) -> impl Service<Get, Response = u32, Error = BoxError, Future: Send> + Clone {
        let peer = self.clone();
        service_fn(move |req: Get| {
            let step = match *peer.hang.lock().unwrap() {
                true => Step::Hang,
                false => (peer.script.lock().unwrap().pop_front()).unwrap_or(Step::Answer(ms(10))),
            };
            let n = {
                let mut arrivals = peer.arrivals.lock().unwrap();
                arrivals.push(req.token.clone());
                arrivals.len() as u32
            };
            async move {
                match step {
                    Step::Answer(after) => tokio::time::sleep(after).await,
                    Step::Fail(after, why) => {
                        tokio::time::sleep(after).await;
                        return Err(BoxError::from(why));
                    }
                    Step::Hang => std::future::pending().await,
                }
                Ok::<_, BoxError>(n)
            }
        })
    }
}

/// Learns after 20 answers; deadline p99.9 x 2 + 5 ms, about 25 ms for 10 ms answers.
pub(crate) fn policy() -> TimeoutPolicy {
    TimeoutPolicy::default().min_samples(20).cold_start(ms(200))
}

type Svc = BoxCloneService<Get, u32, BoxError>;

struct Rig {
    svc: Svc,
    peer: Peer,
    handle: AdaptiveTimeoutHandle<u32>,
    layer: HedgeLayer<u32, ByPeer, tower_adaptive_timeout::classify::AllSamples, OptIn>,
}

impl Rig {
    fn new(hedging: Hedging<OptIn>) -> Rig {
        let layer = AdaptiveTimeoutLayer::builder::<Get, _>(ByPeer)
            .policy(policy())
            .build()
            .expect("valid policy");
        let handle = layer.handle();
        let layer = layer.hedged(hedging).expect("valid hedging");
        let peer = Peer::default();
        let svc = BoxCloneService::new(layer.layer(peer.service()));
        Rig {
            svc,
            peer,
            handle,
            layer,
        }
    }

    async fn call(&self, req: Get) -> Result<u32, BoxError> {
        self.svc.clone().oneshot(req).await
    }

    /// `n` 10 ms answers: the peer learns its hedge delay (p95, 10 ms).
    async fn warm(&self, n: usize) {
        for _ in 0..n {
            self.call(Get::default()).await.expect("answered");
        }
    }

    fn snap(&self) -> PeerSnapshot {
        self.handle.peer(&0).expect("tracked")
    }

    fn stats(&self) -> HedgeStats {
        self.layer.stats()
    }
}

fn defaults() -> Hedging<OptIn> {
    Hedging::new(opt_in as OptIn)
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_gets_a_copy_the_first_answer_wins_and_the_loser_is_interrupted() {
    // A budget that is never the limit here.
    let rig = Rig::new(defaults().max_extra_load(1.0));
    rig.warm(40).await;
    let before = rig.snap();
    rig.peer
        .then(&[Step::Answer(ms(1_000)), Step::Answer(ms(10))]);
    let start = Instant::now();
    let answer = rig
        .call(Get::default())
        .await
        .expect("answered by the copy");
    let took = start.elapsed();
    assert_eq!(answer, 42, "the copy (the 42nd arrival) answered");
    // The copy went after the learned p95 (10 ms) and answered 10 ms later: well before
    // the first's 1 s, and before its deadline (about 25 ms).
    assert!(took >= ms(20) && took < ms(25), "took {took:?}");
    // The loser's token, which the code deeper in its chain holds, fired with the hedge
    // reason.
    let token = rig.peer.token(40).expect("the first carried a token");
    let err = token.checkpoint().expect_err("the loser was interrupted");
    assert_eq!(err.reason(), &Reason::Hedged);
    assert!(err.is_cancel());
    // The winner's and the caller's tokens are left alone.
    assert!(!rig.peer.token(41).expect("token").is_interrupted());
    let after = rig.snap();
    // One answer (the copy's), no miss, no other interrupt; nothing left in flight.
    assert_eq!(after.completed, before.completed + 1);
    assert_eq!(after.deadline_exceeded, before.deadline_exceeded);
    assert_eq!(after.manual_interrupts + after.silent_interrupts, 0);
    assert_eq!(after.in_flight, 0);
    assert_eq!(after.state, PeerState::Healthy);
    assert_eq!(
        (after.hedges_sent, after.hedges_won, after.hedge_interrupts),
        (1, 1, 1)
    );
    let stats = rig.stats();
    assert_eq!(
        (stats.requests, stats.sent, stats.won, stats.interrupted),
        (41, 1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn the_loser_records_neither_a_sample_nor_a_miss() {
    let rig = Rig::new(defaults().max_extra_load(1.0));
    rig.warm(40).await;
    // The first answers at 15 ms, beating the copy sent at 10 ms that would take 500 ms.
    rig.peer
        .then(&[Step::Answer(ms(15)), Step::Answer(ms(500))]);
    let before = rig.snap();
    assert_eq!(rig.call(Get::default()).await.expect("answered"), 41);
    let after = rig.snap();
    assert_eq!(
        after.completed,
        before.completed + 1,
        "one sample: the winner's"
    );
    assert_eq!(after.samples, before.samples + 1);
    assert_eq!(after.deadline_exceeded, 0);
    assert_eq!(
        (after.hedges_sent, after.hedges_won, after.hedge_interrupts),
        (1, 0, 1)
    );
    assert_eq!(after.in_flight, 0);
    let copy = rig.peer.token(41).expect("the copy carried a token");
    assert_eq!(
        copy.checkpoint().expect_err("fired").reason(),
        &Reason::Hedged
    );
    // Much later, the loser's 500 ms would have passed: still nothing recorded.
    tokio::time::advance(ms(1_000)).await;
    assert_eq!(rig.snap().completed, after.completed);
}

#[tokio::test(start_paused = true)]
async fn a_request_without_the_opt_in_is_never_sent_twice() {
    let rig = Rig::new(defaults().max_extra_load(1.0));
    rig.warm(40).await;
    rig.peer.then(&[Step::Answer(ms(20)); 10]);
    for _ in 0..10 {
        let once = Get {
            once: true,
            ..Get::default()
        };
        rig.call(once).await.expect("answered");
    }
    assert_eq!(rig.peer.arrivals(), 50);
    assert_eq!(rig.stats().sent, 0);
    assert_eq!(rig.snap().hedges_sent, 0);
}

#[tokio::test(start_paused = true)]
async fn no_copy_before_the_peer_has_learned() {
    let rig = Rig::new(defaults().max_extra_load(1.0));
    // 19 answers: one short of min_samples.
    rig.warm(19).await;
    rig.peer.then(&[Step::Answer(ms(100))]);
    rig.call(Get::default()).await.expect("answered");
    assert_eq!(rig.peer.arrivals(), 20);
    assert_eq!(rig.stats().sent, 0);
}

/// A peer that stops answering, called by one caller in a row, with or without hedging:
/// when it is declared silent, and the calls that reached it until then.
async fn silence(hedged: bool) -> (Duration, usize, Rig) {
    let hedging = match hedged {
        true => defaults().max_extra_load(1.0),
        false => defaults().max_extra_load(1.0).quantile(0.999_999),
    };
    let rig = Rig::new(hedging);
    rig.warm(40).await;
    *rig.peer.hang.lock().unwrap() = true;
    let start = Instant::now();
    let arrived = rig.peer.arrivals();
    for _ in 0..10 {
        let req = Get {
            once: !hedged,
            ..Get::default()
        };
        let err = interrupted(rig.call(req).await);
        if rig.snap().state == PeerState::Silent {
            assert!(err.is_silence(), "{err}");
            return (start.elapsed(), rig.peer.arrivals() - arrived, rig);
        }
    }
    panic!("never declared silent");
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_gets_no_copy_and_is_detected_as_fast_as_without_hedging() {
    let (plain, plain_calls, _) = silence(false).await;
    let (hedged, hedged_calls, rig) = silence(true).await;
    assert_eq!(hedged, plain, "detection time");
    // The hedged run sent a copy of each request while the peer was still healthy or
    // suspect; each was dropped with its request, neither a miss nor an interrupt.
    assert_eq!(hedged_calls, 2 * plain_calls);
    let snap = rig.snap();
    // Every miss a timeout but the one that declared the silence: a silent interrupt, as
    // its caller was told.
    assert_eq!(snap.deadline_exceeded, plain_calls as u64 - 1);
    assert_eq!((snap.silent_interrupts, snap.manual_interrupts), (1, 0));
    assert_eq!(snap.in_flight, 0);
    // Silent now: a call is refused at once, or goes alone as the probe.
    let sent = rig.stats().sent;
    tokio::time::advance(ms(200)).await;
    let probe = tokio::spawn({
        let rig_svc = rig.svc.clone();
        async move { rig_svc.oneshot(Get::default()).await }
    });
    tokio::time::advance(ms(100)).await;
    assert_eq!(rig.snap().state, PeerState::Probing);
    let _ = probe.await.expect("joined");
    assert_eq!(rig.stats().sent, sent, "no copy to a probing peer");
    assert!(rig.stats().peer_refused >= 1);
}

#[tokio::test(start_paused = true)]
async fn the_budget_holds() {
    let rig = Rig::new(defaults().max_extra_load(0.1).burst(2));
    rig.warm(40).await;
    // 100 requests whose first is slow: each wants a copy.
    for _ in 0..100 {
        rig.peer.then(&[Step::Answer(ms(18)), Step::Answer(ms(5))]);
        rig.call(Get::default()).await.expect("answered");
    }
    let stats = rig.stats();
    assert_eq!(stats.requests, 140);
    // 10% of 140 requests, and the burst saved up during the warm-up: at most 14 + 2. (Once
    // 18 ms answers are 5% of the window, the p95 passes them and no copy is due.)
    assert!(stats.sent <= 16, "{stats:?}");
    assert!(stats.sent >= 10 && stats.over_budget >= 10, "{stats:?}");
    // Every copy won (5 ms after 10 ms beats 18 ms), and interrupted its first.
    assert_eq!((stats.won, stats.interrupted), (stats.sent, stats.sent));
    let snap = rig.snap();
    assert_eq!(snap.hedges_sent, stats.sent);
    assert_eq!(snap.completed, 140);
    assert_eq!(snap.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_drops_the_hedged_future_leaves_nothing_in_flight() {
    let rig = Rig::new(defaults().max_extra_load(1.0));
    rig.warm(40).await;
    rig.peer
        .then(&[Step::Answer(ms(500)), Step::Answer(ms(500))]);
    let call = tokio::spawn({
        let svc = rig.svc.clone();
        async move { svc.oneshot(Get::default()).await }
    });
    tokio::time::sleep(ms(15)).await;
    assert_eq!(rig.snap().in_flight, 2, "the request and its copy");
    call.abort();
    let _ = call.await;
    let snap = rig.snap();
    assert_eq!(snap.in_flight, 0);
    assert_eq!((snap.completed, snap.deadline_exceeded), (40, 0));
    assert_eq!((snap.hedges_sent, snap.hedge_interrupts), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn both_copies_failing_give_the_first_error_and_an_early_failure_sends_no_copy() {
    let rig = Rig::new(defaults().max_extra_load(1.0));
    rig.warm(40).await;
    // The copy fails first; the first is awaited, and its error is the request's.
    rig.peer
        .then(&[Step::Fail(ms(20), "first"), Step::Fail(ms(1), "copy")]);
    let err = rig.call(Get::default()).await.expect_err("both failed");
    assert_eq!(err.to_string(), "first");
    // The first fails before the hedge delay: its error at once, no copy.
    rig.peer.then(&[Step::Fail(ms(2), "early")]);
    let sent = rig.stats().sent;
    let err = rig.call(Get::default()).await.expect_err("failed");
    assert_eq!(err.to_string(), "early");
    assert_eq!(rig.stats().sent, sent);
    // The first fails while the copy runs: the copy's answer wins.
    rig.peer
        .then(&[Step::Fail(ms(12), "first"), Step::Answer(ms(5))]);
    assert!(rig.call(Get::default()).await.is_ok());
    assert_eq!(rig.snap().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_interrupt_reaches_both_copies() {
    let rig = Rig::new(defaults().max_extra_load(1.0));
    rig.warm(40).await;
    rig.peer.then(&[Step::Hang, Step::Hang]);
    let caller = Interrupt::new();
    let call = tokio::spawn({
        let svc = rig.svc.clone();
        let req = Get {
            token: Some(caller.clone()),
            ..Get::default()
        };
        async move { svc.oneshot(req).await }
    });
    tokio::time::sleep(ms(15)).await;
    caller.interrupt("user went away");
    let err = interrupted(call.await.expect("joined"));
    assert_eq!(err.reason(), &Reason::Manual("user went away".into()));
    assert!(rig.peer.token(40).expect("token").is_interrupted());
    assert!(rig.peer.token(41).expect("token").is_interrupted());
    assert_eq!(rig.snap().in_flight, 0);
}

/// Every call that reached the peer, by the counter it ended in.
fn outcomes(s: &PeerSnapshot) -> u64 {
    s.completed
        + s.deadline_exceeded
        + s.failures
        + s.silent_interrupts
        + s.manual_interrupts
        + s.hedge_interrupts
}

#[tokio::test(start_paused = true)]
async fn a_copy_ended_with_its_request_is_counted_once_like_every_call() {
    let rig = Rig::new(defaults().max_extra_load(1.0));
    rig.warm(40).await;
    rig.peer.then(&[Step::Hang, Step::Hang]);
    let err = interrupted(rig.call(Get::default()).await);
    assert!(err.is_timeout(), "{err}");
    let snap = rig.snap();
    assert_eq!(
        rig.peer.arrivals(),
        42,
        "the request and its copy reached the peer"
    );
    assert_eq!(snap.in_flight, 0);
    assert_eq!(outcomes(&snap), 42, "every call counted once: {snap:?}");
    assert_eq!(snap.hedge_interrupts, 1, "the copy, ended by the race");
    assert_eq!(rig.stats().interrupted, 1);
}

#[test]
fn absurd_settings_give_a_clear_error() {
    let layer = AdaptiveTimeoutLayer::builder::<Get, _>(ByPeer)
        .build()
        .expect("valid policy");
    for (hedging, field) in [
        (defaults().quantile(f64::NAN), "hedging.quantile"),
        (defaults().quantile(1.0), "hedging.quantile"),
        (defaults().max_extra_load(0.0), "hedging.max_extra_load"),
        (
            defaults().max_extra_load(f64::MAX),
            "hedging.max_extra_load",
        ),
        (defaults().burst(0), "hedging.burst"),
        (defaults().burst(u32::MAX), "hedging.burst"),
        (defaults().max_in_flight(0), "hedging.max_in_flight"),
    ] {
        let err = layer.hedged(hedging).expect_err("refused");
        assert_eq!(err.field(), field, "{err}");
    }
}

/// Over real sockets: a loopback line server that delays one answer in ten by 200 ms (as it
/// decides, so a copy is delayed independently). Hedged, the slow answers lose to their
/// copies; the copies stay within the budget. (The latencies are measured by
/// `examples/hedged.rs`, not asserted here.)
#[tokio::test]
async fn over_loopback_a_slow_answer_is_beaten_by_its_copy() {
    use loopback::{LineClient, LineRequest, Loopback};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = served.clone();
    let server = Loopback::start(move |stream| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let delay = if n % 10 == 9 { 200 } else { 2 };
            tokio::time::sleep(ms(delay)).await;
            let payload = line
                .trim_end()
                .split_once(' ')
                .map_or("", |(_, p)| p)
                .to_owned();
            let _ = write.write_all(format!("{payload}\n").as_bytes()).await;
        }
    })
    .await
    .expect("bind");
    let addr = server.addr();
    let layer = AdaptiveTimeoutLayer::builder(|r: &LineRequest| r.addr)
        .policy(
            TimeoutPolicy::default()
                .min_samples(20)
                .cold_start(ms(1_000)),
        )
        .build()
        .expect("valid policy");
    let handle = layer.handle();
    let clone = |r: &LineRequest| Some(r.clone());
    let hedged = layer
        .hedged(Hedging::new(clone).quantile(0.8).max_extra_load(0.2))
        .expect("valid hedging");
    let mut svc = hedged.layer(LineClient::new());
    // Learn: 40 answers (every tenth slow).
    for i in 0..40 {
        let req = LineRequest::new(addr, 0, format!("warm{i}"));
        svc.ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("answered");
    }
    for i in 0..40 {
        let req = LineRequest::new(addr, 0, format!("r{i}"));
        let reply = svc
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("answered");
        assert_eq!(reply, format!("r{i}"));
    }
    let stats = hedged.stats();
    assert!(stats.sent >= 3, "the slow answers got copies: {stats:?}");
    assert!(stats.sent <= 80 / 5 + 10, "within the budget: {stats:?}");
    // The slow answers (one in ten) lost to their copies.
    assert!(stats.won >= 3 && stats.interrupted >= 3, "{stats:?}");
    let snap = handle.peer(&addr).expect("tracked");
    assert_eq!(snap.in_flight, 0);
    assert_eq!(snap.hedges_sent, stats.sent);
    assert_eq!(snap.hedge_interrupts, stats.interrupted);
}
