//! A peer readmitted by a probe that answered slower than its deadline, on tokio's paused
//! clock: one that slowed for good to above `cold_start` is not cut below the latency its
//! probe answered in (no cycle of readmission and silence), and one that comes back fast
//! from a partition its probe waited out still re-learns its fast deadline within
//! `min_samples` answers.

use crate::support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer, ServiceExt};
use tower_adaptive_timeout::{
    AdaptiveTimeout, AdaptiveTimeoutHandle, AdaptiveTimeoutLayer, ByPeer, HasPeer, PeerState,
    TimeoutPolicy,
};

use support::ms;

/// A call to the one peer.
#[derive(Clone, Copy, Debug)]
struct Ask;

impl HasPeer for Ask {
    type Key = u8;
    fn peer(&self) -> Option<u8> {
        Some(1)
    }
}

type Svc = AdaptiveTimeout<BoxCloneSyncService<Ask, (), std::io::Error>, u8, ByPeer>;

/// One peer: its latency (ms, changed at will), a partition that holds every call until
/// it ends (answered then: a buffer), and when the call the partition holds arrived.
struct Rig {
    svc: Svc,
    handle: AdaptiveTimeoutHandle<u8>,
    latency: Arc<AtomicU64>,
    partition: watch::Sender<bool>,
    held_since: Arc<Mutex<Option<Instant>>>,
}

/// Clears the arrival of a held call when it ends (answered, cut or dropped).
struct Held(Arc<Mutex<Option<Instant>>>);

impl Drop for Held {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = None;
    }
}

fn rig(policy: TimeoutPolicy, latency: u64) -> Rig {
    let layer = AdaptiveTimeoutLayer::by_peer::<u8>().policy(policy);
    let layer = layer.jitter_seed(7).build().unwrap();
    let latency = Arc::new(AtomicU64::new(latency));
    let (partition, parted) = watch::channel(false);
    let held_since = Arc::new(Mutex::new(None));
    let (lat, held) = (latency.clone(), held_since.clone());
    let inner = BoxCloneSyncService::new(service_fn(move |_: Ask| {
        let (d, mut parted, held) = (
            ms(lat.load(Ordering::Relaxed)),
            parted.clone(),
            held.clone(),
        );
        async move {
            if *parted.borrow() {
                *held.lock().unwrap() = Some(Instant::now());
                let _held = Held(held);
                let ended = parted.wait_for(|p| !p).await;
                ended.map_err(|_| std::io::Error::other("the rig was dropped"))?;
            }
            tokio::time::sleep(d).await;
            Ok(())
        }
    }));
    Rig {
        handle: layer.handle(),
        svc: layer.layer(inner),
        latency,
        partition,
        held_since,
    }
}

/// How a call ended: when it started, when it ended, and whether it was answered.
type Ended = (Instant, Instant, bool);

impl Rig {
    /// Calls every `every` for `span`, each in its own task; returns how each ended.
    async fn keep_calling(&self, every: Duration, span: Duration) -> Vec<Ended> {
        let end = Instant::now() + span;
        let mut calls = tokio::task::JoinSet::new();
        while Instant::now() < end {
            let svc = self.svc.clone();
            calls.spawn(async move {
                let start = Instant::now();
                let ok = svc.oneshot(Ask).await.is_ok();
                (start, Instant::now(), ok)
            });
            tokio::time::sleep(every).await;
        }
        calls.join_all().await
    }

    fn deadline(&self) -> Duration {
        self.handle.deadline(&1).unwrap().0
    }

    fn state(&self) -> PeerState {
        self.handle.peer(&1).unwrap().state
    }
}

/// The first answer that ended at or after `t`, and how many calls failed after it.
fn after_first_answer(ended: &[Ended], t: Instant) -> (Instant, usize) {
    let first = (ended.iter())
        .filter(|(_, end, ok)| *ok && *end >= t)
        .map(|(_, end, _)| *end)
        .min()
        .expect("the peer was readmitted");
    let failed = (ended.iter())
        .filter(|(_, end, ok)| !*ok && *end > first)
        .count();
    (first, failed)
}

