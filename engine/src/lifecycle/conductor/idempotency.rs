//! Answers by request id, so a repeated request does nothing again and gets the first
//! call's answer.
//!
//! A request id is *pending* from the moment its call passes its checks until it finishes;
//! a repeat that arrives meanwhile (a client that timed out and retried) waits for the
//! first call's outcome instead of acting a second time. Successful answers are kept (the
//! last `cap` per scope); errors are not (they changed nothing, so a retry re-evaluates).
//!
//! A call whose node never answered (its stream broke or it timed out mid-action) ends
//! *unresolved*: nobody knows whether the host did it. Its id is not given a final answer —
//! that would make every retry repeat a failure the host may never have had — but it is
//! remembered as unresolved, so a retry with the same id can tell "the first attempt took
//! effect after all" from a fresh request (see `Conductor::begin_with`). Otherwise a retry
//! runs the action again, which the node's state machine makes safe for power actions
//! (stopping a stopped domain is a no-op).

use std::collections::VecDeque;
use std::future::Future;
use std::hash::Hash;

use dashmap::DashMap;
use tokio::sync::watch;

use super::ConductorError;

/// What a pending request's waiters receive.
pub(crate) type Outcome<F> = Result<F, ConductorError>;

/// What a lookup found.
pub(crate) enum Lookup<D, F> {
    /// Unknown id (or none given): go ahead.
    New,
    /// Answered before: the stored answer.
    Done(D),
    /// Still running: wait for it with [`wait`].
    Pending(watch::Receiver<Option<Outcome<F>>>),
}

#[derive(Debug)]
enum Slot<D, F> {
    Pending(watch::Sender<Option<Outcome<F>>>),
    Done(D),
    /// Ended without knowing whether the host acted; looks up as `New`.
    Unresolved,
}

impl<D, F> Slot<D, F> {
    /// Kept after its call ended (counted against the cap; pending ones are not).
    fn ended(&self) -> bool {
        !matches!(self, Slot::Pending(_))
    }
}

/// Recent request ids of one scope (a server, a project, a host). `D` is what is kept for
/// a finished request, `F` what waiters of a pending one get.
#[derive(Debug)]
pub(crate) struct RequestLog<D, F> {
    entries: VecDeque<(String, Slot<D, F>)>,
}

impl<D, F> Default for RequestLog<D, F> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }
}

impl<D: Clone, F: Clone> RequestLog<D, F> {
    /// Looks `id` up; an empty id is always `New`.
    pub fn lookup(&self, id: &str) -> Lookup<D, F> {
        if id.is_empty() {
            return Lookup::New;
        }
        match self.entries.iter().find(|(k, _)| k == id) {
            None | Some((_, Slot::Unresolved)) => Lookup::New,
            Some((_, Slot::Done(d))) => Lookup::Done(d.clone()),
            Some((_, Slot::Pending(tx))) => Lookup::Pending(tx.subscribe()),
        }
    }

    /// Whether `id`'s last call ended unresolved (see the module doc).
    pub fn is_unresolved(&self, id: &str) -> bool {
        !id.is_empty()
            && self
                .entries
                .iter()
                .any(|(k, s)| k == id && matches!(s, Slot::Unresolved))
    }

    /// Marks `id` pending (nothing for an empty id or `cap` 0), replacing an unresolved
    /// entry of the same id.
    pub fn start(&mut self, id: &str, cap: usize) {
        if id.is_empty() || cap == 0 {
            return;
        }
        self.entries
            .retain(|(k, s)| !(k == id && matches!(s, Slot::Unresolved)));
        let (tx, _) = watch::channel(None);
        self.entries.push_back((id.to_string(), Slot::Pending(tx)));
    }

    /// Ends `id` unresolved: wakes its waiters with `outcome` and remembers that nobody
    /// knows whether it took effect. A retry looks up as `New`.
    pub fn unresolve(&mut self, id: &str, outcome: Outcome<F>, cap: usize) {
        if id.is_empty() {
            return;
        }
        let Some(pos) = self.entries.iter().position(|(k, _)| k == id) else {
            return;
        };
        if let Slot::Pending(tx) = &self.entries[pos].1 {
            tx.send_replace(Some(outcome));
        }
        self.entries[pos].1 = Slot::Unresolved;
        self.evict(cap);
    }

    /// Finishes `id`: wakes its waiters with `outcome`, keeps `done` (if any) and forgets
    /// the oldest finished ids beyond `cap`. Pending ids are never forgotten: their waiters
    /// need them.
    pub fn finish(&mut self, id: &str, done: Option<D>, outcome: Outcome<F>, cap: usize) {
        if id.is_empty() {
            return;
        }
        let Some(pos) = self.entries.iter().position(|(k, _)| k == id) else {
            return;
        };
        if let Slot::Pending(tx) = &self.entries[pos].1 {
            tx.send_replace(Some(outcome));
        }
        match done {
            Some(d) => self.entries[pos].1 = Slot::Done(d),
            None => {
                self.entries.remove(pos);
            }
        }
        self.evict(cap);
    }

    /// Remembers `id` as the newest ended entry: answered with `done`, or unresolved when
    /// `None` (nothing for an empty id or `cap` 0). An older entry of the same id is
    /// replaced, as a retry's `start` replaces it. For rebuilding a log after a restart.
    pub fn remember(&mut self, id: &str, done: Option<D>, cap: usize) {
        if id.is_empty() || cap == 0 {
            return;
        }
        self.entries.retain(|(k, _)| k != id);
        let slot = match done {
            Some(d) => Slot::Done(d),
            None => Slot::Unresolved,
        };
        self.entries.push_back((id.to_string(), slot));
        self.evict(cap);
    }

