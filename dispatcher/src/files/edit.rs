//! Changing files: writing, appending, replacing text, deleting, and the
//! read-modify-write that keeps concurrent edits from losing each other.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::future::try_join_all;
use runbox_core::manifest::Manifest;
use runbox_core::store::{self, ObjectMeta, Precondition, PutOptions};
use runbox_core::workspace_path::WorkspacePath;

use super::host::is_symlink;
use super::read::read_capped;
use super::{
    DeleteOptions, EDIT_ATTEMPTS, FileError, FileInfo, MAX_EDIT_BYTES, ReplaceOptions, Workspace,
    WriteOptions, blocking, info,
};

impl Workspace {
    pub(crate) async fn write(
        &self,
        input: &str,
        content: Bytes,
        opts: WriteOptions,
    ) -> Result<FileInfo, FileError> {
        let path = self.resolve(input, true).await?;
        self.check_writable(&path).await?;
        let content = if opts.leading_newline || opts.trailing_newline {
            let mut b = BytesMut::with_capacity(content.len() + 2);
            if opts.leading_newline {
                b.extend_from_slice(b"\n");
            }
            b.extend_from_slice(&content);
            if opts.trailing_newline {
                b.extend_from_slice(b"\n");
            }
            b.freeze()
        } else {
            content
        };
        let name = self.object(&path);
        if !opts.append {
            let meta = self
                .store
                .put(&name, content, PutOptions::default())
                .await
                .map_err(|e| FileError::store(format!("write {path}"), e))?;
            return Ok(info(&path, &meta));
        }
        let written = self
            .edit(&path, "append", true, |old| {
                if old.len() as u64 + content.len() as u64 > MAX_EDIT_BYTES {
                    return Err(FileError::TooLargeToEdit {
                        path: path.to_string(),
                        size: old.len() as u64 + content.len() as u64,
                        limit: MAX_EDIT_BYTES,
                        op: "append",
                    });
                }
                let mut b = BytesMut::with_capacity(old.len() + content.len());
                b.extend_from_slice(old);
                b.extend_from_slice(&content);
                Ok(Some((b.freeze(), ())))
            })
            .await?;
        match written {
            Some((meta, ())) => Ok(info(&path, &meta)),
            None => unreachable!("an append always writes"),
        }
    }

    pub(crate) async fn replace(
        &self,
        input: &str,
        old: &str,
        new: &str,
        opts: ReplaceOptions,
    ) -> Result<usize, FileError> {
        if old.is_empty() {
            return Err(FileError::EmptyPattern);
        }
        let path = self.resolve(input, true).await?;
        let limit = opts.max_replacements.unwrap_or(usize::MAX);
        let written = self
            .edit(&path, "replace", false, |data| {
                let (replaced, count) = replace_bytes(data, old.as_bytes(), new.as_bytes(), limit);
                Ok((count > 0).then(|| (Bytes::from(replaced), count)))
            })
            .await?;
        Ok(written.map_or(0, |(_, count)| count))
    }

