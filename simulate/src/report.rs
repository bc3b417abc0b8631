//! The figures: what each run's calls say about a strategy, and the tables they make.

use std::fmt::Write as _;
use std::time::Duration;

use crate::driver::{CallRecord, Run};
use crate::per_stall::{self, StallMark};
use crate::strategies::Kind;
use crate::workload::{PeerPlan, Workload};
use crate::{Ending, SimConfig};

/// A call that ended without an answer after more than this long stalled its caller.
pub const STALL: Duration = Duration::from_secs(10);

/// One silence of one peer, as a strategy handled it.
#[derive(Clone, Debug)]
pub struct Episode {
    /// The silent peer.
    pub peer: &'static str,
    /// Calls in flight when the silence began that the peer would never answer.
    pub in_flight: usize,
    /// From the silence's start to the end of the last of those calls.
    pub cut: Option<Duration>,
    /// The deadline the strategy gave new calls to the peer when the silence began.
    pub deadline: Option<Duration>,
    /// The longest any call waited on the silent peer (from the silence's start, or its
    /// own, to its end).
    pub longest_wait: Option<Duration>,
    /// From the peer's return to the start of the first call it answered after it (`None`:
    /// none before the run ended).
    pub return_lag: Option<Duration>,
}

impl Episode {
    /// `cut` in units of `deadline`.
    pub fn cut_in_deadlines(&self) -> Option<f64> {
        Some(self.cut?.as_secs_f64() / self.deadline?.as_secs_f64())
    }
}

/// The figures of one strategy on one workload.
#[derive(Clone, Debug)]
pub struct Row {
    /// The strategy.
    pub kind: Kind,
    /// Calls made.
    pub calls: usize,
    /// Calls to healthy peers (and to silent peers before their silence) that the peer
    /// would have answered.
    pub healthy_calls: usize,
    /// Of those, calls the strategy ended without the answer.
    pub false_interrupts: usize,
    /// The healthy peer (or route of a peer, or group of replicas) with the highest
    /// false-interrupt rate, and that rate (%).
    pub worst_peer: Option<(String, f64)>,
    /// Per peer name (and route): calls the peer would have answered, and of those the
    /// strategy ended without the answer, in the order the peers first appear.
    pub per_peer: Vec<(String, usize, usize)>,
    /// Calls that ended without an answer after more than [`STALL`].
    pub stalled: usize,
    /// The stalling host's stalls, and the run's end (empty if no peer stalls).
    pub stalls: Vec<StallMark>,
    /// The longest call of the run, however it ended.
    pub longest: Duration,
    /// Calls the strategy never ended.
    pub hung: usize,
    /// The silences of the workload.
    pub episodes: Vec<Episode>,
    /// Time calls spent waiting on a silent peer before they ended.
    pub wasted: Duration,
    /// Calls to a peer back from silence that it would have answered but did not get to.
    pub lost_after_return: usize,
}

