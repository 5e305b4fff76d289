//! Cross-process and cross-machine ordering of one session's commands on
//! the gcp backend: a lease object, `sessions/{session}/lease`.
//!
//! Inside one dispatcher a session's commands already run one at a time
//! (the engine's queue). Separate dispatchers — fifty `runbox exec`
//! processes, or service instances on several machines — share only the
//! bucket, so they order a session's commands through one object there:
//!
//! - **take**: create it if absent (`ifGenerationMatch=0`); if it exists but
//!   is released or expired, overwrite it conditioned on the generation read
//!   (`ifGenerationMatch=g`). Of several takers exactly one write succeeds;
//!   the others get a precondition failure and wait again.
//! - **renew**: while held, a background task rewrites it every third of
//!   the lease's time to live, conditioned on the generation it last wrote.
//!   A precondition failure, or no successful renewal before the expiry,
//!   means the lease is lost ([`SessionLease::is_lost`]).
//! - **release**: overwrite it as released (conditioned on the held
//!   generation), then announce that generation on the notifications topic
//!   (see [`runbox_notifier::EventAnnouncer`]), so waiters elsewhere wake.
//! - **expiry**: `expires_at_ms` (the holder's clock) lets a holder that
//!   died (SIGKILL, a lost machine) block the session for at most the time to
//!   live (`RUNBOX_SESSION_LEASE_TTL_MS`, default 30 s). Renewing every third
//!   of it tolerates clock skew between machines of up to about two thirds.
//!
//! A waiter watches the object's events BEFORE reading it (so a release
//! between the read and the wait still wakes it), then sleeps until the
//! release event or the expiry it read, whichever comes first: a timer to a
//! known instant, not a polling loop.
//!
//! What a lost lease cannot do is save over a newer holder's work: the
//! executor writes `state.json` and every workspace object conditioned on
//! the generation it restored, and a taker of an EXPIRED lease first
//! rewrites `state.json` (a new generation, same content), so a command of
//! the old holder that is still running fails its state save as a conflict
//! instead of overwriting; the old holder's caller gets
//! [`LeaseError::Lost`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runbox_core::store::{Precondition, PutOptions, Store, StoreError};
use runbox_core::{SessionId, layout};
use runbox_notifier::{EventAnnouncer, ObjectEvent, WaitError, Waiters};
use tokio_util::sync::CancellationToken;

/// The default time to live of a session lease.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// A session lease could not be taken, kept or given back.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The store failed while reading or writing the lease.
    #[error("{op} the lease of session {session}")]
    Store {
        /// What was being done: "take", "renew", "release", "read".
        op: &'static str,
        /// The session.
        session: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// The events that wake a waiter stopped (the client is shutting down).
    #[error("waiting for the lease of session {session}")]
    Wait {
        /// The session.
        session: String,
        /// The cause.
        #[source]
        source: WaitError,
    },
    /// The lease was taken over while a command held it (it was not renewed
    /// within its time to live). Another command of the session may have
    /// run meanwhile; what this command saved was checked against the
    /// generations it read, and its result is not trusted.
    #[error(
        "session {session}: lost the session lease while execution {execution} ran (not renewed within {ttl:?}); another command may have run meanwhile"
    )]
    Lost {
        /// The session.
        session: String,
        /// The execution that ran under the lost lease ("" when unknown).
        execution: String,
        /// The lease's time to live.
        ttl: Duration,
    },
}

impl LeaseError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LeaseError::Store { source, .. } => source.is_retryable(),
            LeaseError::Lost { .. } => true,
            LeaseError::Wait { .. } => false,
        }
    }
}

/// Who takes leases, and for how long.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Written into the lease as its holder (for people reading it).
    pub holder: String,
    /// The bucket, as announced events name it.
    pub bucket: String,
    /// Validity without renewal; renewed every third of it.
    pub ttl: Duration,
}

