//! [`Shared`]: a value its readers take as a snapshot and a writer replaces whole.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

/// A value readers take as a snapshot ([`Shared::current`]: an `Arc` kept as long as
/// they need it, unchanged by a replacement meanwhile) and a writer replaces whole
/// ([`Shared::replace`]); a reader may wait for a replacement that makes something true
/// ([`Shared::wait_for`]). Clones share the value. A reader or writer that panicked
/// leaves a whole value behind, so a poisoned lock is used as it is.
#[derive(Debug)]
pub struct Shared<T>(Arc<Inner<T>>);

#[derive(Debug)]
struct Inner<T> {
    value: RwLock<Arc<T>>,
    /// Notified at each replacement.
    replaced: Notify,
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Shared<T> {
        Shared(self.0.clone())
    }
}

impl<T> Shared<T> {
    /// Share `value`.
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(Inner {
            value: RwLock::new(Arc::new(value)),
            replaced: Notify::new(),
        }))
    }

    /// The value now.
    pub fn current(&self) -> Arc<T> {
        self.0
            .value
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replace the value readers see from now on.
    pub fn replace(&self, value: impl Into<Arc<T>>) {
        *self.0.value.write().unwrap_or_else(PoisonError::into_inner) = value.into();
        self.0.replaced.notify_waiters();
    }

    /// Whether `holds` is true of the value now or becomes so by a replacement within
    /// `within`.
    pub async fn wait_for(&self, within: Duration, holds: impl Fn(&T) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before looking, so that a replacement in between is not missed.
            let replaced = self.0.replaced.notified();
            tokio::pin!(replaced);
            replaced.as_mut().enable();
            if holds(&self.current()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, replaced).await.is_err() {
                return holds(&self.current());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Shared;

    #[tokio::test]
    async fn a_waiter_sees_the_replacement_that_makes_it_true_and_gives_up_at_its_deadline() {
        let shared = Shared::new(1);
        assert!(shared.wait_for(Duration::ZERO, |v| *v == 1).await);
        let writer = shared.clone();
        let replacing = tokio::spawn(async move {
            tokio::task::yield_now().await;
            writer.replace(2);
            writer.replace(3);
        });
        assert!(shared.wait_for(Duration::from_secs(30), |v| *v == 3).await);
        replacing.await.expect("writer");
        assert!(
            !shared
                .wait_for(Duration::from_millis(50), |v| *v == 4)
                .await
        );
    }
}