impl Row {
    /// Computes the figures of `run`.
    pub fn new(kind: Kind, plans: &[PeerPlan], run: &Run) -> Row {
        let unanswered = |c: &CallRecord| c.ending != Ending::Answered;
        let mut row = Row {
            kind,
            calls: run.calls.len(),
            healthy_calls: 0,
            false_interrupts: 0,
            worst_peer: None,
            per_peer: Vec::new(),
            stalled: run
                .calls
                .iter()
                .filter(|c| unanswered(c) && c.end - c.start > STALL)
                .count(),
            longest: run
                .calls
                .iter()
                .map(|c| c.end - c.start)
                .max()
                .unwrap_or_default(),
            hung: run
                .calls
                .iter()
                .filter(|c| c.ending == Ending::Hung)
                .count(),
            stalls: per_stall::marks(plans, run),
            episodes: Vec::new(),
            wasted: Duration::ZERO,
            lost_after_return: 0,
        };
        for (i, plan) in plans.iter().enumerate() {
            let calls: Vec<&CallRecord> = run
                .calls
                .iter()
                .filter(|c| usize::from(c.peer) == i)
                .collect();
            let from = plan.silences.first().map_or(Duration::MAX, |s| s.0);
            let healthy: Vec<_> = calls
                .iter()
                .filter(|c| c.start < from && c.answer_in.is_some())
                .collect();
            for route in 0..=u8::from(plan.spec.slow_route.is_some()) {
                let name = plan.route_name(route);
                let of_route = healthy.iter().filter(|c| c.route == route);
                let (n, falses) =
                    of_route.fold((0, 0), |(n, f), c| (n + 1, f + usize::from(unanswered(c))));
                row.healthy_calls += n;
                row.false_interrupts += falses;
                match row.per_peer.iter_mut().find(|p| p.0 == name) {
                    Some(p) => (p.1, p.2) = (p.1 + n, p.2 + falses),
                    None => row.per_peer.push((name, n, falses)),
                }
            }
            for (k, &(from, until)) in plan.silences.iter().enumerate() {
                // This silence's calls: from the end of the one before to the next one.
                let next = plan.silences.get(k + 1).map_or(Duration::MAX, |s| s.0);
                let prev = k
                    .checked_sub(1)
                    .map_or(Duration::ZERO, |p| plan.silences[p].1);
                let lost: Vec<_> = (calls.iter())
                    .filter(|c| c.answer_in.is_none() && c.start >= prev && c.start < until)
                    .collect();
                let waited = |c: &&&CallRecord| c.end - c.start.max(from);
                row.wasted += lost.iter().map(waited).sum::<Duration>();
                let in_flight: Vec<_> = lost.iter().filter(|c| c.start < from).collect();
                let after: Vec<_> = (calls.iter())
                    .filter(|c| c.start >= until && c.start < next)
                    .collect();
                row.lost_after_return += after.iter().filter(|c| unanswered(c)).count();
                row.episodes.push(Episode {
                    peer: plan.spec.name,
                    in_flight: in_flight.len(),
                    cut: in_flight.iter().map(|c| c.end - from).max(),
                    deadline: run.deadline_at_silence[i].get(k).copied(),
                    longest_wait: lost.iter().map(waited).max(),
                    return_lag: (after.iter())
                        .find(|c| c.ending == Ending::Answered)
                        .map(|c| c.start - until),
                });
            }
        }
        for (name, n, falses) in &row.per_peer {
            let rate = pct(*falses, *n);
            if !matches!(row.worst_peer, Some((_, worst)) if worst >= rate) {
                row.worst_peer = Some((name.clone(), rate));
            }
        }
        row
    }

    /// Median and max over the episodes of `f`; `None` counts as longer than any value
    /// and reads `missing`. Episodes where `f` does not apply are left out.
    fn spread(
        &self,
        f: impl Fn(&Episode) -> Option<Option<Duration>>,
        missing: &str,
    ) -> (String, String) {
        let show = |d: Option<Duration>| d.map_or(missing.to_string(), human);
        match median_max(self.episodes.iter().filter_map(f).collect()) {
            Some((med, max)) => (show(med), show(max)),
            None => ("-".into(), "-".into()),
        }
    }

    /// Median and max return lag over the silences (`None`: a peer never let back in).
    pub fn return_lag(&self) -> Option<Spread> {
        median_max(self.episodes.iter().map(|e| e.return_lag).collect())
    }

    /// The longest cut of a silence, in units of the peer's deadline when it began.
    pub fn max_cut_in_deadlines(&self) -> Option<f64> {
        self.episodes
            .iter()
            .filter_map(Episode::cut_in_deadlines)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    }

    /// False interrupts, in percent of the calls the peers would have answered.
    pub fn false_interrupt_pct(&self) -> f64 {
        pct(self.false_interrupts, self.healthy_calls)
    }

    /// The row's cells.
    fn cells(&self, silence: bool) -> Vec<String> {
        let mut cells = vec![
            self.kind.name().to_string(),
            self.calls.to_string(),
            format!(
                "{:.3}% ({})",
                self.false_interrupt_pct(),
                self.false_interrupts
            ),
            self.worst_peer
                .as_ref()
                .map_or("-".into(), |(name, rate)| format!("{rate:.2}% {name}")),
            self.stalled.to_string(),
            human(self.longest),
            self.hung.to_string(),
        ];
        if !silence {
            return cells;
        }
        let (cut_med, cut_max) = self.spread(|e| e.cut.map(Some), "-");
        let in_deadlines = self.max_cut_in_deadlines();
        let (lag_med, lag_max) = self.spread(|e| Some(e.return_lag), "none");
        cells.extend([
            cut_med,
            cut_max,
            in_deadlines.map_or("-".into(), |x| format!("{x:.2}")),
            format!("{:.1}s", self.wasted.as_secs_f64()),
            self.lost_after_return.to_string(),
            lag_med,
            lag_max,
        ]);
        cells
    }

