//! The Cloud Storage backend of [`Store`], over the GCS JSON API
//! (`gcloud-storage`). The same code serves Google Cloud Storage (Application
//! Default Credentials) and fake-gcs-server (anonymous, `STORAGE_EMULATOR_HOST`).
//!
//! GCS generations and `ifGenerationMatch` are exactly the [`Store`]
//! semantics, so preconditions are passed through to the server and a 412
//! becomes [`StoreError::PreconditionFailed`]. fake-gcs-server honours them
//! on multipart uploads only (which is why every small write is multipart),
//! not on resumable uploads or deletes; there the store also checks the
//! precondition itself just before the request. That check is not atomic:
//! on the emulator, racing writers of large streams or deletes are not
//! caught; on GCS the server's own check still is.
//!
//! Streaming uploads of more than one chunk use a resumable upload session, one
//! chunk in memory at a time; streaming downloads are read as they arrive.

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::Error as GcsError;
use gcloud_storage::http::objects::Object as GcsObject;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{
    ChunkSize, ResumableUploadClient, UploadStatus,
};
use gcloud_storage::http::storage_client::SCOPES as STORAGE_SCOPES;
use tokio::io::AsyncReadExt;
use tokio_util::io::StreamReader;

use super::*;
use crate::config::{Env, Lookup};

/// The variable that points Google's storage clients at an emulator, as
/// `host:port` or `http://host:port`.
pub const STORAGE_EMULATOR_HOST: &str = "STORAGE_EMULATOR_HOST";

/// Size of one chunk of a resumable upload, and so the most a streaming upload
/// holds in memory. GCS wants chunks in multiples of 256 KiB.
const CHUNK_SIZE: usize = 8 * 1024 * 1024;

/// How often a read retries when the object is overwritten between reading
/// its metadata and its bytes.
const READ_ATTEMPTS: usize = 3;

/// Objects in one Cloud Storage bucket.
#[derive(Clone)]
pub struct GcsStore {
    client: Client,
    bucket: String,
    endpoint: Option<String>,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsStore")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl GcsStore {
    /// Connects to `bucket`: on the emulator named by `STORAGE_EMULATOR_HOST`
    /// in the process environment when it is set, else on Cloud Storage with
    /// Application Default Credentials.
    pub async fn from_env(bucket: impl Into<String>) -> Result<Self> {
        Self::from_lookup(bucket, &Env).await
    }

    /// Like [`GcsStore::from_env`], reading `STORAGE_EMULATOR_HOST` through
    /// `env` (tests pass a map instead of changing the process environment).
    pub async fn from_lookup(bucket: impl Into<String>, env: &dyn Lookup) -> Result<Self> {
        Self::connect(bucket, env.get(STORAGE_EMULATOR_HOST).as_deref()).await
    }

    /// Connects to `bucket` on the emulator at `emulator` (`host:port` or a
    /// URL) when given, else on Cloud Storage with Application Default
    /// Credentials.
    pub async fn connect(bucket: impl Into<String>, emulator: Option<&str>) -> Result<Self> {
        match emulator {
            Some(endpoint) => Ok(Self::emulator(bucket, endpoint)),
            None => Self::with_default_credentials(bucket).await,
        }
    }

    /// Connects anonymously to an emulator (fake-gcs-server) at `endpoint`,
    /// given as `host:port` or `http://host:port`.
    pub fn emulator(bucket: impl Into<String>, endpoint: &str) -> Self {
        let endpoint = emulator_url(endpoint);
        let config = ClientConfig {
            storage_endpoint: endpoint.clone(),
            ..ClientConfig::default()
        }
        .anonymous();
        Self {
            client: Client::new(config),
            bucket: bucket.into(),
            endpoint: Some(endpoint),
        }
    }