    /// Forgets the oldest ended ids beyond `cap`.
    fn evict(&mut self, cap: usize) {
        let mut ended = self.entries.iter().filter(|(_, s)| s.ended()).count();
        while ended > cap {
            match self.entries.iter().position(|(_, s)| s.ended()) {
                Some(p) => {
                    self.entries.remove(p);
                    ended -= 1;
                }
                None => break,
            }
        }
    }
}

/// Runs `call` once per request id `id` of the `scope` entry of `logs` (a call that is not
/// on one server: a create per project, an evacuation per host). A repeat of a finished
/// call gets its kept answer, a repeat of a running one waits for it. The check and the
/// mark happen under the entry's lock, so two concurrent repeats cannot both run; the lock
/// is not held while `call` runs.
pub(crate) async fn once<K, T>(
    logs: &DashMap<K, RequestLog<T, T>>,
    scope: K,
    id: &str,
    cap: usize,
    call: impl Future<Output = Outcome<T>>,
) -> Outcome<T>
where
    K: Eq + Hash + Clone,
    T: Clone,
{
    let pending = {
        let mut log = logs.entry(scope.clone()).or_default();
        match log.lookup(id) {
            Lookup::Done(done) => return Ok(done),
            Lookup::Pending(rx) => Some(rx),
            Lookup::New => {
                log.start(id, cap);
                None
            }
        }
    };
    if let Some(rx) = pending {
        return wait(rx).await;
    }
    let result = call.await;
    if let Some(mut log) = logs.get_mut(&scope) {
        log.finish(id, result.as_ref().ok().cloned(), result.clone(), cap);
    }
    result
}

/// Waits for a pending request's outcome.
pub(crate) async fn wait<F: Clone>(mut rx: watch::Receiver<Option<Outcome<F>>>) -> Outcome<F> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => match &*v {
            Some(o) => o.clone(),
            None => Err(abandoned()),
        },
        Err(_) => Err(abandoned()),
    }
}

fn abandoned() -> ConductorError {
    ConductorError::Internal(
        "the first request with this request_id ended without an answer; retry with a new request_id"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_then_done_then_evicted() {
        let mut log: RequestLog<u32, u32> = RequestLog::default();
        assert!(matches!(log.lookup(""), Lookup::New));
        assert!(matches!(log.lookup("a"), Lookup::New));
        log.start("a", 2);
        let Lookup::Pending(rx) = log.lookup("a") else {
            panic!("a is pending")
        };
        let waiter = tokio::spawn(wait(rx));
        log.finish("a", Some(1), Ok(10), 2);
        assert_eq!(waiter.await.unwrap().unwrap(), 10);
        assert!(matches!(log.lookup("a"), Lookup::Done(1)));
        for (id, v) in [("b", 2), ("c", 3)] {
            log.start(id, 2);
            log.finish(id, Some(v), Ok(v), 2);
        }
        assert!(
            matches!(log.lookup("a"), Lookup::New),
            "the oldest is forgotten"
        );
        assert!(matches!(log.lookup("c"), Lookup::Done(3)));
        // An error is not kept.
        log.start("d", 2);
        log.finish("d", None, Err(ConductorError::Internal("x".into())), 2);
        assert!(matches!(log.lookup("d"), Lookup::New));
        // An unresolved id wakes its waiters, looks up as new, and is remembered as
        // unresolved until a retry starts it again.
        log.start("u", 2);
        let Lookup::Pending(rx) = log.lookup("u") else {
            panic!("u is pending")
        };
        let waiter = tokio::spawn(wait(rx));
        log.unresolve("u", Err(ConductorError::Unavailable("lost".into())), 2);
        assert!(matches!(
            waiter.await.unwrap(),
            Err(ConductorError::Unavailable(_))
        ));
        assert!(matches!(log.lookup("u"), Lookup::New));
        assert!(log.is_unresolved("u") && !log.is_unresolved("c") && !log.is_unresolved(""));
        log.start("u", 2);
        assert!(!log.is_unresolved("u"), "a retry replaces it");
        log.finish("u", Some(7), Ok(7), 2);
        assert!(matches!(log.lookup("u"), Lookup::Done(7)));
        assert_eq!(log.entries.iter().filter(|(k, _)| k == "u").count(), 1);
        // Nothing is remembered with a capacity of 0.
        let mut none: RequestLog<u32, u32> = RequestLog::default();
        none.start("a", 0);
        none.remember("b", Some(1), 0);
        assert!(matches!(none.lookup("a"), Lookup::New));
        assert!(matches!(none.lookup("b"), Lookup::New));
    }

    #[test]
    fn remember_rebuilds_in_order_within_the_cap() {
        let mut log: RequestLog<u32, u32> = RequestLog::default();
        log.remember("a", None, 2);
        log.remember("b", Some(2), 2);
        log.remember("", Some(9), 2);
        assert!(log.is_unresolved("a") && matches!(log.lookup("a"), Lookup::New));
        assert!(matches!(log.lookup("b"), Lookup::Done(2)));
        // A later entry of the same id replaces the earlier one (a settled retry).
        log.remember("a", Some(1), 2);
        assert!(!log.is_unresolved("a") && matches!(log.lookup("a"), Lookup::Done(1)));
        assert_eq!(log.entries.len(), 2);
        // The oldest goes beyond the cap: "b" (re-remembering "a" made it the newest).
        log.remember("c", Some(3), 2);
        assert!(matches!(log.lookup("b"), Lookup::New));
        assert!(matches!(log.lookup("a"), Lookup::Done(1)));
        assert!(matches!(log.lookup("c"), Lookup::Done(3)));
    }
}
