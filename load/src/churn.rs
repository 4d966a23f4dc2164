//! The `churn-N` scenario: clients loop `SelectDestinations` + `Release` (as in flat) on N
//! simulated nodes while, every second, `--churn` nodes leave for good (their agents stop;
//! the engine marks the hosts down after `down_after`), as many join under new names, and as
//! many pause (stop, then come back under the same name after 0.5–2.5 × `down_after`,
//! re-registering: some never go down, some do and come back). Half the victims are hosts
//! that clients were just placed on: with claims released at once, a spreading scheduler
//! favours a few hosts, and losing exactly those is what tests it.
//!
//! A sampler lists the hosts about once a second (at least three times per `down_after`):
//! the up/down timeline of the report, and the snapshots for the audit. What is checked,
//! per successful claim (host, sent, answered):
//! - **stopped**: the host's agent had been stopped more than 2 × `down_after` before the
//!   claim was sent and was not restarted before it was answered — from the harness's own
//!   record of stops and starts, so exact up to the engine's `down_after` and its monitor
//!   tick, which the 2× margin covers;
//! - **seen down**: every snapshot from one that ended at least 2 × `down_after` before the
//!   claim until the first one that started after the answer showed the host down. An
//!   up-period always lasts at least `down_after` (a host that registers stays up until it
//!   has been silent that long), longer than the sampling period, so a host the snapshots
//!   show down throughout was down throughout (best effort: it relies on each snapshot
//!   taking less than `down_after`).
//!
//! `RESOURCE_EXHAUSTED` is not expected: the cloud stays far from full.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Conn;
use parking_lot::Mutex;

use crate::fleet::Fleet;
use crate::{Args, FLAVORS, Report, Sched, Tally, release_timed, report, spec_in, tally_claims};

/// One successful claim: host name, when it was sent and answered.
struct Claim {
    host: Arc<str>,
    sent: Instant,
    answered: Instant,
}

/// One host list: when it was taken, which hosts it showed down, which it showed at all.
struct Snapshot {
    started: Instant,
    ended: Instant,
    down: HashSet<String>,
}

/// The harness's record of one agent's stops and starts after the measured phase began
/// (before it, every agent ran).
#[derive(Default)]
struct History {
    /// (when, running after it), in order.
    events: Vec<(Instant, bool)>,
}

