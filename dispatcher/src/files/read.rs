//! Reading files: whole or by lines, as bytes, and searched line by line.

use bytes::Bytes;
use runbox_core::store::{ByteStream, ObjectMeta};
use runbox_core::workspace_path::WorkspacePath;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{
    FileError, FileText, Found, MAX_EDIT_BYTES, READ_BUFFER_BYTES, ReadOptions, SearchMatch,
    Workspace,
};

impl Workspace {
    pub(crate) async fn read_text(
        &self,
        input: &str,
        opts: ReadOptions,
    ) -> Result<FileText, FileError> {
        let start = opts.start_line.unwrap_or(1);
        let end = opts.end_line.unwrap_or(u64::MAX);
        if start == 0 || end < start {
            return Err(FileError::InvalidLineRange { start, end });
        }
        let path = self.resolve(input, true).await?;
        let (meta, stream) = self.open(&path).await?;
        let read_err = |e| FileError::io(format!("read {path}"), e);

        // Raw bytes kept: a little past max_length, so a character cut by
        // the limit is dropped below rather than mistaken for invalid UTF-8.
        let keep = opts.max_length.map_or(usize::MAX, |m| m.saturating_add(4));
        let mut raw = Vec::new();
        let mut cut = false;
        let mut line: u64 = 1;
        let mut last_byte = b'\n';
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        loop {
            let buf = reader.fill_buf().await.map_err(read_err)?;
            if buf.is_empty() {
                break;
            }
            let mut pos = 0;
            while pos < buf.len() {
                let newline = buf[pos..].iter().position(|&b| b == b'\n');
                let piece_end = newline.map_or(buf.len(), |i| pos + i + 1);
                if (start..=end).contains(&line) && !cut {
                    let piece = &buf[pos..piece_end];
                    let room = keep - raw.len();
                    if piece.len() > room {
                        raw.extend_from_slice(&piece[..room]);
                        cut = true;
                    } else {
                        raw.extend_from_slice(piece);
                    }
                }
                if newline.is_some() {
                    line += 1;
                }
                pos = piece_end;
            }
            last_byte = buf[buf.len() - 1];
            let n = buf.len();
            reader.consume(n);
        }
        // `line` is one more than the number of newlines seen.
        let total_lines = if last_byte == b'\n' { line - 1 } else { line };
        if cut {
            let incomplete = incomplete_tail(&raw);
            raw.truncate(raw.len() - incomplete);
        }
        let (mut content, lossy) = match String::from_utf8(raw) {
            Ok(s) => (s, false),
            Err(e) => (String::from_utf8_lossy(e.as_bytes()).into_owned(), true),
        };
        let mut truncated = false;
        if let Some(max) = opts.max_length
            && content.len() > max
        {
            let mut at = max;
            while !content.is_char_boundary(at) {
                at -= 1;
            }
            content.truncate(at);
            truncated = true;
        }
        Ok(FileText {
            content,
            total_lines,
            truncated,
            lossy,
            size: meta.size,
        })
    }