/// Takes session leases in one store; cheap to clone.
#[derive(Clone)]
pub struct SessionLeases {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    waiters: Arc<Waiters>,
    announcer: Arc<dyn EventAnnouncer>,
    settings: LeaseSettings,
}

impl SessionLeases {
    /// Leases in `store`; `waiters` is the table the client's notifier
    /// routes events into (its object watches wake waiters), `announcer`
    /// publishes releases to every dispatcher.
    pub fn new(
        store: Arc<dyn Store>,
        waiters: Arc<Waiters>,
        announcer: Arc<dyn EventAnnouncer>,
        settings: LeaseSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                waiters,
                announcer,
                settings,
            }),
        }
    }

    /// The time to live of the leases taken here.
    pub fn ttl(&self) -> Duration {
        self.inner.settings.ttl
    }

    /// Waits until the session's lease is this caller's, and starts
    /// renewing it. Cancel-safe up to the write that takes it; a lease
    /// taken by a cancelled call expires after its time to live.
    pub async fn acquire(&self, session: &SessionId) -> Result<SessionLease, LeaseError> {
        let inner = &self.inner;
        let name = layout::session_lease(session);
        let fail = |op, source| LeaseError::Store {
            op,
            session: session.to_string(),
            source,
        };
        // Watch first, read second: a release landing in between still
        // wakes the wait below.
        let mut watch = inner.waiters.watch_object(&name);
        loop {
            let current = match inner.store.get(&name).await {
                Ok(object) => Some(object),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(fail("read", e)),
            };
            let (precondition, expired_holder) = match &current {
                None => (Precondition::DoesNotExist, false),
                Some(object) => match Lease::parse(&object.data) {
                    Some(lease) if lease.released => {
                        (Precondition::GenerationMatch(object.meta.generation), false)
                    }
                    Some(lease) => {
                        let left = lease.remaining(SystemTime::now());
                        if !left.is_zero() {
                            self.wait(&mut watch, session, left).await?;
                            continue;
                        }
                        (Precondition::GenerationMatch(object.meta.generation), true)
                    }
                    None => {
                        // Nobody could ever release a lease nobody can read.
                        tracing::warn!(%name, "unreadable session lease; taking it over");
                        (Precondition::GenerationMatch(object.meta.generation), true)
                    }
                },
            };
            let expires = SystemTime::now() + inner.settings.ttl;
            match inner
                .store
                .put(
                    &name,
                    self.body(expires, false),
                    PutOptions::when(precondition),
                )
                .await
            {
                Ok(meta) => {
                    if expired_holder {
                        tracing::info!(%session, "took over an expired session lease");
                        self.fence(session).await;
                    }
                    return Ok(SessionLease::start(
                        self.clone(),
                        session.clone(),
                        name,
                        meta.generation,
                        expires,
                    ));
                }
                // Someone else took it first: read again.
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(fail("take", e)),
            }
        }
    }

    /// Sleeps until the lease's watch fires or `left` passes.
    async fn wait(
        &self,
        watch: &mut runbox_notifier::ObjectWatch,
        session: &SessionId,
        left: Duration,
    ) -> Result<(), LeaseError> {
        tokio::select! {
            changed = watch.changed() => changed.map_err(|source| LeaseError::Wait {
                session: session.to_string(),
                source,
            }),
            // The expiry this caller read: if the holder died, nothing else
            // will ever announce the lease free.
            () = tokio::time::sleep(left) => Ok(()),
        }
    }

    /// Makes a state save of the previous (expired) holder's command fail:
    /// its executor saves `state.json` conditioned on the generation it
    /// read, so a new generation with the same content turns a late save
    /// into a conflict rather than an overwrite of what comes next.
    async fn fence(&self, session: &SessionId) {
        let store = &self.inner.store;
        let name = layout::session_state(session);
        for _ in 0..3 {
            let object = match store.get(&name).await {
                Ok(object) => object,
                Err(e) if e.is_not_found() => return,
                Err(e) => {
                    tracing::warn!(%name, error = %e, "could not fence the session state");
                    return;
                }
            };
            let opts = PutOptions {
                precondition: Precondition::GenerationMatch(object.meta.generation),
                metadata: object.meta.metadata.clone(),
                ..PutOptions::default()
            };
            match store.put(&name, object.data, opts).await {
                Ok(_) => return,
                // The old command saved just now: fence that generation.
                Err(e) if e.is_conflict() => continue,
                Err(e) => {
                    tracing::warn!(%name, error = %e, "could not fence the session state");
                    return;
                }
            }
        }
    }

    fn body(&self, expires: SystemTime, released: bool) -> Bytes {
        let lease = Lease {
            holder: self.inner.settings.holder.clone(),
            expires_at_ms: millis_since_epoch(expires),
            released,
        };
        Bytes::from(lease.to_json())
    }
}

