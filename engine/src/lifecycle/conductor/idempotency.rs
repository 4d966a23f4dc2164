//! Answers by request id, so a repeated request does nothing again and gets the first
//! call's answer.
//!
//! A request id is *pending* from the moment its call passes its checks until it finishes;
//! a repeat that arrives meanwhile (a client that timed out and retried) waits for the
//! first call's outcome instead of acting a second time. Successful answers are kept (the
//! last `cap` per scope); errors are not (they changed nothing, so a retry re-evaluates).

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
            None => Lookup::New,
            Some((_, Slot::Done(d))) => Lookup::Done(d.clone()),
            Some((_, Slot::Pending(tx))) => Lookup::Pending(tx.subscribe()),
        }
    }

    /// Marks `id` pending (nothing for an empty id or `cap` 0).
    pub fn start(&mut self, id: &str, cap: usize) {
        if id.is_empty() || cap == 0 {
            return;
        }
        let (tx, _) = watch::channel(None);
        self.entries.push_back((id.to_string(), Slot::Pending(tx)));
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
        let mut done_count = self
            .entries
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Done(_)))
            .count();
        while done_count > cap {
            match self
                .entries
                .iter()
                .position(|(_, s)| matches!(s, Slot::Done(_)))
            {
                Some(p) => {
                    self.entries.remove(p);
                    done_count -= 1;
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
        // Nothing is remembered with a capacity of 0.
        let mut none: RequestLog<u32, u32> = RequestLog::default();
        none.start("a", 0);
        assert!(matches!(none.lookup("a"), Lookup::New));
    }
}