    pub(crate) async fn text_stream(
        &self,
        input: &str,
        opts: ReadOptions,
    ) -> Result<TextStream, FileError> {
        let start = opts.start_line.unwrap_or(1);
        let end = opts.end_line.unwrap_or(u64::MAX);
        if start == 0 || end < start {
            return Err(FileError::InvalidLineRange { start, end });
        }
        let path = self.resolve(input, true).await?;
        let (meta, stream) = self.open(&path).await?;
        Ok(TextStream {
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, stream),
            path: path.to_string(),
            start,
            end,
            line: 1,
            pending: Vec::new(),
            room: opts.max_length.unwrap_or(usize::MAX),
            lossy: false,
            truncated: false,
            done: false,
            size: meta.size,
        })
    }

    pub(crate) async fn read_bytes(&self, input: &str) -> Result<Bytes, FileError> {
        let path = self.resolve(input, true).await?;
        let (meta, stream) = self.open(&path).await?;
        let data = read_capped(stream, &path, meta.size, "reading a whole file").await?;
        Ok(Bytes::from(data))
    }

    pub(crate) async fn search(
        &self,
        input: &str,
        pattern: &str,
    ) -> Result<Vec<SearchMatch>, FileError> {
        let regex =
            regex::bytes::Regex::new(pattern).map_err(|source| FileError::InvalidRegex {
                pattern: pattern.to_owned(),
                source,
            })?;
        let path = self.resolve(input, true).await?;
        let (_, stream) = self.open(&path).await?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
        let mut matches = Vec::new();
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| FileError::io(format!("read {path}"), e))?;
            if n == 0 {
                break;
            }
            number += 1;
            let text = line
                .strip_suffix(b"\n")
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                .unwrap_or(&line);
            if regex.is_match(text) {
                matches.push(SearchMatch {
                    line_number: number,
                    line: String::from_utf8_lossy(text).into_owned(),
                });
            }
        }
        Ok(matches)
    }

    /// Opens a file for reading, with a precise error when it is missing or
    /// a directory.
    pub(super) async fn open(
        &self,
        path: &WorkspacePath,
    ) -> Result<(ObjectMeta, ByteStream), FileError> {
        if path.is_root() {
            return Err(FileError::IsADirectory {
                path: path.to_string(),
            });
        }
        match self.store.get_stream(&self.object(path)).await {
            Ok(opened) => Ok(opened),
            Err(e) if e.is_not_found() => Err(match self.found(path).await? {
                Some(Found::Dir) => FileError::IsADirectory {
                    path: path.to_string(),
                },
                _ => FileError::NotFound {
                    path: path.to_string(),
                },
            }),
            Err(e) => Err(FileError::store(format!("read {path}"), e)),
        }
    }
}

/// The text of a file, chunk by chunk ([`Session::read_file_stream`]): the
/// lines asked for, decoded as UTF-8 with invalid bytes replaced by U+FFFD
/// (exactly as [`Session::read_file`] decodes them), cut at
/// [`ReadOptions::max_length`] bytes on a character boundary. At most one
/// read buffer (64 KiB) is held at a time.
///
/// [`Session::read_file_stream`]: crate::Session::read_file_stream
/// [`Session::read_file`]: crate::Session::read_file
pub struct TextStream {
    reader: BufReader<ByteStream>,
    path: String,
    start: u64,
    end: u64,
    /// The line the next byte belongs to, 1-based.
    line: u64,
    /// The start of a character whose other bytes are in the next chunk.
    pending: Vec<u8>,
    /// Bytes of text still allowed by `max_length`.
    room: usize,
    lossy: bool,
    truncated: bool,
    done: bool,
    size: u64,
}

impl TextStream {
    /// The next piece of text, never empty; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<String>, FileError> {
        while !self.done {
            let buf = self
                .reader
                .fill_buf()
                .await
                .map_err(|e| FileError::io(format!("read {}", self.path), e))?;
            if buf.is_empty() {
                self.done = true;
                // A character the file's end cut short is damage.
                let tail = std::mem::take(&mut self.pending);
                if !tail.is_empty() {
                    self.lossy = true;
                    return Ok(self.limit(String::from_utf8_lossy(&tail).into_owned()));
                }
                break;
            }
            // The lines asked for are one contiguous range of bytes, so
            // their part of this buffer is too.
            let mut selected: Option<(usize, usize)> = None;
            let mut pos = 0;
            while pos < buf.len() {
                let newline = buf[pos..].iter().position(|&b| b == b'\n');
                let piece_end = newline.map_or(buf.len(), |i| pos + i + 1);
                if (self.start..=self.end).contains(&self.line) {
                    let from = selected.map_or(pos, |(from, _)| from);
                    selected = Some((from, piece_end));
                }
                pos = piece_end;
                if newline.is_some() {
                    self.line += 1;
                    if self.line > self.end {
                        // Past the last line asked for: nothing more to read.
                        self.done = true;
                        break;
                    }
                }
            }
            let text = selected
                .map(|(from, to)| decode(&mut self.pending, &mut self.lossy, &buf[from..to]));
            // Nothing is pending when reading stopped after a line: a line
            // ends with `\n`, which completes every character before it.
            self.reader.consume(pos);
            if let Some(text) = text.filter(|t| !t.is_empty()) {
                return Ok(self.limit(text));
            }
        }
        Ok(None)
    }

    /// Whether some bytes read so far were not valid UTF-8 (and are U+FFFD
    /// in the text); final once [`TextStream::next_chunk`] returned `None`.
    /// With a `max_length` cut, bytes of the last read buffer just past the
    /// cut count too.
    pub fn lossy(&self) -> bool {
        self.lossy
    }

    /// Whether the text was cut at [`ReadOptions::max_length`].
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Size of the whole file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Applies `max_length` to the next piece of text.
    fn limit(&mut self, mut text: String) -> Option<String> {
        if text.len() > self.room {
            let mut at = self.room;
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
            self.truncated = true;
            self.done = true;
        }
        self.room -= text.len();
        if self.room == 0 && !self.truncated {
            // Exactly at the limit: whether more follows decides `truncated`
            // only for read_file; a stream simply ends here.
            self.done = true;
        }
        (!text.is_empty()).then_some(text)
    }
}

