//! How a caller learns that its execution finished: an [`EventSource`]
//! delivers object-finalize events, the [`Notifier`] routes those on
//! `results/` to the [`Waiters`], and each waiting future resolves once.

mod event;
mod fs_share;
mod fs_source;
mod notifier;
mod pubsub_source;
mod waiters;

pub use event::{Acker, EventSource, ObjectEvent, SourceError, SourceItem};
pub use fs_source::FsEventSource;
pub use notifier::{Notifier, NotifierStats};
pub use pubsub_source::{
    PUBSUB_EMULATOR_HOST, PubSubConfig, PubSubEventSource, PubSubSubscription,
};
pub use waiters::{Routed, WaitError, Waiter, Waiters};