/// Runs the scenario for `--duration` [30 s].
pub(crate) async fn run(
    channels: &[Conn],
    scheds: &[Sched],
    args: &Args,
    run_id: &str,
    fleet: &Arc<Fleet>,
    hosts: usize,
) -> Result<Report, String> {
    let initial = args.nodes.unwrap_or(hosts);
    let per_tick = args.churn.unwrap_or((initial / 1000).max(1));
    // The engine's default when it is not configured: three heartbeat intervals.
    let down_after = fleet.heartbeat() * 3;
    let scope = fleet.scope();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Duration::from_secs_f64(args.duration_or(30.0));
    let start = Instant::now();
    // Hosts recently placed on, newest last: the churn's favourite victims.
    let hot: Arc<Mutex<VecDeque<Arc<str>>>> = Arc::default();

    // Clients: flat's loop on the fleet's hosts, keeping every claim for the audit.
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let mut sched = scheds[c % scheds.len()].clone();
        let (tally, stop, scope, hot) = (tally.clone(), stop.clone(), scope.clone(), hot.clone());
        let run_id = run_id.to_string();
        let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_add(c as u64));
        clients.push(tokio::spawn(async move {
            let mut sel_h = report::histogram();
            let mut rel_h = report::histogram();
            let mut claims = Vec::new();
            let mut names: HashMap<String, Arc<str>> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let flavor = FLAVORS[rng.usize(..FLAVORS.len())].0;
                let sent = Instant::now();
                let r = sched.select(spec_in(flavor, &run_id, &scope)).await;
                let answered = Instant::now();
                report::record(&mut sel_h, answered - sent);
                let selections = match r {
                    Ok(resp) => resp.selections,
                    Err(e) => {
                        tally.record_error("SelectDestinations", &e);
                        continue;
                    }
                };
                tally.claims.fetch_add(1, Ordering::Relaxed);
                for s in selections {
                    let host = names
                        .entry(s.host_name)
                        .or_insert_with_key(|k| Arc::from(k.as_str()))
                        .clone();
                    {
                        let mut hot = hot.lock();
                        if hot.len() >= HOT_HOSTS {
                            hot.pop_front();
                        }
                        hot.push_back(host.clone());
                    }
                    claims.push(Claim {
                        host,
                        sent,
                        answered,
                    });
                    release_timed(&mut sched, s.consumer_uuid, &mut rel_h, &tally).await;
                }
            }
            (sel_h, rel_h, claims)
        }));
    }

    // The sampler: host lists, often enough that every up-period is seen.
    let snapshots: Arc<Mutex<Vec<Snapshot>>> = Arc::default();
    let timeline: Arc<Mutex<Vec<report::NodeSample>>> = Arc::default();
    let sampler = {
        let (stop, snapshots, timeline, fleet) = (
            stop.clone(),
            snapshots.clone(),
            timeline.clone(),
            fleet.clone(),
        );
        let channel = channels[0].clone();
        let period = (down_after / 3).min(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // One more after the clients stop, so the last claims have a snapshot after them.
            let mut last = false;
            loop {
                ticker.tick().await;
                last |= stop.load(Ordering::Relaxed);
                let started = Instant::now();
                let hosts = crate::list_providers(&channel, &fleet.scope()).await?;
                let ended = Instant::now();
                let down: HashSet<String> = hosts
                    .iter()
                    .filter(|p| !p.up)
                    .map(|p| p.name.clone())
                    .collect();
                timeline.lock().push(report::NodeSample {
                    t: (started - start).as_secs_f64(),
                    up: (hosts.len() - down.len()) as u64,
                    down: down.len() as u64,
                    running: fleet.running() as u64,
                });
                snapshots.lock().push(Snapshot {
                    started,
                    ended,
                    down,
                });
                if last {
                    return Ok::<(), String>(());
                }
            }
        })
    };

    // The churn: every second, leave, pause (and resume), join.
    let histories: Arc<Mutex<HashMap<String, History>>> = Arc::default();
    let churner = {
        let (stop, fleet, histories, hot) =
            (stop.clone(), fleet.clone(), histories.clone(), hot.clone());
        let mut rng = fastrand::Rng::with_seed(args.seed ^ 0xC4A2_1D5E);
        tokio::spawn(async move {
            let mut stats = report::ChurnStats::default();
            // Indices that run (a Vec for random picks) and paused ones with their return.
            let mut running: Vec<usize> = (0..initial).collect();
            let mut paused: Vec<(usize, Instant)> = Vec::new();
            let mut next_index = initial;
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            let record = |i: usize, up: bool| {
                histories
                    .lock()
                    .entry(fleet.name(i))
                    .or_default()
                    .events
                    .push((Instant::now(), up));
            };
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) =
                    paused.into_iter().partition(|(_, at)| *at <= now);
                paused = later;
                for (i, _) in due {
                    record(i, true);
                    fleet.start(i);
                    running.push(i);
                    stats.resumed += 1;
                }
                for _ in 0..per_tick {
                    // Keep most of the cloud: never take the last quarter.
                    if running.len() <= initial / 4 + 2 {
                        break;
                    }
                    let i = running.swap_remove(victim(&running, &hot, &fleet, &mut rng));
                    record(i, false);
                    fleet.stop(i);
                    stats.left += 1;
                    let j = running.swap_remove(victim(&running, &hot, &fleet, &mut rng));
                    record(j, false);
                    fleet.stop(j);
                    let away = down_after.mul_f64(0.5 + 2.0 * rng.f64());
                    paused.push((j, now + away));
                    stats.paused += 1;
                }
                for _ in 0..per_tick {
                    record(next_index, true);
                    fleet.start(next_index);
                    running.push(next_index);
                    next_index += 1;
                    stats.joined += 1;
                }
            }
            stats
        })
    };

    let progress = report::Progress::start(
        tally_claims(&tally),
        args.progress() && deadline > Duration::from_secs(3),
    );
    while start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sel = report::histogram();
    let mut rel = report::histogram();
    let mut claims = Vec::new();
    for t in clients {
        let (s, r, c) = t.await.map_err(|e| e.to_string())?;
        sel.add(&s).map_err(|e| e.to_string())?;
        rel.add(&r).map_err(|e| e.to_string())?;
        claims.extend(c);
    }
    progress.stop();
    let elapsed = start.elapsed().as_secs_f64();
    let mut stats = churner.await.map_err(|e| e.to_string())?;
    sampler.await.map_err(|e| e.to_string())??;

    let snapshots = std::mem::take(&mut *snapshots.lock());
    let histories = std::mem::take(&mut *histories.lock());
    let margin = down_after * 2;
    stats.checked_claims = claims.len() as u64;
    for c in &claims {
        if let Some(h) = histories.get(&*c.host) {
            if stopped_long_before(h, c, Duration::ZERO) {
                stats.claims_on_silent_hosts += 1;
            }
            if stopped_long_before(h, c, margin) {
                stats.claims_on_stopped_hosts += 1;
            }
        }
        if seen_down_throughout(&snapshots, c, margin) {
            stats.claims_on_down_hosts += 1;
        }
    }
    stats.timeline = std::mem::take(&mut *timeline.lock());
    let mut report = tally.report(
        elapsed,
        vec![
            report::summary("SelectDestinations", &sel),
            report::summary("Release", &rel),
        ],
    );
    report.churn = Some(stats);
    Ok(report)
}

