//! The warm shell's control pipe: the shell's own standard output, which
//! only the executor reads (each command's streams are redirected to files
//! of its own).
//!
//! The shell writes records of NUL-terminated fields on it, each opened by
//! an empty field (so a record starts cleanly after any stray bytes):
//!
//! - `\0c{tag}\0{status}\0{pwd}\n\0{declare -px}\0`: the capture of the
//!   line tagged `tag` (the format [`crate::shell::parse_capture`] reads);
//! - `\0d{tag}\0`: the line tagged `tag` is done.
//!
//! Carrying the capture here rather than in a file takes a file creation,
//! a read and a removal off every command. What a command can forge: it
//! runs in the shell itself, so it can write records for its own line (it
//! can read its tag) and so set its own capture, which is what it could
//! already do by exporting or `cd`-ing; the state saved is its own
//! session's. What an earlier command left running cannot learn a later
//! line's tag (fresh random per line, set after it was forked), so its
//! records are passed over. Bash values hold no NUL, so a real capture
//! never splits wrongly; every field is bounded, so nothing written here
//! grows the executor's memory past [`MAX_RECORD`].

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe::Receiver;

/// The most bytes one capture record may hold (the capture file's former
/// bound): more is refused with a note, never buffered.
pub(super) const MAX_RECORD: usize = 16 << 20;

/// What came back for one line.
#[derive(Debug, Default)]
pub(super) struct Reply {
    /// The capture record's bytes (status, pwd, declarations, each
    /// NUL-terminated), when the line wrote one.
    pub(super) capture: Option<Vec<u8>>,
    /// Why a capture record that came was not kept.
    pub(super) refused: Option<String>,
}

/// The reading end of the control pipe.
pub(super) struct Control {
    pipe: BufReader<Receiver>,
    /// The current field, reused from record to record.
    field: Vec<u8>,
}

/// How reading one field ended.
enum Field {
    /// The field is in `Control::field`.
    Whole,
    /// It passed its bound: the bytes were dropped up to its end.
    TooLong,
    /// The pipe closed: the shell and everything holding its output ended.
    End,
}

impl Control {
    /// Reads the shell's output from `pipe`.
    pub(super) fn new(pipe: Receiver) -> Self {
        Self {
            pipe: BufReader::with_capacity(64 << 10, pipe),
            field: Vec::new(),
        }
    }

    /// Reads records until `\0d{tag}\0`; `None` when the pipe closed
    /// first (the capture that came before is still returned in `partial`).
    pub(super) async fn wait_for(&mut self, tag: &str, partial: &mut Reply) -> Option<()> {
        loop {
            match self.next_field(MAX_RECORD).await {
                Field::End => return None,
                Field::TooLong => continue,
                Field::Whole => {}
            }
            let Some(rest) = self.field.strip_prefix(b"c".as_slice()) else {
                if self.field.strip_prefix(b"d".as_slice()) == Some(tag.as_bytes()) {
                    return Some(());
                }
                // A record of an older line (an interrupt cut it short and
                // it came back later), or stray bytes: passed over.
                continue;
            };
            if rest != tag.as_bytes() {
                continue;
            }
            match self.capture().await {
                Ok(bytes) => {
                    partial.capture = Some(bytes);
                    partial.refused = None;
                }
                Err(Some(why)) => {
                    partial.capture = None;
                    partial.refused = Some(why);
                }
                Err(None) => return None,
            }
        }
    }

    /// The three fields of a capture record, NUL-terminated as the
    /// capture format has them; `Err(None)` when the pipe closed.
    async fn capture(&mut self) -> Result<Vec<u8>, Option<String>> {
        let mut bytes = Vec::new();
        let mut too_long = false;
        for _ in 0..3 {
            let left = MAX_RECORD.saturating_sub(bytes.len());
            match self.next_field(left).await {
                Field::End => return Err(None),
                Field::TooLong => too_long = true,
                Field::Whole => {
                    bytes.extend_from_slice(&self.field);
                    bytes.push(0);
                }
            }
        }
        if too_long {
            return Err(Some(format!(
                "the shell's state capture has more than {MAX_RECORD} bytes"
            )));
        }
        Ok(bytes)
    }

    /// Reads up to the next NUL into `self.field`, keeping at most `limit`
    /// bytes.
    async fn next_field(&mut self, limit: usize) -> Field {
        self.field.clear();
        let mut too_long = false;
        loop {
            let buf = match self.pipe.fill_buf().await {
                Ok(buf) if !buf.is_empty() => buf,
                _ => return Field::End,
            };
            let (take, end) = match buf.iter().position(|b| *b == 0) {
                Some(i) => (i, Some(i + 1)),
                None => (buf.len(), None),
            };
            if !too_long && self.field.len() + take <= limit {
                self.field.extend_from_slice(&buf[..take]);
            } else {
                too_long = true;
                self.field.clear();
            }
            match end {
                Some(used) => {
                    self.pipe.consume(used);
                    return if too_long {
                        Field::TooLong
                    } else {
                        Field::Whole
                    };
                }
                None => {
                    let used = buf.len();
                    self.pipe.consume(used);
                }
            }
        }
    }
}

