//! Watches on single objects outside `results/`, such as a session's lease:
//! a holder that gives the object up announces its new generation through
//! the same event pipeline, and whoever waits for it re-reads it.
//!
//! Unlike a completion waiter, a watch is not resolved once with a payload:
//! it only says "the object changed since you last looked", so several
//! changes may wake it once and the watcher reads the object to learn the
//! rest. Create the watch BEFORE reading the object, so a change that lands
//! between the read and the wait is not missed.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::{WaitError, Waiters};

/// One sender per watched object name; its receivers are the watches.
#[derive(Default)]
pub(crate) struct ObjectWatches {
    senders: DashMap<String, watch::Sender<()>>,
}

impl ObjectWatches {
    /// A receiver on `name`, sharing the sender of earlier watches.
    pub(crate) fn subscribe(&self, name: &str) -> watch::Receiver<()> {
        self.senders
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    /// Wakes the watches of `name`; whether there were any.
    pub(crate) fn changed(&self, name: &str) -> bool {
        match self.senders.get(name) {
            Some(tx) => {
                tx.send_replace(());
                true
            }
            None => false,
        }
    }

    /// Wakes every watch: events may have been lost (a resubscribe).
    pub(crate) fn all_changed(&self) {
        for tx in self.senders.iter() {
            tx.send_replace(());
        }
    }

    /// Drops every sender, which fails every watch.
    pub(crate) fn clear(&self) {
        self.senders.clear();
    }

    /// Removes `name`'s sender when the caller holds its last receiver.
    fn release(&self, name: &str) {
        self.senders
            .remove_if(name, |_, tx| tx.receiver_count() <= 1);
    }
}

/// Wakes when the watched object changed (see the module docs); fails with
/// [`WaitError::NotifierStopped`] once the notifier has stopped, so a
/// watcher never waits on a producer that is gone.
pub struct ObjectWatch {
    name: String,
    rx: Option<watch::Receiver<()>>,
    waiters: Arc<Waiters>,
}

impl ObjectWatch {
    pub(crate) fn new(name: &str, rx: Option<watch::Receiver<()>>, waiters: Arc<Waiters>) -> Self {
        Self {
            name: name.to_owned(),
            rx,
            waiters,
        }
    }

    /// The object watched.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolves at the next change announced after the watch was created or
    /// after the previous call resolved. Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), WaitError> {
        let Some(rx) = &mut self.rx else {
            return Err(self.waiters.stopped_error());
        };
        match rx.changed().await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.waiters.stopped_error()),
        }
    }
}

impl Drop for ObjectWatch {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.waiters.objects.release(&self.name);
        }
    }
}

impl std::fmt::Debug for ObjectWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWatch")
            .field("name", &self.name)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_change_after_the_watch_wakes_it_and_a_close_fails_it() {
        let waiters = Waiters::new();
        let mut watch = waiters.watch_object("sessions/s/lease");
        assert!(!waiters.object_changed("sessions/other/lease"));
        // Announced before anyone awaits: still seen (watch, then read).
        assert!(waiters.object_changed("sessions/s/lease"));
        tokio::time::timeout(T, watch.changed())
            .await
            .unwrap()
            .unwrap();
        waiters.all_objects_changed();
        tokio::time::timeout(T, watch.changed())
            .await
            .unwrap()
            .unwrap();

        waiters.close("stopped for the test".to_owned());
        let err = tokio::time::timeout(T, watch.changed())
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("stopped for the test"), "{err}");
        let mut late = waiters.watch_object("sessions/s/lease");
        assert!(late.changed().await.is_err());
    }

    #[tokio::test]
    async fn the_last_watch_dropped_removes_the_entry() {
        let waiters = Waiters::new();
        let first = waiters.watch_object("n");
        let second = waiters.watch_object("n");
        drop(first);
        assert!(
            waiters.object_changed("n"),
            "the second watch still listens"
        );
        drop(second);
        assert!(!waiters.object_changed("n"));
    }
}
