//! A [`Store`] decorator that counts reads of object bodies, so a test can
//! tell whether the dispatcher read an object (say, a result it could have
//! taken from its completion event).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use runbox_core::store::{ByteStream, ListOptions, ListPage, Object, Result};
use runbox_core::{ObjectMeta, Precondition, PutOptions, Store};

/// Passes every call to the store inside; counts `get` and `get_stream`
/// of names under `prefix`.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    prefix: String,
    reads: AtomicU64,
}

impl CountingStore {
    /// Counts the body reads of objects under `prefix` (e.g. `results/`).
    pub fn new(inner: Arc<dyn Store>, prefix: &str) -> Arc<Self> {
        Arc::new(Self {
            inner,
            prefix: prefix.to_owned(),
            reads: AtomicU64::new(0),
        })
    }

    /// Body reads of objects under the prefix so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    fn count(&self, name: &str) {
        if name.starts_with(&self.prefix) {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Store for CountingStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        self.inner.head(name).await
    }

    async fn get(&self, name: &str) -> Result<Object> {
        self.count(name);
        self.inner.get(name).await
    }

    async fn get_stream(&self, name: &str) -> Result<(ObjectMeta, ByteStream)> {
        self.count(name);
        self.inner.get_stream(name).await
    }

    async fn put(&self, name: &str, data: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        self.inner.put(name, data, opts).await
    }

    async fn put_stream(
        &self,
        name: &str,
        data: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        self.inner.put_stream(name, data, opts).await
    }

    async fn delete(&self, name: &str, precondition: Precondition) -> Result<()> {
        self.inner.delete(name, precondition).await
    }

    async fn list(&self, opts: &ListOptions) -> Result<ListPage> {
        self.inner.list(opts).await
    }
}