/// Asserts that once a probe got an answer from a peer answering in 1.5 s (its first after
/// `since`), no call failed, and the peer kept a deadline that 1.5 s fits in.
fn readmitted_for_good(rig: &Rig, ended: &[Ended], since: Instant) {
    let (first, failed) = after_first_answer(ended, since);
    let answered = ended
        .iter()
        .filter(|(_, end, ok)| *ok && *end > first)
        .count();
    assert_eq!(
        failed,
        0,
        "{failed} calls failed after the first probe answered at +{:?} ({answered} answered)",
        first - since
    );
    assert!(answered > 500, "{answered} answered after the probe");
    assert_eq!(rig.state(), PeerState::Healthy);
    assert!(rig.deadline() >= ms(1_500), "{:?}", rig.deadline());
}

#[tokio::test(start_paused = true)]
async fn a_peer_slower_than_cold_start_for_good_is_readmitted_for_good_by_its_first_answered_probe()
{
    // 10 ms answers, a call every 50 ms; then 1.5 s for good, above `cold_start` (1 s).
    let rig = rig(TimeoutPolicy::default().min_samples(5), 10);
    let (_, failed) = after_first_answer(
        &rig.keep_calling(ms(50), ms(5_000)).await,
        Instant::now() - ms(5_000),
    );
    assert_eq!(failed, 0);
    assert!(rig.deadline() < ms(100), "{:?}", rig.deadline());
    rig.latency.store(1_500, Ordering::Relaxed);
    let slowed = Instant::now();
    // Silent at once; the first probe long enough for 1.5 s goes once the silence is 150 s
    // old (a probe waits at most a 100th of the silence past `cold_start`), and is
    // answered. Then every call is answered, however long the peer keeps its 1.5 s.
    let ended = rig.keep_calling(ms(50), ms(300_000)).await;
    readmitted_for_good(&rig, &ended, slowed + ms(100));
}

#[tokio::test(start_paused = true)]
async fn a_peer_slower_than_cold_start_from_its_first_call_is_readmitted_for_good_by_its_first_answered_probe(
) {
    // 1.5 s from the first call: nothing learned, every call cut at `cold_start`.
    let rig = rig(TimeoutPolicy::default().min_samples(5), 1_500);
    let start = Instant::now();
    let ended = rig.keep_calling(ms(50), ms(300_000)).await;
    readmitted_for_good(&rig, &ended, start);
}

#[tokio::test(start_paused = true)]
async fn a_peer_back_fast_from_a_partition_its_probe_waited_out_relearns_its_deadline_within_min_samples(
) {
    let min_samples = 5;
    let policy = TimeoutPolicy::default()
        .min_samples(min_samples)
        .cold_start(ms(100));
    let rig = rig(policy, 10);
    for _ in 0..20 {
        rig.svc.clone().oneshot(Ask).await.unwrap();
    }
    let fast = rig.deadline();
    assert!(fast < ms(50), "{fast:?}");
    // A partition: calls are held until it ends, then answered (as a buffer would). It
    // ends while a probe longer than `cold_start` (one 20 s into the silence may wait 200 ms)
    // has waited 150 ms of it.
    rig.partition.send_replace(true);
    let parted = Instant::now();
    let svc = rig.svc.clone();
    let mut calls = tokio::task::JoinSet::new();
    let ended = loop {
        calls.spawn(svc.clone().oneshot(Ask));
        tokio::time::sleep(ms(10)).await;
        let held = *rig.held_since.lock().unwrap();
        if held.is_some_and(|t| t - parted >= ms(20_000) && t.elapsed() >= ms(150)) {
            rig.partition.send_replace(false);
            break Instant::now();
        }
        assert!(parted.elapsed() < ms(120_000), "no probe waited 150 ms");
    };
    calls.join_all().await;
    // The probe waited out the partition, so its latency is no sample, but the peer is
    // given a deadline that latency fits in until its next answers say how fast it is.
    assert_eq!(rig.state(), PeerState::Healthy);
    assert!(
        rig.deadline() >= ms(300),
        "{:?} after the probe",
        rig.deadline()
    );
    assert!(ended.elapsed() < ms(100));
    // Back as fast as before: its fast deadline again within `min_samples` answers.
    let mut answers = 0;
    while rig.deadline() >= ms(50) {
        rig.svc.clone().oneshot(Ask).await.unwrap();
        answers += 1;
        assert!(
            answers <= min_samples,
            "{:?} after {answers} answers",
            rig.deadline()
        );
    }
    assert!(
        rig.deadline() <= fast * 2,
        "{fast:?} -> {:?}",
        rig.deadline()
    );
}