    /// Connects with `token` and no other credential: on the emulator at
    /// `emulator` when given, else on Cloud Storage. The token is never
    /// refreshed: an executor's downscoped token lives as long as its
    /// execution.
    pub fn with_token(
        bucket: impl Into<String>,
        emulator: Option<&str>,
        token: &crate::credentials::StoreToken,
    ) -> Self {
        let tokens = crate::credentials::StaticToken::new(token);
        Self::with_token_source(bucket, emulator, Box::new(tokens), None)
    }

    /// Connects with the tokens of `tokens` on every request: at
    /// `endpoint` (`host:port` or a URL) when given, else on Cloud Storage.
    pub fn with_token_source(
        bucket: impl Into<String>,
        endpoint: Option<&str>,
        tokens: Box<dyn token_source::TokenSourceProvider>,
        project_id: Option<String>,
    ) -> Self {
        let endpoint = endpoint.map(emulator_url);
        let mut config = ClientConfig {
            token_source_provider: Some(tokens),
            project_id,
            ..ClientConfig::default()
        };
        if let Some(url) = &endpoint {
            config.storage_endpoint = url.clone();
        }
        Self {
            client: Client::new(config),
            bucket: bucket.into(),
            endpoint,
        }
    }

    /// Connects to Cloud Storage with Application Default Credentials
    /// (see [`DefaultCredentials`](crate::credentials::DefaultCredentials)).
    pub async fn with_default_credentials(bucket: impl Into<String>) -> Result<Self> {
        let bucket = bucket.into();
        let credentials = crate::credentials::DefaultCredentials::from_env(&STORAGE_SCOPES, None)
            .await
            .map_err(|e| StoreError::Backend {
                op: "load credentials for",
                name: format!("gs://{bucket}"),
                retryable: e.is_retryable(),
                source: Box::new(e),
            })?;
        let project_id = credentials.project_id().map(str::to_owned);
        Ok(Self::with_token_source(
            bucket,
            None,
            Box::new(credentials),
            project_id,
        ))
    }