/// How many recently placed-on hosts the churn chooses victims among.
const HOT_HOSTS: usize = 256;

/// The position in `running` of the next node to stop: half the time a host clients were
/// just placed on (if it still runs), otherwise any.
fn victim(
    running: &[usize],
    hot: &Mutex<VecDeque<Arc<str>>>,
    fleet: &Fleet,
    rng: &mut fastrand::Rng,
) -> usize {
    if rng.bool() {
        let pick = {
            let hot = hot.lock();
            (!hot.is_empty()).then(|| hot[rng.usize(..hot.len())].clone())
        };
        if let Some(i) = pick.and_then(|name| fleet.index_of(&name))
            && let Some(pos) = running.iter().position(|&r| r == i)
        {
            return pos;
        }
    }
    rng.usize(..running.len())
}

/// Whether the host's agent was stopped more than `margin` before the claim was sent and
/// not started again before it was answered.
fn stopped_long_before(h: &History, c: &Claim, margin: Duration) -> bool {
    let last_before = h.events.iter().rev().find(|(at, _)| *at <= c.sent);
    let restarted = h
        .events
        .iter()
        .any(|(at, up)| *up && *at > c.sent && *at <= c.answered);
    matches!(last_before, Some((at, false)) if c.sent.duration_since(*at) > margin) && !restarted
}

/// Whether every snapshot from one that ended at least `margin` before the claim until the
/// first that started after its answer showed the host down.
fn seen_down_throughout(snapshots: &[Snapshot], c: &Claim, margin: Duration) -> bool {
    // The first snapshot after the answer; without one nothing can be said.
    let after = snapshots.partition_point(|s| s.started < c.answered);
    if after == snapshots.len() {
        return false;
    }
    let Some(earliest) = c.sent.checked_sub(margin) else {
        return false;
    };
    // Walk back while the host is down; succeed once a snapshot old enough is reached.
    for s in snapshots[..=after].iter().rev() {
        if !s.down.contains(&*c.host) {
            return false;
        }
        if s.ended <= earliest {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(host: &str, sent: Instant, answered: Instant) -> Claim {
        Claim {
            host: Arc::from(host),
            sent,
            answered,
        }
    }

    #[test]
    fn a_claim_long_after_a_stop_counts_unless_restarted_meanwhile() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let margin = Duration::from_secs(4);
        let stopped = History {
            events: vec![(s(1), false)],
        };
        assert!(stopped_long_before(
            &stopped,
            &claim("h", s(10), s(11)),
            margin
        ));
        assert!(!stopped_long_before(
            &stopped,
            &claim("h", s(3), s(4)),
            margin
        ));
        let back = History {
            events: vec![(s(1), false), (s(10), true)],
        };
        assert!(!stopped_long_before(
            &back,
            &claim("h", s(9), s(11)),
            margin
        ));
        assert!(!stopped_long_before(
            &back,
            &claim("h", s(12), s(13)),
            margin
        ));
    }

    #[test]
    fn seen_down_needs_every_snapshot_down_from_long_before_until_after() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let snap = |at: u64, down: &[&str]| Snapshot {
            started: s(at),
            ended: s(at),
            down: down.iter().map(|d| d.to_string()).collect(),
        };
        let margin = Duration::from_secs(4);
        let down_all_along: Vec<_> = (0..12).map(|t| snap(t, &["h"])).collect();
        assert!(seen_down_throughout(
            &down_all_along,
            &claim("h", s(8), s(9)),
            margin
        ));
        // No snapshot after the answer: cannot tell.
        assert!(!seen_down_throughout(
            &down_all_along,
            &claim("h", s(11), s(12)),
            margin
        ));
        // Up at second 6: it may have been up at the claim.
        let flicker: Vec<_> = (0..12)
            .map(|t| snap(t, if t == 6 { &[] } else { &["h"] }))
            .collect();
        assert!(!seen_down_throughout(
            &flicker,
            &claim("h", s(8), s(9)),
            margin
        ));
        // Down only recently.
        let recent: Vec<_> = (0..12)
            .map(|t| snap(t, if t >= 7 { &["h"] } else { &[] }))
            .collect();
        assert!(!seen_down_throughout(
            &recent,
            &claim("h", s(8), s(9)),
            margin
        ));
    }
}