impl std::fmt::Debug for SessionLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLeases")
            .field("store", &self.inner.store.describe())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

/// A held session lease, renewed in the background until
/// [`SessionLease::release`]. Dropping it without releasing stops the
/// renewal and releases it from a task of its own.
pub struct SessionLease {
    leases: SessionLeases,
    session: SessionId,
    name: String,
    /// The generation last written, shared with the renewal task.
    generation: Arc<tokio::sync::Mutex<i64>>,
    /// Cancelled when the lease is lost.
    lost: CancellationToken,
    /// Cancelled to stop the renewal.
    stop: CancellationToken,
    released: AtomicBool,
}

impl SessionLease {
    fn start(
        leases: SessionLeases,
        session: SessionId,
        name: String,
        generation: i64,
        expires: SystemTime,
    ) -> Self {
        let this = Self {
            leases,
            session,
            name,
            generation: Arc::new(tokio::sync::Mutex::new(generation)),
            lost: CancellationToken::new(),
            stop: CancellationToken::new(),
            released: AtomicBool::new(false),
        };
        tokio::spawn(renew(
            this.leases.clone(),
            this.name.clone(),
            this.generation.clone(),
            expires,
            this.lost.clone(),
            this.stop.clone(),
        ));
        this
    }

    /// The session.
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    /// The generation of the lease object last written by this holder.
    pub async fn generation(&self) -> i64 {
        *self.generation.lock().await
    }

    /// Whether the lease was lost (taken over after it expired unrenewed).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Gives the lease back and tells waiting dispatchers. Fails with
    /// [`LeaseError::Lost`] when it had been lost already.
    pub async fn release(self) -> Result<(), LeaseError> {
        self.released.store(true, Ordering::Relaxed);
        release(
            &self.leases,
            &self.session,
            &self.name,
            &self.generation,
            &self.lost,
            &self.stop,
        )
        .await
    }
}

impl Drop for SessionLease {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released.load(Ordering::Relaxed) {
            return;
        }
        // Without a runtime the lease simply expires.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let leases = self.leases.clone();
            let session = self.session.clone();
            let name = self.name.clone();
            let generation = self.generation.clone();
            let lost = self.lost.clone();
            let stop = self.stop.clone();
            runtime.spawn(async move {
                if let Err(e) = release(&leases, &session, &name, &generation, &lost, &stop).await
                {
                    tracing::warn!(%session, error = %e, "releasing a dropped session lease failed");
                }
            });
        }
    }
}

impl std::fmt::Debug for SessionLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLease")
            .field("name", &self.name)
            .field("lost", &self.is_lost())
            .finish()
    }
}

