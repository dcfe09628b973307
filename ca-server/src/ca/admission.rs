//! Admission control in front of issuance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Bounds the issuances in flight and the queue in front of them.
///
/// A request takes a free slot at once if there is one. Otherwise it may wait, at most
/// [`Admission::WAIT`], and only if fewer than `max` others are already waiting; beyond that it
/// is shed at once. So under overload the server answers `RESOURCE_EXHAUSTED` quickly instead
/// of queueing without limit, an accepted request waits at most 100 ms for its slot, and no
/// single burst can build a backlog the server would still be working through seconds later.
#[derive(Debug)]
pub struct Admission {
    slots: tokio::sync::Semaphore,
    max: usize,
    waiting: AtomicUsize,
}

impl Admission {
    pub const WAIT: Duration = Duration::from_millis(100);

    pub fn new(max: usize) -> Admission {
        Admission {
            slots: tokio::sync::Semaphore::new(max),
            max,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Issuances currently admitted.
    pub fn in_flight(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// A slot, or `None` when the request is to be shed.
    pub(crate) async fn admit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Some(permit);
        }
        let queued = Queued::join(&self.waiting, self.max)?;
        let permit = tokio::time::timeout(Admission::WAIT, self.slots.acquire()).await;
        drop(queued);
        permit.ok()?.ok()
    }
}

/// A place in the admission queue, given back when dropped (also when the request is cancelled).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn join(waiting: &'a AtomicUsize, max: usize) -> Option<Queued<'a>> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Queued(waiting))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(256)
    }
}
