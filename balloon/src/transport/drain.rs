//! The queue-draining loop every device model shares: take chains off the available ring with
//! strict validation, hand each to the device, put it on the used ring, and signal the guest once
//! at the end.

use super::chain::{add_used, notify_used, pop_chain_into, ChainRef, Desc, PoppedHead};
use super::{GuestMemoryMmap, InterruptHandle, Queue, QueueT};
use crate::error::ChainError;

/// One chain as the device sees it.
#[derive(Debug)]
pub enum Chain<'a> {
    /// A chain whose buffers all lie in guest memory.
    Valid(ChainRef<'a>),
    /// A chain with a buffer outside guest memory (its structure is sound). Devices answer it
    /// with an error status where they can, and count it.
    Rejected {
        /// The chain, its buffers as the guest described them.
        chain: ChainRef<'a>,
        /// What was wrong.
        error: ChainError,
    },
}

/// What the device did with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Put it on the used ring with this many bytes written.
    Used(u32),
    /// Keep it (the device returns it later, e.g. the balloon's statistics buffer); put `release`
    /// on the used ring instead, if given, with nothing written.
    Held {
        /// An older chain to give back now.
        release: Option<u16>,
    },
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Chains taken off the available ring.
    pub chains: u32,
    /// The budget ran out with more chains available on the ring.
    pub more: bool,
}

/// Serves at most `budget` chains of `queue`: each is popped (see [`pop_chain_into`]), passed to
/// `handle` with its buffers in `descs` (a vector the device keeps, so that no chain allocates),
/// and completed as `handle` says. The guest is signalled once at the end if anything was put on
/// the used ring. `Err` means the ring is broken: the device must ask for a reset.
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &InterruptHandle,
    descs: &mut Vec<Desc>,
    budget: u32,
    mut handle: impl FnMut(Chain<'_>) -> Completion,
) -> Result<Drained, ChainError> {
    let mut drained = Drained::default();
    let mut used = 0u32;
    let outcome = loop {
        if drained.chains == budget {
            // More only if the driver really made more available: a round that would find the
            // ring empty costs the caller a turn for nothing. (A chain posted after this check
            // comes with its own notification.) An unreadable index is left for the next turn's
            // pop to report.
            drained.more = queue
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .map_or(true, |idx| idx.0 != queue.next_avail());
            break Ok(());
        }
        let (head, completion) = match pop_chain_into(queue, mem, descs) {
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
            Ok(Some(PoppedHead::Chain(head))) => {
                (head, handle(Chain::Valid(ChainRef { head, descs })))
            }
            Ok(Some(PoppedHead::Rejected { head, error })) => {
                let chain = ChainRef { head, descs };
                (head, handle(Chain::Rejected { chain, error }))
            }
        };
        drained.chains += 1;
        let (give_back, len) = match completion {
            Completion::Used(len) => (Some(head), len),
            Completion::Held { release } => (release, 0),
        };
        if let Some(h) = give_back {
            if let Err(e) = add_used(queue, mem, h, len) {
                break Err(e);
            }
            used += 1;
        }
    };
    // Signal what was completed even when the ring broke afterwards.
    if used > 0 {
        notify_used(queue, mem, interrupt)?;
    }
    outcome.map(|()| drained)
}
