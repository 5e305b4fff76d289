//! Listings: a walk of the content tree in full-name order, folding names
//! at a delimiter, in pages resumed through opaque page tokens.

use std::fs;
use std::path::Path;

use super::*;

/// Page size when [`ListOptions::page_size`] is not set (Cloud Storage's).
const DEFAULT_PAGE_SIZE: usize = 1000;

/// Marks page tokens this store issued.
const TOKEN_TAG: &str = "l1.";

impl Inner {
    pub(super) fn list(&self, opts: &ListOptions) -> Result<ListPage> {
        let prefix = opts.prefix.as_str();
        let after = opts
            .page_token
            .as_deref()
            .map(|token| decode_token(token, prefix))
            .transpose()?;
        let page_size = opts
            .page_size
            .filter(|&n| n > 0)
            .map_or(DEFAULT_PAGE_SIZE, |n| n as usize);

        // Only the prefix's directory is walked: `results/ab` reads
        // `results/` and keeps the entries starting with `ab`.
        let (dir, leaf) = match prefix.rfind('/') {
            Some(i) => prefix.split_at(i + 1),
            None => ("", prefix),
        };
        // A directory part that is not a valid name (`../`, `a//`,
        // `.runbox/`) cannot be the start of any object name.
        if !dir.is_empty() && validate_name(&dir[..dir.len() - 1]).is_err() {
            return Ok(ListPage::default());
        }
        // Listings never look through a symlink, just like reads.
        if !plain_dirs(&self.root, dir) {
            return Ok(ListPage::default());
        }

        let mut walk = Walk {
            inner: self,
            prefix,
            delimiter: opts.delimiter,
            after: after.as_deref(),
            // One more than the page, to learn whether another page follows.
            want: page_size + 1,
            items: Vec::new(),
        };
        walk.dir(dir, leaf)?;

        let mut items = walk.items;
        let next_page_token = if items.len() > page_size {
            items.truncate(page_size);
            items.last().map(|item| encode_token(item.key()))
        } else {
            None
        };
        let mut page = ListPage {
            next_page_token,
            ..ListPage::default()
        };
        for item in items {
            match item {
                Item::Object(meta) => page.objects.push(meta),
                Item::Prefix(p) => page.prefixes.push(p),
            }
        }
        Ok(page)
    }

    /// The metadata of a listed file, under the shared lock; `None` if it
    /// vanished since the directory was read.
    fn list_entry(&self, name: &str) -> Result<Option<ObjectMeta>> {
        let _lock = StripeLock::acquire(self, name, LockMode::Shared)?;
        Ok(self.current(name, true)?.meta)
    }
}

/// One listing in progress: a depth-first walk in lexicographic order of
/// full names, stopping as soon as the page (plus one) is full.
struct Walk<'a> {
    inner: &'a Inner,
    prefix: &'a str,
    delimiter: Option<char>,
    /// Resume strictly after this name or prefix.
    after: Option<&'a str>,
    want: usize,
    items: Vec<Item>,
}

/// One entry of a listing page.
enum Item {
    Object(ObjectMeta),
    Prefix(String),
}

impl Item {
    fn key(&self) -> &str {
        match self {
            Item::Object(meta) => &meta.name,
            Item::Prefix(p) => p,
        }
    }
}

