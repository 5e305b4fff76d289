//! The embedded store: objects as files under a directory. STUB.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::*;

/// Objects as files under a root directory.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        Ok(Self { root: root.into() })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file that holds an object's current content.
    pub fn path_of(&self, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        Ok(self.root.join(name))
    }
}

#[async_trait]
impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
    async fn head(&self, _name: &str) -> Result<ObjectMeta> {
        todo!()
    }
    async fn get(&self, _name: &str) -> Result<Object> {
        todo!()
    }
    async fn get_stream(&self, _name: &str) -> Result<(ObjectMeta, ByteStream)> {
        todo!()
    }
    async fn put(&self, _name: &str, _data: Bytes, _opts: PutOptions) -> Result<ObjectMeta> {
        todo!()
    }
    async fn put_stream(
        &self,
        _name: &str,
        _data: ByteStream,
        _opts: PutOptions,
    ) -> Result<ObjectMeta> {
        todo!()
    }
    async fn delete(&self, _name: &str, _precondition: Precondition) -> Result<()> {
        todo!()
    }
    async fn list(&self, _opts: &ListOptions) -> Result<ListPage> {
        todo!()
    }
}
