//! Turning a captured output file into the result's inline text, flags and,
//! where the inline text is not the exact stream, a log object.

use std::io::Read;
use std::path::Path;

use runbox_core::ExecutionId;
use runbox_core::layout::{self, Stream};
use runbox_core::store::{PutOptions, Store, StoreError};

/// One stream as the result reports it.
#[derive(Debug, Default)]
pub struct Captured {
    /// Inline text (at most the cap, lossy where not UTF-8).
    pub text: String,
    /// The stream was longer than the cap.
    pub truncated: bool,
    /// The inline part was not valid UTF-8.
    pub lossy: bool,
    /// The log object holding the exact stream, when one was written.
    pub log: String,
    /// Total bytes.
    pub bytes: u64,
}

/// Reads up to `cap` bytes of the stream for the inline text and, when the
/// stream is longer or not valid UTF-8, uploads it whole to
/// `logs/{execution}/{stream}` so no byte is lost.
pub async fn collect(
    store: &dyn Store,
    id: &ExecutionId,
    stream: Stream,
    file: &Path,
    cap: u64,
) -> Result<Captured, CollectError> {
    let bytes = std::fs::metadata(file)
        .map_err(|source| CollectError::Read { stream, source })?
        .len();
    let mut head = Vec::with_capacity(cap.min(bytes) as usize);
    std::fs::File::open(file)
        .and_then(|f| f.take(cap).read_to_end(&mut head))
        .map_err(|source| CollectError::Read { stream, source })?;
    let truncated = bytes > cap;
    let (text, lossy) = to_text(&head, truncated);
    let mut captured = Captured {
        text,
        truncated,
        lossy,
        log: String::new(),
        bytes,
    };
    if truncated || lossy {
        let name = layout::log(id, stream);
        let reader = tokio::fs::File::open(file)
            .await
            .map_err(|source| CollectError::Read { stream, source })?;
        store
            .put_stream(&name, Box::pin(reader), PutOptions::default())
            .await
            .map_err(|source| CollectError::Upload { stream, source })?;
        captured.log = name;
    }
    Ok(captured)
}

/// Decodes the inline bytes. A multi-byte character cut by the cap is not
/// invalid data, so it is dropped rather than flagged.
fn to_text(head: &[u8], cut: bool) -> (String, bool) {
    match std::str::from_utf8(head) {
        Ok(s) => (s.to_owned(), false),
        Err(e) if cut && e.error_len().is_none() => {
            let valid = &head[..e.valid_up_to()];
            (
                std::str::from_utf8(valid)
                    .expect("prefix up to valid_up_to is UTF-8")
                    .to_owned(),
                false,
            )
        }
        Err(_) => (String::from_utf8_lossy(head).into_owned(), true),
    }
}

/// A stream could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The local capture file could not be read.
    #[error("read captured {}", stream.as_str())]
    Read {
        /// Which stream.
        stream: Stream,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log object could not be written.
    #[error("upload {} log", stream.as_str())]
    Upload {
        /// Which stream.
        stream: Stream,
        /// The cause.
        #[source]
        source: StoreError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_decoding_flags_only_real_damage() {
        assert_eq!(to_text(b"abc", false), ("abc".into(), false));
        // "é" is C3 A9; cut after C3 by the cap: dropped, not lossy.
        assert_eq!(to_text(b"ab\xC3", true), ("ab".into(), false));
        // The same bytes at the real end of the stream are damage.
        assert_eq!(to_text(b"ab\xC3", false), ("ab\u{FFFD}".into(), true));
        assert!(to_text(b"\xFF\x00", false).1);
    }
}