    /// One line per silence: how the strategy handled it.
    fn episode_line(&self) -> String {
        let mut line = format!("- {}:", self.kind.name());
        for e in &self.episodes {
            let opt = |d: Option<Duration>, missing: &str| d.map_or(missing.into(), human);
            let _ = write!(
                line,
                " `{}` {} in flight, cut {} (deadline {}), longest wait {}, return lag {};",
                e.peer,
                e.in_flight,
                opt(e.cut, "-"),
                opt(e.deadline, "-"),
                opt(e.longest_wait, "-"),
                opt(e.return_lag, "none")
            );
        }
        line.pop();
        line
    }
}

/// The rows of one workload.
#[derive(Clone, Debug)]
pub struct Table {
    /// The workload.
    pub workload: Workload,
    /// One row per strategy.
    pub rows: Vec<Row>,
}

impl Table {
    /// Column heads.
    const HEAD: [&'static str; 7] = [
        "strategy",
        "calls",
        "false interrupts",
        "worst peer",
        "stalled >10s",
        "longest call",
        "hung",
    ];
    /// The further column heads of workloads with silent peers.
    const SILENCE_HEAD: [&'static str; 7] = [
        "cut: median",
        "cut: max",
        "max cut / deadline",
        "wasted in flight",
        "lost after return",
        "return lag: median",
        "return lag: max",
    ];

    fn has_silence(&self) -> bool {
        self.workload.peers.iter().any(|p| p.silence.is_some())
    }

    /// Whether the table breaks false interrupts down per peer: workloads of quiet peers
    /// or of several routes, where the worst one hides the rest.
    fn per_peer(&self) -> bool {
        let peers = &self.workload.peers;
        peers.iter().any(|p| {
            p.pace.is_some() || p.slow_route.is_some() || p.loss.is_some() || p.eager || p.stalls
        })
    }

    /// One row per peer (or route), one column per strategy: its false-interrupt rate.
    fn write_per_peer(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "False interrupts per peer (of the calls each would have answered; replicas \
             together):\n"
        );
        let names: Vec<&str> = self.rows.iter().map(|r| r.kind.name()).collect();
        let _ = writeln!(out, "| peer | calls | {} |", names.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(names.len() + 2));
        let Some(first) = self.rows.first() else {
            return;
        };
        for (i, (peer, calls, _)) in first.per_peer.iter().enumerate() {
            let cells: Vec<String> = self
                .rows
                .iter()
                .map(|r| {
                    let (_, n, f) = &r.per_peer[i];
                    format!("{:.2}% ({f})", pct(*f, *n))
                })
                .collect();
            let _ = writeln!(out, "| {peer} | {calls} | {} |", cells.join(" | "));
        }
        out.push('\n');
    }

    fn write(&self, out: &mut String) {
        let w = &self.workload;
        let _ = writeln!(out, "### {}: {}\n", w.name, w.about);
        for p in &w.peers {
            let mut line = format!("- `{}`: {}", p.name, p.tail.describe());
            if let Some((at, f)) = p.shift {
                let _ = write!(line, ", x{f} from {:.0}% of the run", at * 100.0);
            }
            if let Some((a, b)) = p.silence {
                let _ = write!(
                    line,
                    ", silent {:.0}%-{:.0}% of the run",
                    a * 100.0,
                    b * 100.0
                );
            }
            if let Some((times, every)) = p.repeat {
                let _ = write!(line, ", {times} times, {:.0}% apart", every * 100.0);
            }
            if let Some(loss) = p.loss {
                let _ = write!(line, ", {:.0}% of calls lose a packet", loss * 100.0);
            }
            if p.stalls {
                let _ = write!(line, ", CPU stalls 100-300ms every 30s");
            }
            if p.eager {
                let _ = write!(line, ", callers start together");
            }
            if let Some(pace) = p.pace {
                let _ = write!(line, ", one caller, {pace} calls a minute");
            }
            if p.replicas > 1 {
                let _ = write!(line, ", {} peers", p.replicas);
            }
            if let Some(slow) = p.slow_route {
                let _ = write!(
                    line,
                    "; route `{}` (1 call in {}): {}",
                    slow.name,
                    slow.one_in,
                    slow.tail.describe()
                );
            }
            let _ = writeln!(out, "{line}");
        }
        let mut head = Self::HEAD.to_vec();
        if self.has_silence() {
            head.extend(Self::SILENCE_HEAD);
        }
        let _ = writeln!(out, "\n| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.cells(self.has_silence()).join(" | "));
        }
        out.push('\n');
        if self.per_peer() {
            self.write_per_peer(out);
        }
        if self.rows.iter().any(|r| !r.stalls.is_empty()) {
            let _ = writeln!(
                out,
                "Per stall (false interrupts of the stalling peers, by the stall nearest \
                 their start; how long each stalling peer could say nothing, as the stall \
                 began, before its calls were cut as a silence):\n"
            );
            for row in &self.rows {
                let _ = writeln!(out, "{}", per_stall::line(row.kind.name(), &row.stalls));
            }
            out.push('\n');
        }
        if self.has_silence() {
            let _ = writeln!(out, "Per silence:\n");
            for row in &self.rows {
                let _ = writeln!(out, "{}", row.episode_line());
            }
            out.push('\n');
        }
    }
}

