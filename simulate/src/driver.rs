//! Runs one strategy over one workload: closed-loop callers per peer, each with its own
//! seeded random stream, on tokio's paused clock. Every call is recorded with its would-be
//! answer time so the report can judge each ending.

use std::time::Duration;

use loopback::Rng;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::strategies::{SimService, Strategy};
use crate::workload::{stall, PeerId, PeerPlan, Req};
use crate::{Ending, SimConfig};

/// A call that has not ended after this long is recorded as hung and abandoned, so a
/// strategy that never cuts a call cannot stall the simulation. Longer than any deadline.
pub const HUNG_AFTER: Duration = Duration::from_secs(300);

/// Bound on the calls one caller makes (the run's duration ends it long before).
const MAX_CALLS_PER_CALLER: usize = 1_000_000;

/// One call as it happened. Times are offsets from the run's start.
#[derive(Clone, Copy, Debug)]
pub struct CallRecord {
    /// The peer called.
    pub peer: PeerId,
    /// The route it took (0: the peer's usual one).
    pub route: u8,
    /// When the call started.
    pub start: Duration,
    /// When it ended.
    pub end: Duration,
    /// When the peer would have answered, from the start (`None`: never, it was silent).
    pub answer_in: Option<Duration>,
    /// How it ended.
    pub ending: Ending,
}

/// Everything one run produced.
#[derive(Debug)]
pub struct Run {
    /// Every call, sorted by peer, start and end.
    pub calls: Vec<CallRecord>,
    /// For each peer, the deadline a new call got when each of its silences began.
    pub deadline_at_silence: Vec<Vec<Duration>>,
    /// When each stall of the stalling peers' host began (and, last, when the run
    /// ended), how long each stalling peer could then say nothing before its calls were
    /// cut as a silence (the strategy's `quiet`), in the order of the peers.
    pub quiet_at_stall: Vec<(Duration, Vec<Duration>)>,
}

/// Runs `strategy` over the peers in `plans`; `workload` separates the random streams of
/// different workloads.
pub async fn run(plans: &[PeerPlan], strategy: &Strategy, cfg: &SimConfig, workload: u64) -> Run {
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for (peer, plan) in plans.iter().enumerate() {
        // A quiet peer has one caller at its own pace.
        let callers = if plan.spec.pace.is_some() {
            1
        } else {
            cfg.callers as u64
        };
        for caller in 0..callers {
            let stream = (workload << 40) | ((peer as u64) << 20) | caller;
            set.spawn(call_loop(
                peer as PeerId,
                plan.clone(),
                strategy.service.clone(),
                Rng::new(cfg.seed, stream),
                t0,
                cfg.clone(),
            ));
        }
    }
    // What to read, and when: a peer's deadline as its silence begins (`Some(peer)`), the
    // stalling peers' quiet as each stall begins and as the run ends (`None`).
    let mut marks: Vec<(Duration, Option<usize>)> = (plans.iter().enumerate())
        .flat_map(|(i, p)| p.silences.iter().map(move |&(from, _)| (from, Some(i))))
        .collect();
    let stalling: Vec<usize> = (plans.iter().enumerate())
        .filter_map(|(i, p)| p.spec.stalls.then_some(i))
        .collect();
    if !stalling.is_empty() {
        let stalls = (1..).map(stall).map(|(from, _)| from);
        marks.extend(
            stalls
                .take_while(|&from| from < cfg.duration)
                .map(|f| (f, None)),
        );
        marks.push((cfg.duration, None));
    }
    marks.sort();
    let mut deadline_at_silence = vec![Vec::new(); plans.len()];
    let mut quiet_at_stall = Vec::new();
    for (at, peer) in marks {
        tokio::time::sleep_until(t0 + at).await;
        match peer {
            Some(peer) => deadline_at_silence[peer].push((strategy.deadline)(peer as PeerId)),
            None => {
                let quiet = stalling.iter().map(|&p| (strategy.quiet)(p as PeerId));
                quiet_at_stall.push((at, quiet.collect()));
            }
        }
    }
    let mut calls: Vec<CallRecord> = set.join_all().await.into_iter().flatten().collect();
    calls.sort_by_key(|c| (c.peer, c.start, c.end));
    Run {
        calls,
        deadline_at_silence,
        quiet_at_stall,
    }
}

/// One caller: calls its peer, waits an exponential think time, and again, until the run
/// ends. It keeps the same pace whatever the outcome, like a client with a steady job.
async fn call_loop(
    peer: PeerId,
    plan: PeerPlan,
    mut svc: SimService,
    mut rng: Rng,
    t0: Instant,
    cfg: SimConfig,
) -> Vec<CallRecord> {
    let think_mean = plan
        .spec
        .pace
        .map_or(cfg.think.as_secs_f64(), |per_minute| 60.0 / per_minute);
    let think = |rng: &mut Rng| Duration::from_secs_f64(rng.exponential(think_mean));
    let mut calls = Vec::new();
    if !plan.spec.eager {
        tokio::time::sleep(think(&mut rng)).await;
    }
    for _ in 0..MAX_CALLS_PER_CALLER {
        let start = Instant::now() - t0;
        if start >= cfg.duration {
            break;
        }
        let (route, _, answer_in) = plan.draw(start, &mut rng);
        let class = plan.class(route);
        let req = Req {
            peer,
            class,
            answer_in,
        };
        let call = async { svc.ready().await?.call(req).await };
        let ending = match tokio::time::timeout(HUNG_AFTER, call).await {
            Ok(Ok(())) => Ending::Answered,
            Ok(Err(ending)) => ending,
            Err(_) => Ending::Hung,
        };
        calls.push(CallRecord {
            peer,
            route,
            start,
            end: Instant::now() - t0,
            answer_in,
            ending,
        });
        tokio::time::sleep(think(&mut rng)).await;
    }
    calls
}