async fn release(
    leases: &SessionLeases,
    session: &SessionId,
    name: &str,
    generation: &tokio::sync::Mutex<i64>,
    lost: &CancellationToken,
    stop: &CancellationToken,
) -> Result<(), LeaseError> {
    stop.cancel();
    let lost_error = || LeaseError::Lost {
        session: session.to_string(),
        execution: String::new(),
        ttl: leases.ttl(),
    };
    // Waits for a renewal in flight, so the generation is the last one.
    let held = *generation.lock().await;
    if lost.is_cancelled() {
        return Err(lost_error());
    }
    let inner = &leases.inner;
    let meta = match inner
        .store
        .put(
            name,
            leases.body(SystemTime::now(), true),
            PutOptions::when(Precondition::GenerationMatch(held)),
        )
        .await
    {
        Ok(meta) => meta,
        Err(e) if e.is_conflict() => {
            lost.cancel();
            return Err(lost_error());
        }
        Err(source) => {
            return Err(LeaseError::Store {
                op: "release",
                session: session.to_string(),
                source,
            });
        }
    };
    let event = ObjectEvent {
        bucket: inner.settings.bucket.clone(),
        name: name.to_owned(),
        generation: meta.generation,
        metadata: Default::default(),
    };
    if let Err(e) = inner.announcer.announce(&event).await {
        // Waiters still wake at the expiry they read: later, not never.
        tracing::warn!(%session, error = %e, "could not announce a released session lease");
    }
    Ok(())
}

/// The renewal task: rewrites the lease every third of its time to live
/// until stopped; marks it lost on a precondition failure or when no
/// renewal succeeded before the expiry last written.
async fn renew(
    leases: SessionLeases,
    name: String,
    generation: Arc<tokio::sync::Mutex<i64>>,
    mut expires: SystemTime,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let ttl = leases.ttl();
    let every = ttl / 3;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let mut held = generation.lock().await;
        if stop.is_cancelled() {
            return;
        }
        let next = SystemTime::now() + ttl;
        let put = leases.inner.store.put(
            &name,
            leases.body(next, false),
            PutOptions::when(Precondition::GenerationMatch(*held)),
        );
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = put => outcome,
        };
        match outcome {
            Ok(meta) => {
                *held = meta.generation;
                expires = next;
            }
            Err(e) if e.is_conflict() => {
                tracing::warn!(%name, "session lease taken over while held");
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(%name, error = %e, "renewing the session lease failed");
                if SystemTime::now() >= expires {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

/// The lease object's content.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Lease {
    holder: String,
    expires_at_ms: u64,
    released: bool,
}

impl Lease {
    fn to_json(&self) -> Vec<u8> {
        serde_json::json!({
            "holder": self.holder,
            "expires_at_ms": self.expires_at_ms,
            "released": self.released,
        })
        .to_string()
        .into_bytes()
    }

    fn parse(data: &[u8]) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_slice(data).ok()?;
        Some(Self {
            holder: value.get("holder")?.as_str()?.to_owned(),
            expires_at_ms: value.get("expires_at_ms")?.as_u64()?,
            released: value.get("released")?.as_bool()?,
        })
    }

    /// How long it stays valid after `now` (zero once expired).
    fn remaining(&self, now: SystemTime) -> Duration {
        Duration::from_millis(self.expires_at_ms.saturating_sub(millis_since_epoch(now)))
    }
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The content of a lease held by `holder` until `expires`: for tests and
/// tools that stand in for another holder.
pub fn lease_body(holder: &str, expires: SystemTime) -> Bytes {
    Bytes::from(
        Lease {
            holder: holder.to_owned(),
            expires_at_ms: millis_since_epoch(expires),
            released: false,
        }
        .to_json(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_round_trips_and_expires() {
        let now = SystemTime::now();
        let lease = Lease {
            holder: "i1".to_owned(),
            expires_at_ms: millis_since_epoch(now + Duration::from_secs(5)),
            released: false,
        };
        assert_eq!(Lease::parse(&lease.to_json()), Some(lease.clone()));
        let left = lease.remaining(now);
        assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5));
        assert_eq!(
            lease.remaining(now + Duration::from_secs(6)),
            Duration::ZERO
        );
        assert_eq!(Lease::parse(b"{}"), None);
        assert_eq!(Lease::parse(b"not json"), None);
    }
}
