//! The write-back retry timer: a thread that calls [`Pool::retry_writebacks`] every period, so
//! that pages whose backing-file write failed are written once the file works again. Every
//! process that owns a pool under write-back runs one (`gcma-hostd`, the VMM's embedded pool).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Pool;
use crate::api::PoolError;

/// How often the retry timer looks for due retries: well under the first backoff step
/// ([`super::writeback_backoff`]), and cheap when nothing waits (one lock, an empty list).
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_millis(20);

/// The running retry timer; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct WritebackRetrier {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WritebackRetrier {
    /// Starts the timer on `pool`, looking for due retries every `period`. It holds the pool
    /// weakly: it ends by itself once the pool is gone.
    pub fn start(pool: &Arc<Pool>, period: Duration) -> Result<WritebackRetrier, PoolError> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak: Weak<Pool> = Arc::downgrade(pool);
        let thread = std::thread::Builder::new()
            .name("gcma-writeback".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Housekeeping);
                    while !stop.load(Ordering::Acquire) {
                        std::thread::park_timeout(period);
                        if stop.load(Ordering::Acquire) {
                            break;
                        }
                        let Some(pool) = weak.upgrade() else { break };
                        pool.retry_writebacks();
                    }
                }
            })
            .map_err(|e| PoolError::io("starting the write-back retry thread", e))?;
        Ok(WritebackRetrier {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for WritebackRetrier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                log::error!("gcma pool: the write-back retry thread panicked");
            }
        }
    }
}