    /// Uses an already configured client.
    pub fn from_client(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            endpoint: None,
        }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The underlying client, for operations outside the [`Store`] trait
    /// (creating buckets in tests, for example).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[async_trait]
impl Store for GcsStore {
    fn describe(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("gs://{} (emulator {endpoint})", self.bucket),
            None => format!("gs://{}", self.bucket),
        }
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        validate_name(name)?;
        let req = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: name.to_owned(),
            ..GetObjectRequest::default()
        };
        let obj = self
            .client
            .get_object(&req)
            .await
            .map_err(|e| map_error("read metadata of", name, Precondition::None, e))?;
        Ok(meta_of(obj))
    }

    async fn get(&self, name: &str) -> Result<Object> {
        validate_name(name)?;
        // The media download does not tell the generation it served, so read
        // the metadata first and then the bytes of exactly that generation;
        // when a writer replaced it in between, start over.
        for _ in 0..READ_ATTEMPTS {
            let meta = self.head(name).await?;
            let req = self.generation_request(name, meta.generation);
            match self.client.download_object(&req, &Range::default()).await {
                Ok(data) => {
                    return Ok(Object {
                        meta,
                        data: Bytes::from(data),
                    });
                }
                Err(e) if status_of(&e) == Some(404) => continue,
                Err(e) => return Err(map_error("read", name, Precondition::None, e)),
            }
        }
        Err(overwritten_while_reading(name))
    }

    async fn get_stream(&self, name: &str) -> Result<(ObjectMeta, ByteStream)> {
        validate_name(name)?;
        for _ in 0..READ_ATTEMPTS {
            let meta = self.head(name).await?;
            let req = self.generation_request(name, meta.generation);
            match self
                .client
                .download_streamed_object(&req, &Range::default())
                .await
            {
                Ok(stream) => {
                    let reader = StreamReader::new(stream.map_err(std::io::Error::other));
                    return Ok((meta, Box::pin(reader)));
                }
                Err(e) if status_of(&e) == Some(404) => continue,
                Err(e) => return Err(map_error("read", name, Precondition::None, e)),
            }
        }
        Err(overwritten_while_reading(name))
    }

    async fn put(&self, name: &str, data: Bytes, opts: PutOptions) -> Result<ObjectMeta> {
        validate_name(name)?;
        let req = self.upload_request(opts.precondition);
        // Multipart even without metadata: fake-gcs-server ignores
        // preconditions on `media` uploads, and one request either way.
        let upload_type =
            UploadType::Multipart(Box::new(self.object_resource(name, &opts.metadata)));
        let obj = self
            .client
            .upload_object(&req, data, &upload_type)
            .await
            .map_err(|e| map_error("write", name, opts.precondition, e))?;
        Ok(meta_of(obj))
    }

    async fn put_stream(
        &self,
        name: &str,
        mut data: ByteStream,
        opts: PutOptions,
    ) -> Result<ObjectMeta> {
        validate_name(name)?;
        let read_err = |source| StoreError::Io {
            op: "read upload stream for",
            name: name.to_owned(),
            source,
        };
        let first = read_chunk(&mut data).await.map_err(read_err)?;
        if first.len() < CHUNK_SIZE {
            // Small enough for one request: no upload session needed.
            return self.put(name, first.into(), opts).await;
        }

        // GCS checks the precondition itself, atomically; check it before
        // sending the bytes too, so a plain conflict costs no upload.
        // (It also makes fake-gcs-server, which ignores preconditions on
        // resumable uploads, behave for writers that do not race.)
        self.check_precondition(name, opts.precondition).await?;
        let req = self.upload_request(opts.precondition);
        let upload_type =
            UploadType::Multipart(Box::new(self.object_resource(name, &opts.metadata)));
        let session = self
            .client
            .prepare_resumable_upload(&req, &upload_type)
            .await
            .map_err(|e| map_error("start upload of", name, opts.precondition, e))?;

        let result = upload_chunks(&session, first, &mut data, name, opts.precondition).await;
        if result.is_err() {
            // Release the server-side session; a failure here changes nothing.
            let _ = session.cancel().await;
        }
        result.map(meta_of)
    }

    async fn delete(&self, name: &str, precondition: Precondition) -> Result<()> {
        validate_name(name)?;
        if self.endpoint.is_some() {
            // fake-gcs-server ignores preconditions on deletes; GCS checks
            // them atomically, so only the emulator gets this extra read.
            self.check_precondition(name, precondition).await?;
        }
        let req = DeleteObjectRequest {
            bucket: self.bucket.clone(),
            object: name.to_owned(),
            if_generation_match: generation_match(precondition),
            ..DeleteObjectRequest::default()
        };
        self.client
            .delete_object(&req)
            .await
            .map_err(|e| map_error("delete", name, precondition, e))
    }

    async fn list(&self, opts: &ListOptions) -> Result<ListPage> {
        let req = ListObjectsRequest {
            bucket: self.bucket.clone(),
            prefix: Some(opts.prefix.clone()).filter(|p| !p.is_empty()),
            delimiter: opts.delimiter.map(String::from),
            page_token: opts.page_token.clone(),
            max_results: opts.page_size.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            ..ListObjectsRequest::default()
        };
        let page = self.client.list_objects(&req).await.map_err(|e| {
            let name = format!("{}*", opts.prefix);
            match status_of(&e) {
                // GCS answers a page token it did not issue with 400.
                Some(400) if opts.page_token.is_some() => StoreError::InvalidPageToken {
                    token: opts.page_token.clone().unwrap_or_default(),
                },
                _ => map_error("list", &name, Precondition::None, e),
            }
        })?;
        Ok(ListPage {
            objects: page
                .items
                .unwrap_or_default()
                .into_iter()
                .map(meta_of)
                .collect(),
            prefixes: page.prefixes.unwrap_or_default(),
            next_page_token: page.next_page_token.filter(|t| !t.is_empty()),
        })
    }
}

