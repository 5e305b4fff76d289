//! The workspace as a tree: what is at a path, a directory's entries, and
//! the files below a directory that match a glob.

use runbox_core::store::{self, ListOptions};

use super::glob::Glob;
use super::host::list_host_extras;
use super::{DirEntry, FileError, Found, Workspace, blocking, entry};

impl Workspace {
    pub(crate) async fn stat_path(&self, input: &str) -> Result<Option<DirEntry>, FileError> {
        let path = self.resolve(input, true).await?;
        Ok(self.found(&path).await?.map(|found| entry(&path, &found)))
    }

    pub(crate) async fn list(&self, input: &str) -> Result<Vec<DirEntry>, FileError> {
        let path = self.resolve(input, true).await?;
        let prefix = self.dir_prefix(&path);
        let mut entries = std::collections::BTreeMap::new();
        let mut opts = ListOptions {
            prefix: prefix.clone(),
            delimiter: Some('/'),
            ..ListOptions::default()
        };
        loop {
            let page = self
                .store
                .list(&opts)
                .await
                .map_err(|e| FileError::store(format!("list {path}"), e))?;
            for meta in page.objects {
                let name = meta.name[prefix.len()..].to_owned();
                let found = Found::File(meta);
                entries.insert(name.clone(), entry(&path.join_normal(&name), &found));
            }
            for p in page.prefixes {
                let name = p[prefix.len()..].trim_end_matches('/').to_owned();
                entries.insert(name.clone(), entry(&path.join_normal(&name), &Found::Dir));
            }
            match page.next_page_token {
                Some(token) => opts.page_token = Some(token),
                None => break,
            }
        }
        if let Some(dir) = self.host_path(&path) {
            // Not objects, but there for commands: empty directories and symlinks.
            let extra = blocking(move || list_host_extras(&dir)).await?;
            for (name, found) in extra {
                if !entries.contains_key(&name) {
                    entries.insert(name.clone(), entry(&path.join_normal(&name), &found));
                }
            }
        }
        if entries.is_empty() && !path.is_root() {
            match self.found(&path).await? {
                Some(Found::Dir) => {}
                Some(_) => {
                    return Err(FileError::NotADirectory {
                        path: path.to_string(),
                    });
                }
                None => {
                    return Err(FileError::NotFound {
                        path: path.to_string(),
                    });
                }
            }
        }
        Ok(entries.into_values().collect())
    }

    pub(crate) async fn find(&self, input: &str, pattern: &str) -> Result<Vec<String>, FileError> {
        let glob = Glob::parse(pattern).map_err(|reason| FileError::InvalidGlob {
            glob: pattern.to_owned(),
            reason,
        })?;
        let dir = self.resolve(input, true).await?;
        if !dir.is_root() {
            match self.found(&dir).await? {
                Some(Found::Dir) => {}
                Some(_) => {
                    return Err(FileError::NotADirectory {
                        path: dir.to_string(),
                    });
                }
                None => {
                    return Err(FileError::NotFound {
                        path: dir.to_string(),
                    });
                }
            }
        }
        let base = self.dir_prefix(&dir);
        let literal = glob.literal_dir();
        let listing = if literal.is_empty() {
            base.clone()
        } else {
            format!("{base}{literal}/")
        };
        let objects = store::list_all(&*self.store, &listing)
            .await
            .map_err(|e| FileError::store(format!("list {dir}"), e))?;
        Ok(objects
            .iter()
            .filter_map(|meta| {
                let rel = &meta.name[base.len()..];
                glob.matches(rel)
                    .then(|| dir.join_normal(rel).as_str().to_owned())
            })
            .collect())
    }
}