/// Every table of a simulation, and how it was made.
#[derive(Clone, Debug)]
pub struct Report {
    /// The configuration.
    pub config: SimConfig,
    /// One table per workload.
    pub tables: Vec<Table>,
}

impl Report {
    /// The report as Markdown: the same configuration always gives the same text.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "seed {}; {} simulated per run; {} callers per peer, think time exp(mean {}); \
             paused clock\n\n",
            c.seed,
            human(c.duration),
            c.callers,
            human(c.think)
        );
        for table in &self.tables {
            table.write(&mut out);
        }
        if self.tables.len() > 1 {
            self.write_overall(&mut out);
        }
        out
    }

    /// False interrupts over every workload's calls that the peers would have answered,
    /// per strategy, and without the stalling host's workload.
    fn write_overall(&self, out: &mut String) {
        let names: Vec<&str> = self.tables.iter().map(|t| t.workload.name).collect();
        let _ = writeln!(
            out,
            "### all workloads: false interrupts over every call the peers would have \
             answered ({})\n",
            names.join(", ")
        );
        let _ = writeln!(
            out,
            "| strategy | healthy calls | false interrupts | without cpu-stall |"
        );
        let _ = writeln!(out, "|---|---|---|---|");
        let Some(first) = self.tables.first() else {
            return;
        };
        for kind in first.rows.iter().map(|r| r.kind) {
            let sum = |stalls: bool| {
                let rows = (self.tables.iter())
                    .filter(|t| stalls || t.workload.name != "cpu-stall")
                    .filter_map(|t| t.rows.iter().find(|r| r.kind == kind));
                rows.fold((0, 0), |(n, f), r| {
                    (n + r.healthy_calls, f + r.false_interrupts)
                })
            };
            let ((n, f), (n_, f_)) = (sum(true), sum(false));
            let _ = writeln!(
                out,
                "| {} | {n} | {:.4}% ({f}) | {:.4}% ({f_}) |",
                kind.name(),
                pct(f, n),
                pct(f_, n_)
            );
        }
        out.push('\n');
    }

    /// The row of `kind` in the table of the workload named `workload`.
    pub fn row(&self, workload: &str, kind: Kind) -> Option<&Row> {
        let table = self.tables.iter().find(|t| t.workload.name == workload)?;
        table.rows.iter().find(|r| r.kind == kind)
    }
}

/// A median and a max; `None` for a value longer than any (e.g. a peer never let back in).
pub type Spread = (Option<Duration>, Option<Duration>);

/// Median and max of `v`, `None` counting as longer than any value; `None` if empty.
fn median_max(mut v: Vec<Option<Duration>>) -> Option<Spread> {
    v.sort_by_key(|d| d.unwrap_or(Duration::MAX));
    Some((*v.get(v.len().saturating_sub(1) / 2)?, *v.last()?))
}

/// `n` of `of`, in percent.
fn pct(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        n as f64 * 100.0 / of as f64
    }
}

/// A duration for people: `850ms`, `1.25s`, `30s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        let s = format!("{:.2}", ms / 1e3);
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}