impl GcsStore {
    /// Fails with [`StoreError::PreconditionFailed`] when `precondition`
    /// does not hold now.
    async fn check_precondition(&self, name: &str, precondition: Precondition) -> Result<()> {
        let current = match precondition {
            Precondition::None => return Ok(()),
            _ => match self.head(name).await {
                Ok(meta) => Some(meta.generation),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            },
        };
        let holds = match precondition {
            Precondition::None => true,
            Precondition::DoesNotExist => current.is_none(),
            Precondition::GenerationMatch(g) => current == Some(g),
        };
        if holds {
            Ok(())
        } else {
            Err(StoreError::PreconditionFailed {
                name: name.to_owned(),
                precondition,
            })
        }
    }

    fn generation_request(&self, name: &str, generation: i64) -> GetObjectRequest {
        GetObjectRequest {
            bucket: self.bucket.clone(),
            object: name.to_owned(),
            generation: Some(generation),
            ..GetObjectRequest::default()
        }
    }

    fn upload_request(&self, precondition: Precondition) -> UploadObjectRequest {
        UploadObjectRequest {
            bucket: self.bucket.clone(),
            if_generation_match: generation_match(precondition),
            ..UploadObjectRequest::default()
        }
    }

    fn object_resource(&self, name: &str, metadata: &BTreeMap<String, String>) -> GcsObject {
        GcsObject {
            name: name.to_owned(),
            bucket: self.bucket.clone(),
            content_type: Some(content_type(name).to_owned()),
            metadata: (!metadata.is_empty()).then(|| {
                metadata
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            }),
            ..GcsObject::default()
        }
    }
}

/// Sends `first` and then the rest of `data` through a resumable upload
/// session, one chunk at a time, and returns the object once the last chunk
/// has been accepted.
async fn upload_chunks(
    session: &ResumableUploadClient,
    first: Vec<u8>,
    data: &mut ByteStream,
    name: &str,
    precondition: Precondition,
) -> Result<GcsObject> {
    let unexpected = |what: String| StoreError::Backend {
        op: "write",
        name: name.to_owned(),
        retryable: false,
        source: format!("resumable upload: {what}").into(),
    };
    // `pending` is what the server has not confirmed yet; `last` is known
    // once a read comes back short. A stream that ends exactly after a full
    // chunk is finished with an empty request that gives the total size.
    let mut pending = Bytes::from(first);
    let mut last = pending.len() < CHUNK_SIZE;
    let mut offset: u64 = 0;
    loop {
        let len = pending.len() as u64;
        let range = if last {
            let total = offset + len;
            ChunkSize::new(offset, total.saturating_sub(1), Some(total))
        } else {
            ChunkSize::new(offset, offset + len - 1, None)
        };
        // Cloning `Bytes` shares the buffer, so a tail can be resent.
        let status = session
            .upload_multiple_chunk(pending.clone(), &range)
            .await
            .map_err(|e| map_error("write", name, precondition, e))?;
        let confirmed = match status {
            UploadStatus::Ok(obj) => return Ok(obj),
            UploadStatus::ResumeIncomplete(r) if !last => r.last_byte + 1,
            other => return Err(unexpected(format!("status {other:?} after bytes {range}"))),
        };
        // GCS may persist only part of a chunk (in multiples of 256 KiB);
        // the rest is sent again. No progress at all is an error, not a loop.
        if confirmed < offset || confirmed > offset + len || (confirmed == offset && len > 0) {
            return Err(unexpected(format!(
                "server confirmed {confirmed} bytes after bytes {range}"
            )));
        }
        pending = pending.slice((confirmed - offset) as usize..);
        offset = confirmed;
        if pending.is_empty() {
            let chunk = read_chunk(data).await.map_err(|source| StoreError::Io {
                op: "read upload stream for",
                name: name.to_owned(),
                source,
            })?;
            last = chunk.len() < CHUNK_SIZE;
            pending = Bytes::from(chunk);
        }
    }
}

/// Reads up to [`CHUNK_SIZE`] bytes; fewer only at the end of the stream.
async fn read_chunk(data: &mut ByteStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK_SIZE);
    while buf.len() < CHUNK_SIZE {
        // `take` bounds this read to what is left of the chunk.
        let want = (CHUNK_SIZE - buf.len()) as u64;
        let n = (&mut *data).take(want).read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}

