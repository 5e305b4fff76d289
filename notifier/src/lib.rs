//! How a caller learns that its execution finished: an [`EventSource`]
//! delivers object-finalize events, the [`Notifier`] routes those on
//! `results/` to the [`Waiters`], and each waiting future resolves once.
//! Events on other objects (a session's lease, announced by an
//! [`EventAnnouncer`]) wake the [`ObjectWatch`]es on them; live output
//! chunks beside a result go to the [`OutputWatch`] of their execution.

mod event;
mod fs_share;
mod fs_source;
mod notifier;
mod object_watch;
mod output_watch;
mod pubsub_announce;
mod pubsub_source;
mod waiters;

pub use event::{Acker, EventSource, ObjectEvent, SourceError, SourceItem};
pub use fs_source::FsEventSource;
pub use notifier::{Notifier, NotifierStats};
pub use object_watch::ObjectWatch;
pub use output_watch::{OutputSignal, OutputWatch};
pub use pubsub_announce::{EventAnnouncer, PubSubAnnouncer};
pub use pubsub_source::{
    PUBSUB_EMULATOR_HOST, PubSubConfig, PubSubEventSource, PubSubSubscription, client_config,
};
pub use waiters::{Routed, WaitError, Waiter, Waiters};
