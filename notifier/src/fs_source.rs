//! Embedded event source: filesystem notifications on the local store's
//! `results/`.
//!
//! The local store writes an object to a temporary file elsewhere and renames
//! it into place as the very last step, after the generation metadata is
//! stored. So the appearance of a file under `results/` means "this
//! generation is complete", the same guarantee a GCS finalize notification
//! gives, and the store's `head` then reports its generation and metadata.
//! The operating system pushes the events (inotify on Linux); nothing polls.
//! One watch serves every process of a user on the store (see `fs_share`),
//! so the number of concurrent processes is not bounded by the kernel's
//! inotify instance limit.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use runbox_core::{Store, layout};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::fs_share::{self, Feed};
use crate::{Acker, EventSource, ObjectEvent, SourceError, SourceItem};

/// Turns finished writes under `<root>/results/` into object events.
///
/// The first [`EventSource::next`] returns [`SourceItem::Resubscribed`]: the
/// watch is in place by then, so reading the pending results once closes the
/// gap before it (list-then-watch). The same happens when the kernel reports
/// that events were dropped (inotify queue overflow), and when the process
/// holding the store's shared watch goes away and another takes over.
pub struct FsEventSource {
    bucket: String,
    description: String,
    store: Arc<dyn Store>,
    /// Filled by the shared watch; unbounded because the hub relaying to
    /// this process must never wait for it.
    events: mpsc::UnboundedReceiver<Feed>,
    /// Object names seen but not yet reported. A name leaves the queue only
    /// once its item is returned, which is what makes `next` cancel-safe.
    queue: VecDeque<String>,
    /// A `Resubscribed` is owed to the consumer.
    resubscribe: bool,
    /// Once failed, always failed: the watch is gone.
    failed: Option<SourceError>,
    /// The task following the shared watch; aborted on drop.
    follower: JoinHandle<()>,
}

impl FsEventSource {
    /// Watches `<root>/results/` (created if missing) of the local store at
    /// `root`; `store` is used to read each object's generation and metadata.
    /// Must be called within a tokio runtime.
    pub fn new(root: &Path, store: Arc<dyn Store>) -> Result<Self, SourceError> {
        let dir = root.join(layout::RESULTS_PREFIX.trim_end_matches('/'));
        let description = format!("inotify:{}", dir.display());
        let fail = |reason: String| SourceError {
            source_name: description.clone(),
            reason,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        // The watcher reports absolute paths; comparing against an absolute
        // directory keeps a relative `root` working, and every process names
        // the shared watch after the same path.
        let results_dir = std::path::absolute(&dir)
            .map_err(|e| fail(format!("resolving {}: {e}", dir.display())))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(fail("needs a tokio runtime".to_owned()));
        }
        let (tx, events) = mpsc::unbounded_channel();
        let follower = fs_share::follow(results_dir, tx).map_err(fail)?;
        Ok(Self {
            bucket: root.display().to_string(),
            description,
            store,
            events,
            queue: VecDeque::new(),
            // Owed once the watch is in place (the feed's first Rescan).
            resubscribe: false,
            failed: None,
            follower,
        })
    }

    /// Takes in one item of the shared watch.
    fn absorb(&mut self, item: Feed) {
        match item {
            Feed::Name(name) => {
                // One write often yields several events in a row; reading
                // the object once after the last of them is enough.
                if self.queue.back() != Some(&name) {
                    self.queue.push_back(name);
                }
            }
            // Events were (or may have been) dropped; only re-reading the
            // pending results can recover what they said.
            Feed::Rescan => self.resubscribe = true,
            Feed::Failed(reason) => self.failed = Some(self.error(reason)),
        }
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError {
            source_name: self.description.clone(),
            reason,
        }
    }
}

impl Drop for FsEventSource {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

#[async_trait]
impl EventSource for FsEventSource {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn next(&mut self) -> Result<SourceItem, SourceError> {
        loop {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            if self.resubscribe {
                self.resubscribe = false;
                return Ok(SourceItem::Resubscribed);
            }
            if let Some(name) = self.queue.front() {
                // If this future is dropped here, the name is still queued
                // and the next call reads it again.
                let head = self.store.head(name).await;
                let name = self.queue.pop_front().expect("the queue had a front");
                match head {
                    Ok(meta) => {
                        let event = ObjectEvent {
                            bucket: self.bucket.clone(),
                            name,
                            generation: meta.generation,
                            metadata: meta.metadata,
                        };
                        return Ok(SourceItem::Event(event, Acker::none()));
                    }
                    // Deleted (or renamed away) since: nothing to report.
                    Err(e) if e.is_not_found() => continue,
                    // Reported rather than fatal: one unreadable object must
                    // not stop completions for everyone else.
                    Err(e) => {
                        return Ok(SourceItem::Malformed {
                            reason: format!("reading {name} after a filesystem event: {e}"),
                            ack: Acker::none(),
                        });
                    }
                }
            }
            // `recv` is cancel-safe: an item is either returned or stays queued.
            match self.events.recv().await {
                Some(item) => self.absorb(item),
                None => self.failed = Some(self.error("the watch stopped".to_owned())),
            }
        }
    }
}
