//! The bound on one node's open watch streams (`--max-watches`).
//!
//! Every `WatchRuns` and `WatchEvents` stream, over gRPC or the REST
//! gateway's `:watch`, holds a slot while it is open: it costs a task, a
//! subscription to the state machine's feed and a buffer of up to 256
//! events. Past the bound a new watch is refused at once with
//! `RESOURCE_EXHAUSTED`, naming the bound, so a flood of watchers cannot
//! grow the node's memory without end or slow the apply loop that feeds
//! them; the client retries later or watches through another node. A
//! stream gives its slot back when it ends: the client went away (its
//! task notices at once, also while no event is flowing), the node shuts
//! down, or the caller's credential stopped being valid.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Open watches per node unless `--max-watches` says otherwise.
pub const DEFAULT_MAX_WATCHES: usize = 1024;

/// The slots of one node's watches.
#[derive(Clone, Debug)]
pub struct WatchSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

/// One open watch's slot; dropping it frees the slot.
pub type WatchSlot = OwnedSemaphorePermit;

impl WatchSlots {
    /// Room for `max` open watches.
    pub fn new(max: usize) -> WatchSlots {
        WatchSlots {
            slots: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A slot for a new watch, or `RESOURCE_EXHAUSTED` when all are taken.
    pub fn take(&self) -> Result<WatchSlot, Status> {
        self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this node already serves {} watches, its limit (--max-watches): \
                 retry later, or watch through another node",
                self.max
            ))
        })
    }

    /// Watches open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_past_the_bound_is_refused_until_one_is_given_back() {
        let slots = WatchSlots::new(2);
        let first = slots.take().unwrap();
        let _second = slots.take().unwrap();
        let refused = slots.take().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("2 watches"), "{}", refused.message());
        assert!(
            refused.message().contains("--max-watches"),
            "{}",
            refused.message()
        );
        assert_eq!(slots.open(), 2);
        drop(first);
        assert_eq!(slots.open(), 1);
        let _again = slots.take().expect("a slot was given back");
    }
}
