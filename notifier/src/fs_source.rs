//! Embedded event source: filesystem notifications on the local store's
//! `results/`.
//!
//! The local store writes an object to a temporary file elsewhere and renames
//! it into place as the very last step, after the generation metadata is
//! stored. So the appearance of a file under `results/` means "this
//! generation is complete", the same guarantee a GCS finalize notification
//! gives, and the store's `head` then reports its generation and metadata.
//! The operating system pushes the events (inotify on Linux); nothing polls.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use runbox_core::{Store, layout};
use tokio::sync::mpsc;

use crate::{Acker, EventSource, ObjectEvent, SourceError, SourceItem};

/// Turns finished writes under `<root>/results/` into object events.
///
/// The first [`EventSource::next`] returns [`SourceItem::Resubscribed`]: the
/// watch is in place by then, so reading the pending results once closes the
/// gap before it (list-then-watch). The same happens when the kernel reports
/// that events were dropped (inotify queue overflow).
pub struct FsEventSource {
    results_dir: PathBuf,
    bucket: String,
    description: String,
    store: Arc<dyn Store>,
    /// Filled by the watcher's thread; unbounded because that thread must
    /// never block (the kernel queue behind it would overflow instead).
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    /// Object names seen but not yet reported. A name leaves the queue only
    /// once its item is returned, which is what makes `next` cancel-safe.
    queue: VecDeque<String>,
    /// A `Resubscribed` is owed to the consumer.
    resubscribe: bool,
    /// Once failed, always failed: the watch is gone.
    failed: Option<SourceError>,
    /// Dropping it ends the watch; kept last so it goes after the receiver.
    _watcher: RecommendedWatcher,
}

impl FsEventSource {
    /// Watches `<root>/results/` (created if missing) of the local store at
    /// `root`; `store` is used to read each object's generation and metadata.
    pub fn new(root: &Path, store: Arc<dyn Store>) -> Result<Self, SourceError> {
        let dir = root.join(layout::RESULTS_PREFIX.trim_end_matches('/'));
        let kind = format!("{:?}", RecommendedWatcher::kind()).to_lowercase();
        let description = format!("{kind}:{}", dir.display());
        let fail = |reason: String| SourceError {
            source_name: description.clone(),
            reason,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        // The watcher reports absolute paths; comparing against an absolute
        // directory keeps a relative `root` working.
        let results_dir = std::path::absolute(&dir)
            .map_err(|e| fail(format!("resolving {}: {e}", dir.display())))?;

        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // Fails only once the source is dropped; nothing left to tell.
            let _ = tx.send(event);
        })
        .map_err(|e| fail(format!("starting the watcher: {e}")))?;
        watcher
            .watch(&results_dir, RecursiveMode::NonRecursive)
            .map_err(|e| fail(format!("watching {}: {e}", results_dir.display())))?;

        Ok(Self {
            results_dir,
            bucket: root.display().to_string(),
            description,
            store,
            events,
            queue: VecDeque::new(),
            resubscribe: true,
            failed: None,
            _watcher: watcher,
        })
    }

    /// Takes in one watcher event: queues the object names it concerns.
    fn absorb(&mut self, event: notify::Event) {
        if event.need_rescan() {
            // Events were dropped; only re-reading the pending results can
            // recover what they said.
            self.resubscribe = true;
            return;
        }
        let concerns_objects = match event.kind {
            EventKind::Create(CreateKind::Folder) => false,
            // A store may publish with link(2) (atomic create-if-absent),
            // which is a create, not a rename.
            EventKind::Create(_) => true,
            // Inotify sends To, then Both for the same rename; To suffices.
            // Any: backends that cannot tell the direction; `head` decides.
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Any)) => true,
            // A writer that fills the file in place is done at close.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From))
                if event.paths.iter().any(|p| p == &self.results_dir) =>
            {
                // The watch died with the directory: no event would ever come.
                self.failed = Some(self.error(format!(
                    "{} was removed or moved away",
                    self.results_dir.display()
                )));
                return;
            }
            _ => false,
        };
        if !concerns_objects {
            return;
        }
        for path in &event.paths {
            if let Some(name) = self.object_name(path) {
                // One write often yields several events in a row; reading the
                // object once after the last of them is enough.
                if self.queue.back() != Some(&name) {
                    self.queue.push_back(name);
                }
            }
        }
    }

    /// `results/<file>` for a file directly under the results directory.
    fn object_name(&self, path: &Path) -> Option<String> {
        if path.parent()? != self.results_dir {
            return None;
        }
        // Non-UTF-8 names cannot be object names; dot files are temporaries
        // or the store's own bookkeeping, never objects.
        let file = path.file_name()?.to_str()?;
        if file.starts_with('.') {
            return None;
        }
        Some(format!("{}{file}", layout::RESULTS_PREFIX))
    }

    fn error(&self, reason: String) -> SourceError {
        SourceError {
            source_name: self.description.clone(),
            reason,
        }
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
            // `recv` is cancel-safe: an event is either returned or stays queued.
            match self.events.recv().await {
                Some(Ok(event)) => self.absorb(event),
                Some(Err(e)) => self.failed = Some(self.error(format!("watcher error: {e}"))),
                None => self.failed = Some(self.error("the watcher stopped".to_owned())),
            }
        }
    }
}