/// `host:port` → `http://host:port`; URLs pass through without a trailing `/`.
fn emulator_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

fn generation_match(precondition: Precondition) -> Option<i64> {
    match precondition {
        Precondition::None => None,
        Precondition::DoesNotExist => Some(0),
        Precondition::GenerationMatch(g) => Some(g),
    }
}

/// A content type for the console and for browsers; runbox itself never
/// reads it back.
fn content_type(name: &str) -> &'static str {
    if name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

fn meta_of(obj: GcsObject) -> ObjectMeta {
    ObjectMeta {
        name: obj.name,
        generation: obj.generation,
        size: u64::try_from(obj.size).unwrap_or(0),
        metadata: obj.metadata.unwrap_or_default().into_iter().collect(),
        updated: obj.updated.map(SystemTime::from),
    }
}

fn overwritten_while_reading(name: &str) -> StoreError {
    StoreError::Backend {
        op: "read",
        name: name.to_owned(),
        retryable: true,
        source: format!("object was replaced {READ_ATTEMPTS} times while being read").into(),
    }
}

/// The HTTP status of a failed request, when the server answered.
fn status_of(e: &GcsError) -> Option<u16> {
    match e {
        GcsError::Response(r) => Some(r.code),
        GcsError::HttpClient(e) | GcsError::RawResponse(e, _) => e.status().map(|s| s.as_u16()),
        _ => None,
    }
}

/// Maps a client error to the store's: 404 and 412 get their own variants,
/// everything else is a backend error that says whether retrying may help
/// (408, 429, 5xx, timeouts, connection failures).
fn map_error(op: &'static str, name: &str, precondition: Precondition, e: GcsError) -> StoreError {
    match status_of(&e) {
        Some(404) => {
            return StoreError::NotFound {
                name: name.to_owned(),
            };
        }
        Some(412) => {
            return StoreError::PreconditionFailed {
                name: name.to_owned(),
                precondition,
            };
        }
        _ => {}
    }
    let retryable = match &e {
        GcsError::Response(r) => r.is_retriable(),
        GcsError::HttpClient(err) | GcsError::RawResponse(err, _) => match err.status() {
            Some(s) => matches!(s.as_u16(), 408 | 429 | 500..=599),
            // No answer: the request did not get through or the connection
            // broke while the body was moving.
            None => err.is_timeout() || err.is_connect() || err.is_request() || err.is_body(),
        },
        // Token refreshes fail mostly when the metadata server is briefly away.
        GcsError::TokenSource(_) => true,
        GcsError::HttpMiddleware(_) | GcsError::InvalidRangeHeader(_) => false,
    };
    StoreError::Backend {
        op,
        name: name.to_owned(),
        retryable,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_host_is_accepted_in_both_spellings() {
        assert_eq!(emulator_url("127.0.0.1:4443"), "http://127.0.0.1:4443");
        assert_eq!(
            emulator_url("http://127.0.0.1:4443/"),
            "http://127.0.0.1:4443"
        );
        assert_eq!(emulator_url("https://gcs.test"), "https://gcs.test");
    }

    #[test]
    fn preconditions_map_to_if_generation_match() {
        assert_eq!(generation_match(Precondition::None), None);
        assert_eq!(generation_match(Precondition::DoesNotExist), Some(0));
        assert_eq!(generation_match(Precondition::GenerationMatch(7)), Some(7));
    }

    #[tokio::test]
    async fn chunks_are_full_until_the_end() {
        let len = CHUNK_SIZE + 10;
        let mut data: ByteStream = Box::pin(std::io::Cursor::new(vec![7u8; len]));
        assert_eq!(read_chunk(&mut data).await.unwrap().len(), CHUNK_SIZE);
        assert_eq!(read_chunk(&mut data).await.unwrap().len(), 10);
        assert!(read_chunk(&mut data).await.unwrap().is_empty());
    }
}
