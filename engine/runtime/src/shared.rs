//! [`Shared`]: a value its readers take as a snapshot and a writer replaces whole.

use std::sync::{Arc, PoisonError, RwLock};

/// A value readers take as a snapshot ([`Shared::current`]: an `Arc` kept as long as
/// they need it, unchanged by a replacement meanwhile) and a writer replaces whole
/// ([`Shared::replace`]). Clones share the value. A reader or writer that panicked
/// leaves a whole value behind, so a poisoned lock is used as it is.
#[derive(Debug)]
pub struct Shared<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Shared<T> {
        Shared(self.0.clone())
    }
}

impl<T> Shared<T> {
    /// Share `value`.
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// The value now.
    pub fn current(&self) -> Arc<T> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replace the value readers see from now on.
    pub fn replace(&self, value: impl Into<Arc<T>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value.into();
    }
}