impl std::fmt::Debug for TextStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextStream")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Decodes `bytes` after what is `pending` (as `String::from_utf8_lossy`
/// would decode the two together, setting `lossy` on a replacement); keeps
/// a character cut at the end of `bytes` pending for the next chunk.
fn decode(pending: &mut Vec<u8>, lossy: &mut bool, bytes: &[u8]) -> String {
    pending.extend_from_slice(bytes);
    let mut out = String::with_capacity(pending.len());
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(&String::from_utf8_lossy(valid));
                match e.error_len() {
                    // Incomplete, not invalid (yet): wait for the rest.
                    None => {
                        rest = after;
                        break;
                    }
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        *lossy = true;
                        rest = &after[bad..];
                    }
                }
            }
        }
    }
    let consumed = pending.len() - rest.len();
    pending.drain(..consumed);
    out
}

/// Reads a whole stream of a file of `size` bytes, refusing more than
/// [`MAX_EDIT_BYTES`] (checked on the bytes read too: a file edited by a
/// command may have grown since its size was read).
pub(super) async fn read_capped(
    stream: ByteStream,
    path: &WorkspacePath,
    size: u64,
    op: &'static str,
) -> Result<Vec<u8>, FileError> {
    let too_large = |size| FileError::TooLargeToEdit {
        path: path.to_string(),
        size,
        limit: MAX_EDIT_BYTES,
        op,
    };
    if size > MAX_EDIT_BYTES {
        return Err(too_large(size));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    stream
        .take(MAX_EDIT_BYTES + 1)
        .read_to_end(&mut data)
        .await
        .map_err(|e| FileError::io(format!("read {path}"), e))?;
    if data.len() as u64 > MAX_EDIT_BYTES {
        return Err(too_large(data.len() as u64));
    }
    Ok(data)
}

/// How many bytes at the end of `raw` are the start of a UTF-8 character
/// whose remaining bytes were cut off.
fn incomplete_tail(raw: &[u8]) -> usize {
    for back in 1..=raw.len().min(3) {
        let b = raw[raw.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if width > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_in_pieces_matches_decoding_at_once() {
        let data: &[u8] = b"a\xC3\xA9b\xFF\xE2\x82\xAC\xF0\x9F\x98\x80\xE2\x82z\xC3";
        let whole = String::from_utf8_lossy(data);
        for cut in 0..=data.len() {
            let (mut pending, mut lossy) = (Vec::new(), false);
            let mut text = decode(&mut pending, &mut lossy, &data[..cut]);
            text += &decode(&mut pending, &mut lossy, &data[cut..]);
            // At the end, what is still pending is a cut-short character.
            text += &String::from_utf8_lossy(&pending);
            assert_eq!(text, whole, "cut at {cut}");
            assert!(lossy || !pending.is_empty(), "cut at {cut}");
        }
    }

    #[test]
    fn a_cut_character_is_recognised() {
        let e_acute = "é".as_bytes(); // 2 bytes
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(incomplete_tail(b"abc"), 0);
        assert_eq!(incomplete_tail(&[b'a', e_acute[0]]), 1);
        assert_eq!(incomplete_tail(e_acute), 0);
        assert_eq!(incomplete_tail(&euro[..2]), 2);
        assert_eq!(incomplete_tail(euro), 0);
        assert_eq!(incomplete_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_tail(b""), 0);
    }
}