impl Walk<'_> {
    /// Walks the directory holding names that start with `dir` (empty, or
    /// ending with '/'), keeping only entries that start with `leaf`.
    fn dir(&mut self, dir: &str, leaf: &str) -> Result<()> {
        let mut entries = Vec::new();
        for (segment, is_dir) in read_dir(&self.inner.root, dir, self.prefix)? {
            if segment.starts_with(leaf) {
                // Keying directories as `d/` makes sorting by key give the
                // order of the full names below them: `a-b` < `a/x` < `a0`.
                let key = if is_dir {
                    format!("{dir}{segment}/")
                } else {
                    format!("{dir}{segment}")
                };
                entries.push((key, is_dir));
            }
        }
        entries.sort_unstable();

        for (key, is_dir) in entries {
            if self.items.len() >= self.want {
                return Ok(());
            }
            if is_dir {
                // Every name below starts with `key`; when the token is
                // beyond them all, skip the whole subtree.
                if self
                    .after
                    .is_some_and(|after| after > key.as_str() && !after.starts_with(&key))
                {
                    continue;
                }
                match self.fold(&key) {
                    // Every name below folds into the same prefix.
                    Some(p) => {
                        if self.wants_prefix(&p) && self.has_object(&key)? {
                            self.items.push(Item::Prefix(p));
                        }
                    }
                    None => self.dir(&key, "")?,
                }
            } else {
                if key.len() > 1024 || self.after.is_some_and(|after| key.as_str() <= after) {
                    continue;
                }
                match self.fold(&key) {
                    Some(p) => {
                        if self.wants_prefix(&p) {
                            self.items.push(Item::Prefix(p));
                        }
                    }
                    None => {
                        if let Some(meta) = self.inner.list_entry(&key)? {
                            self.items.push(Item::Object(meta));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// With a delimiter, the prefix `key` folds into: the listing prefix
    /// plus everything up to and including the first delimiter after it.
    fn fold(&self, key: &str) -> Option<String> {
        let delimiter = self.delimiter?;
        let rest = &key[self.prefix.len()..];
        rest.find(delimiter)
            .map(|i| key[..self.prefix.len() + i + delimiter.len_utf8()].to_owned())
    }

    /// Whether prefix `p` belongs on this page: after the token and not just
    /// emitted (names sharing a prefix are contiguous, so checking the last
    /// item is enough).
    fn wants_prefix(&self, p: &str) -> bool {
        self.after.is_none_or(|after| p > after)
            && !matches!(self.items.last(), Some(Item::Prefix(last)) if last == p)
    }

    /// Whether the directory for names starting with `dir` holds at least
    /// one object, however deep: empty directories are not objects, so they
    /// must not show up as prefixes.
    fn has_object(&self, dir: &str) -> Result<bool> {
        for (segment, is_dir) in read_dir(&self.inner.root, dir, self.prefix)? {
            if !is_dir || self.has_object(&format!("{dir}{segment}/"))? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The usable entries of the directory for names starting with `dir`: UTF-8
/// names without control characters, regular files (`false`) and
/// directories (`true`). A missing directory has no entries.
fn read_dir(root: &Path, dir: &str, prefix: &str) -> Result<Vec<(String, bool)>> {
    let path = if dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(&dir[..dir.len() - 1])
    };
    let list_err = io_err("list", prefix);
    let reader = match fs::read_dir(&path) {
        Ok(reader) => reader,
        // Pruned by a concurrent delete, or never there.
        Err(e) if is_absent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(list_err(e)),
    };
    let mut out = Vec::new();
    for entry in reader {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(list_err(e)),
        };
        let Ok(segment) = entry.file_name().into_string() else {
            continue;
        };
        if segment.chars().any(char::is_control) || (dir.is_empty() && segment == ".runbox") {
            continue;
        }
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(list_err(e)),
        };
        // DirEntry::file_type does not follow symlinks: a symlinked
        // directory is skipped, so a walk can never loop.
        if file_type.is_dir() {
            out.push((segment, true));
        } else if file_type.is_file() {
            out.push((segment, false));
        }
    }
    Ok(out)
}

/// Whether every segment of `dir` (empty, or ending with '/') below `root`
/// is a real directory, not a symlink.
fn plain_dirs(root: &Path, dir: &str) -> bool {
    let mut path = root.to_path_buf();
    dir.split_terminator('/').all(|segment| {
        path.push(segment);
        fs::symlink_metadata(&path).is_ok_and(|md| md.is_dir())
    })
}

/// A page token: the last key returned, hex-encoded and tagged, so that it
/// stays opaque and a token from elsewhere is recognised.
fn encode_token(key: &str) -> String {
    let mut token = String::with_capacity(TOKEN_TAG.len() + key.len() * 2);
    token.push_str(TOKEN_TAG);
    for b in key.bytes() {
        token.push_str(&format!("{b:02x}"));
    }
    token
}

/// The key a token resumes after; it must come from a listing of `prefix`.
fn decode_token(token: &str, prefix: &str) -> Result<String> {
    let invalid = || StoreError::InvalidPageToken {
        token: token.chars().take(200).collect(),
    };
    let hex = token.strip_prefix(TOKEN_TAG).ok_or_else(invalid)?;
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return Err(invalid());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    let key = String::from_utf8(bytes).map_err(|_| invalid())?;
    if key.is_empty() || !key.starts_with(prefix) {
        return Err(invalid());
    }
    Ok(key)
}