    pub(crate) async fn delete(
        &self,
        input: &str,
        opts: DeleteOptions,
    ) -> Result<usize, FileError> {
        // The last segment is not followed: deleting a symlink removes the
        // link, as `rm` does.
        let path = self.resolve(input, false).await?;
        if path.is_root() {
            return Err(FileError::Root { op: "delete" });
        }
        if let Some(host) = self.host_path(&path) {
            let link = blocking(move || Ok(is_symlink(&host).then_some(host))).await?;
            if let Some(link) = link {
                let shown = path.to_string();
                blocking(move || {
                    std::fs::remove_file(&link)
                        .map_err(|e| FileError::io(format!("delete {shown}"), e))
                })
                .await?;
                return Ok(1);
            }
        }
        match self
            .store
            .delete(&self.object(&path), Precondition::None)
            .await
        {
            Ok(()) => {
                self.forget_in_manifest(&path.to_string()).await?;
                return Ok(1);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(FileError::store(format!("delete {path}"), e)),
        }
        // Not a file: a directory, or nothing.
        let below = store::list_all(&*self.store, &self.dir_prefix(&path))
            .await
            .map_err(|e| FileError::store(format!("list {path}"), e))?;
        let host_dir = match self.host_path(&path) {
            Some(host) => blocking(move || Ok(host.is_dir().then_some(host))).await?,
            None => None,
        };
        if below.is_empty() && host_dir.is_none() {
            return Err(FileError::NotFound {
                path: path.to_string(),
            });
        }
        if !opts.recursive {
            if !below.is_empty() {
                return Err(FileError::DirectoryNotEmpty {
                    path: path.to_string(),
                });
            }
            // An empty directory on disk: remove it like `rmdir` would.
            let dir = host_dir.expect("checked above");
            let shown = path.to_string();
            return blocking(move || {
                std::fs::remove_dir(&dir)
                    .map(|()| 0)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::DirectoryNotEmpty => {
                            FileError::DirectoryNotEmpty { path: shown }
                        }
                        _ => FileError::io(format!("delete {shown}"), e),
                    })
            })
            .await;
        }
        let mut deleted = 0;
        for meta in below {
            match self.store.delete(&meta.name, Precondition::None).await {
                Ok(()) => deleted += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(FileError::store(format!("delete {path}"), e)),
            }
        }
        if let Some(dir) = host_dir {
            // What is not an object is left: empty directories, symlinks,
            // FIFOs. remove_dir_all removes links without following them.
            let shown = path.to_string();
            blocking(move || match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(FileError::io(format!("delete {shown}"), e))
                }
                _ => Ok(()),
            })
            .await?;
        }
        self.forget_in_manifest(&path.to_string()).await?;
        Ok(deleted)
    }

    /// Removes `path` and everything below it from the workspace manifest
    /// (`sessions/{session}/manifest.json`, written by the executor), so the
    /// next command's restore does not bring back the directories of what
    /// was deleted. Only where the manifest is the record (no directory on
    /// this machine: the gcp backend); conditioned on the generation read
    /// and retried on a conflict.
    async fn forget_in_manifest(&self, path: &str) -> Result<(), FileError> {
        if self.host.is_some() {
            return Ok(());
        }
        let Some(session_prefix) = self.prefix.strip_suffix("workspace/") else {
            return Ok(());
        };
        let name = format!("{session_prefix}manifest.json");
        for _ in 0..8 {
            let obj = match self.store.get(&name).await {
                Ok(obj) => obj,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(FileError::store(format!("read manifest {name}"), e)),
            };
            let Ok(mut manifest) = Manifest::decode(&obj.data) else {
                // Not ours to repair (unreadable, or written by a newer
                // executor): the executor reports it.
                return Ok(());
            };
            if !manifest.forget(path) {
                return Ok(());
            }
            let data = manifest.encode();
            match self
                .store
                .put(
                    &name,
                    data,
                    PutOptions::when(Precondition::GenerationMatch(obj.meta.generation)),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(FileError::store(format!("update manifest {name}"), e)),
            }
        }
        Err(FileError::io(
            format!("update manifest {name}"),
            io::Error::other("it kept changing under us"),
        ))
    }

    /// Refuses to write where a directory is, or below a file: on an object
    /// store both could otherwise coexist, which no filesystem can restore.
    pub(super) async fn check_writable(&self, path: &WorkspacePath) -> Result<(), FileError> {
        if path.is_root() {
            return Err(FileError::IsADirectory {
                path: path.to_string(),
            });
        }
        let ancestors = path.ancestors();
        let heads = ancestors.iter().map(|a| async move {
            match self.store.head(&self.object(a)).await {
                Ok(_) => Err(FileError::NotADirectory {
                    path: a.to_string(),
                }),
                Err(e) if e.is_not_found() => Ok(()),
                Err(e) => Err(FileError::store(format!("stat {a}"), e)),
            }
        });
        let (_, below) = futures::future::try_join(try_join_all(heads), async {
            self.has_objects_below(path).await
        })
        .await?;
        let empty_dir = match self.host_path(path) {
            Some(host) => blocking(move || Ok(host.is_dir() && !is_symlink(&host))).await?,
            None => false,
        };
        if below || empty_dir {
            return Err(FileError::IsADirectory {
                path: path.to_string(),
            });
        }
        Ok(())
    }

    /// Read-modify-write of one file, conditioned on the generation read and
    /// retried when another writer got in between. `change` returns the new
    /// content and a value to pass back, or `None` to leave the file as it
    /// is (then `edit` returns `None`). A missing file reads as empty when
    /// `missing_is_empty`, and is [`FileError::NotFound`] otherwise.
    async fn edit<T>(
        &self,
        path: &WorkspacePath,
        op: &'static str,
        missing_is_empty: bool,
        mut change: impl FnMut(&[u8]) -> Result<Option<(Bytes, T)>, FileError>,
    ) -> Result<Option<(ObjectMeta, T)>, FileError> {
        let name = self.object(path);
        for _ in 0..EDIT_ATTEMPTS {
            let (data, precondition) = match self.open(path).await {
                Ok((meta, stream)) => {
                    let data = read_capped(stream, path, meta.size, op).await?;
                    (data, Precondition::GenerationMatch(meta.generation))
                }
                Err(FileError::NotFound { .. }) if missing_is_empty => {
                    (Vec::new(), Precondition::DoesNotExist)
                }
                Err(e) => return Err(e),
            };
            let Some((new, value)) = change(&data)? else {
                return Ok(None);
            };
            match self
                .store
                .put(&name, new, PutOptions::when(precondition))
                .await
            {
                Ok(meta) => return Ok(Some((meta, value))),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(FileError::store(format!("{op} {path}"), e)),
            }
        }
        Err(FileError::Conflict {
            path: path.to_string(),
        })
    }
}

