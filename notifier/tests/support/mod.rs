//! Test doubles shared by the notifier's integration tests.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use runbox_core::store::{ByteStream, Result};
use runbox_core::{
    ListOptions, ListPage, Object, ObjectMeta, Precondition, PutOptions, Store, StoreError,
};
use tokio::sync::{Notify, Semaphore};

/// An in-memory store that only keeps metadata: enough for `head`, which is
/// all the notifier and the filesystem source read. With a gate, every
/// `head` announces itself and then waits for a permit, so a test can hold a
/// read in flight.
#[derive(Default)]
pub struct MemStore {
    objects: Mutex<HashMap<String, ObjectMeta>>,
    gate: Option<Gate>,
}

struct Gate {
    entered: Notify,
    permits: Semaphore,
}

impl MemStore {
    /// A store whose reads wait for [`MemStore::release`].
    pub fn gated() -> Self {
        Self {
            objects: Mutex::default(),
            gate: Some(Gate {
                entered: Notify::new(),
                permits: Semaphore::new(0),
            }),
        }
    }

    /// Records an object's current generation and metadata.
    pub fn insert(&self, name: &str, generation: i64, metadata: &[(&str, &str)]) {
        let meta = ObjectMeta {
            name: name.to_owned(),
            generation,
            size: 0,
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
            updated: None,
        };
        self.objects.lock().unwrap().insert(name.to_owned(), meta);
    }

    /// Resolves once a gated `head` has started.
    pub async fn head_started(&self) {
        self.gate
            .as_ref()
            .expect("a gated store")
            .entered
            .notified()
            .await;
    }

    /// Lets `n` gated reads proceed.
    pub fn release(&self, n: usize) {
        self.gate
            .as_ref()
            .expect("a gated store")
            .permits
            .add_permits(n);
    }
}

fn unsupported(op: &'static str, name: &str) -> StoreError {
    StoreError::Backend {
        op,
        name: name.to_owned(),
        retryable: false,
        source: "not supported by the test store".into(),
    }
}

#[async_trait]
impl Store for MemStore {
    fn describe(&self) -> String {
        "mem://test".to_owned()
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        if let Some(gate) = &self.gate {
            // notify_one stores a permit, so a waiter that starts listening
            // after this call still sees it.
            gate.entered.notify_one();
            gate.permits.acquire().await.expect("never closed").forget();
        }
        self.objects
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                name: name.to_owned(),
            })
    }

    async fn get(&self, name: &str) -> Result<Object> {
        Err(unsupported("get", name))
    }

    async fn get_stream(&self, name: &str) -> Result<(ObjectMeta, ByteStream)> {
        Err(unsupported("get_stream", name))
    }

    async fn put(&self, name: &str, _data: Bytes, _opts: PutOptions) -> Result<ObjectMeta> {
        Err(unsupported("put", name))
    }

    async fn put_stream(
        &self,
        name: &str,
        _data: ByteStream,
        _opts: PutOptions,
    ) -> Result<ObjectMeta> {
        Err(unsupported("put_stream", name))
    }

    async fn delete(&self, name: &str, _precondition: Precondition) -> Result<()> {
        Err(unsupported("delete", name))
    }

    async fn list(&self, opts: &ListOptions) -> Result<ListPage> {
        Err(unsupported("list", &opts.prefix))
    }
}