/// The capture fields of the record tagged `tag` in `bytes` (the file the
/// EXIT trap writes, in the same format), NUL-terminated.
pub(super) fn capture_in(bytes: &[u8], tag: &str) -> Option<Vec<u8>> {
    let mut fields = bytes.split(|b| *b == 0);
    fields.find(|f| f.strip_prefix(b"c".as_slice()) == Some(tag.as_bytes()))?;
    let mut capture = Vec::new();
    for _ in 0..3 {
        capture.extend_from_slice(fields.next()?);
        capture.push(0);
    }
    // The record's last field ends with a NUL: a cut-short file has none.
    fields.next()?;
    Some(capture)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn reply_to(stream: &[u8], tag: &str) -> (Option<()>, Reply) {
        let (tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
        let mut control = Control::new(rx);
        let stream = stream.to_vec();
        let writer = tokio::spawn(async move {
            let mut tx = tx;
            tx.write_all(&stream).await.unwrap();
        });
        let mut reply = Reply::default();
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            control.wait_for(tag, &mut reply),
        )
        .await
        .expect("no answer");
        writer.await.unwrap();
        (done, reply)
    }

    #[tokio::test]
    async fn the_capture_of_the_line_waited_for_is_kept() {
        let stream = b"junk\0c1.a\x000\0/old\n\0declare -x A=\"1\"\n\0\0d1.a\0\
                       \0c2.b\x003\0/w\n\0declare -x B=\"2\"\n\0\0d2.b\0";
        let (done, reply) = reply_to(stream, "2.b").await;
        assert_eq!(done, Some(()));
        assert_eq!(
            reply.capture.as_deref(),
            Some(b"3\0/w\n\0declare -x B=\"2\"\n\0".as_slice())
        );
        let capture = crate::shell::parse_capture(&reply.capture.unwrap()).unwrap();
        assert_eq!(capture.exit_code, 3);
        assert_eq!(capture.cwd, "/w");
    }

    #[tokio::test]
    async fn records_with_another_tag_are_passed_over() {
        // A job of an earlier line forges a capture and a done record for
        // a tag it guessed wrong: neither counts.
        let stream = b"\0c9.x\x000\0/\n\0declare -x STOLEN=1\n\0\0d9.x\0\0d9.y\0";
        let (done, reply) = reply_to(stream, "9.y").await;
        assert_eq!(done, Some(()));
        assert!(reply.capture.is_none(), "{reply:?}");
    }

    #[tokio::test]
    async fn a_closed_pipe_ends_the_wait_with_what_came() {
        let (done, reply) = reply_to(b"\0c4.q\x00127\0/\n\0\0", "4.q").await;
        assert_eq!(done, None);
        assert!(reply.capture.is_some());
        let (done, reply) = reply_to(b"\0c4.q\x00127\0/", "4.q").await;
        assert_eq!(done, None);
        assert!(reply.capture.is_none());
    }

    #[test]
    fn the_exit_traps_file_holds_the_same_record() {
        let file = b"\0c3.f\x003\0/w\n\0declare -x A=\"1\"\n\0";
        assert_eq!(
            capture_in(file, "3.f").as_deref(),
            Some(b"3\0/w\n\0declare -x A=\"1\"\n\0".as_slice())
        );
        assert_eq!(capture_in(file, "3.g"), None);
        assert_eq!(capture_in(&file[..file.len() - 1], "3.f"), None);
    }

    #[tokio::test]
    async fn an_oversized_field_is_dropped_not_buffered() {
        let mut stream = b"\0".to_vec();
        stream.extend(std::iter::repeat_n(b'x', MAX_RECORD + 10));
        stream.extend_from_slice(b"\0d5.z\0");
        let (done, reply) = reply_to(&stream, "5.z").await;
        assert_eq!(done, Some(()));
        assert!(reply.capture.is_none());
        let mut stream = b"\0c6.z\x000\0/\n\0".to_vec();
        stream.extend(std::iter::repeat_n(b'x', MAX_RECORD + 10));
        stream.extend_from_slice(b"\0\0d6.z\0");
        let (done, reply) = reply_to(&stream, "6.z").await;
        assert_eq!(done, Some(()));
        assert!(reply.capture.is_none());
        assert!(reply.refused.is_some_and(|r| r.contains("more than")));
    }
}
