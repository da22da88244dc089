//! Whether the database lately refused writes for want of space (or because it is
//! read-only): readiness reports it, so a load balancer can send traffic elsewhere.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_domain::{ClaimError, StoreError};

/// How long after a refused write readiness reports it. Past that, readiness is
/// given again, so that traffic tries the database anew once space has returned.
const REPORTED_FOR: Duration = Duration::from_secs(10);

/// The last write refused as unwritable, until a write succeeds.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    refused: Mutex<Option<(Instant, String)>>,
    /// Whether `refused` is set: every store call passes here, and the usual one
    /// (nothing refused) takes no lock.
    any: AtomicBool,
}

/// The storage error inside a store method's error, if any.
pub(crate) trait HasStoreError {
    fn store_error(&self) -> Option<&StoreError>;
}

impl HasStoreError for StoreError {
    fn store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

impl HasStoreError for ClaimError {
    fn store_error(&self) -> Option<&StoreError> {
        match self {
            ClaimError::Store(err) => Some(err),
            _ => None,
        }
    }
}

impl WriteHealth {
    /// Notes what a store call did: a refused write is remembered, a write that
    /// succeeded clears it.
    pub(crate) fn note<T, E: HasStoreError>(&self, write: bool, result: &Result<T, E>) {
        let refused = match result {
            Err(err) => match err.store_error() {
                Some(StoreError::Unwritable(why)) => Some((Instant::now(), why.clone())),
                _ => return,
            },
            Ok(_) if write && self.any.load(Ordering::Acquire) => None,
            Ok(_) => return,
        };
        if let Ok(mut slot) = self.refused.lock() {
            self.any.store(refused.is_some(), Ordering::Release);
            *slot = refused;
        }
    }

    /// `Err` while a write was refused in the last [`REPORTED_FOR`].
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        let Ok(refused) = self.refused.lock() else {
            return Ok(());
        };
        match &*refused {
            Some((at, why)) if at.elapsed() < REPORTED_FOR => Err(StoreError::Unwritable(format!(
                "a write was refused {} s ago: {why}",
                at.elapsed().as_secs()
            ))),
            _ => Ok(()),
        }
    }
}