/// `data` with the first `limit` non-overlapping occurrences of `old`
/// replaced, and how many there were.
fn replace_bytes(data: &[u8], old: &[u8], new: &[u8], limit: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(data.len());
    let mut count = 0;
    let mut rest = data;
    while count < limit {
        let Some(at) = find(rest, old) else { break };
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(new);
        rest = &rest[at + old.len()..];
        count += 1;
    }
    out.extend_from_slice(rest);
    (out, count)
}

/// First occurrence of a non-empty `needle`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // UTF-8 text (the usual case) gets the standard library's linear-time
    // substring search; other bytes a plain scan.
    if let (Ok(h), Ok(n)) = (std::str::from_utf8(haystack), std::str::from_utf8(needle)) {
        return h.find(n);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_are_counted_and_limited() {
        assert_eq!(
            replace_bytes(b"a-a-a", b"a", b"bb", usize::MAX),
            (b"bb-bb-bb".to_vec(), 3)
        );
        assert_eq!(
            replace_bytes(b"a-a-a", b"a", b"b", 2),
            (b"b-b-a".to_vec(), 2)
        );
        assert_eq!(
            replace_bytes(b"aaaa", b"aa", b"x", usize::MAX),
            (b"xx".to_vec(), 2)
        );
        assert_eq!(
            replace_bytes(b"abc", b"z", b"y", usize::MAX),
            (b"abc".to_vec(), 0)
        );
        assert_eq!(replace_bytes(b"abc", b"b", b"", 0), (b"abc".to_vec(), 0));
        // Invalid UTF-8 around the match survives untouched.
        assert_eq!(
            replace_bytes(b"\xff old \xfe", b"old", b"new", usize::MAX),
            (b"\xff new \xfe".to_vec(), 1)
        );
    }
}
