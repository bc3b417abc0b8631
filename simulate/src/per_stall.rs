//! The stalling host of the `cpu-stall` workload, stall by stall: how many calls each
//! stall cost, and how long a silence beginning then would have gone uncut (what keeping
//! a stall's calls costs in detection).

use std::fmt::Write as _;
use std::time::Duration;

use crate::driver::{CallRecord, Run};
use crate::report::human;
use crate::workload::{stall, PeerPlan, STALL_EVERY};
use crate::Ending;

/// One stall of the host (or the run's end) as a strategy met it.
#[derive(Clone, Debug)]
pub struct StallMark {
    /// When it began (or the run ended).
    pub at: Duration,
    /// How long it lasted (`None`: the run's end).
    pub length: Option<Duration>,
    /// False interrupts of the stalling peers whose calls started nearer this stall than
    /// any other (none at the run's end).
    pub cut: usize,
    /// How long each stalling peer could then answer nothing, with calls outstanding,
    /// before they were cut as a silence.
    pub quiet: Vec<Duration>,
}

/// The stalls of `run` over the peers of `plans`, and its end: empty if no peer stalls.
pub fn marks(plans: &[PeerPlan], run: &Run) -> Vec<StallMark> {
    let stalls = run.quiet_at_stall.len().saturating_sub(1);
    let mut marks: Vec<StallMark> = (run.quiet_at_stall.iter().enumerate())
        .map(|(k, (at, quiet))| StallMark {
            at: *at,
            length: (k < stalls).then(|| stall(k as u64 + 1).1),
            cut: 0,
            quiet: quiet.clone(),
        })
        .collect();
    if stalls == 0 {
        return marks;
    }
    let cut = |c: &&CallRecord| {
        let plan = &plans[usize::from(c.peer)];
        let healthy = c.answer_in.is_some() && plan.silences.is_empty();
        plan.spec.stalls && healthy && c.ending != Ending::Answered
    };
    for call in run.calls.iter().filter(cut) {
        let nearest = (call.start + STALL_EVERY / 2).as_nanos() / STALL_EVERY.as_nanos();
        marks[(nearest as usize).clamp(1, stalls) - 1].cut += 1;
    }
    marks
}

/// One line: `name`'s stalls, each with the calls it cost and the stalling peers' quiet.
pub fn line(name: &str, marks: &[StallMark]) -> String {
    let mut line = format!("- {name}:");
    for m in marks {
        let quiet: Vec<String> = m.quiet.iter().map(|&q| human(q)).collect();
        let _ = match m.length {
            Some(length) => write!(
                line,
                " {} ({} stall) {} cut, silence cut after {};",
                human(m.at),
                human(length),
                m.cut,
                quiet.join(" / ")
            ),
            None => write!(line, " end: silence cut after {}", quiet.join(" / ")),
        };
    }
    line
}
