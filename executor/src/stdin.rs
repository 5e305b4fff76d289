//! The command's standard input: the request's `requests/{id}.stdin`
//! object, copied to a scratch file that becomes bash's stdin. A file, as for
//! output (see [`crate::process::run`]): a command that never reads its input
//! cannot block anything, and one that reads it gets the exact bytes.

use runbox_core::ExecutionId;
use runbox_core::layout;
use runbox_core::store::Store;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::error_chain;

/// Copies the stdin object of execution `id` to `file`, when the request
/// has one (`expected` > 0 bytes), streaming it. `file` is the handle the
/// scratch file was created with, never reopened by name: the command (or
/// what an earlier warm command left running) could have put a link to a
/// host file there. An error names what went wrong, for a REJECTED result:
/// the command must not run on partial input.
pub async fn fetch(
    store: &dyn Store,
    id: &ExecutionId,
    expected: u64,
    file: &std::fs::File,
) -> Result<(), String> {
    if expected == 0 {
        return Ok(());
    }
    let name = layout::request_stdin(id);
    let (meta, stream) = store
        .get_stream(&name)
        .await
        .map_err(|e| format!("read standard input: {}", error_chain(&e)))?;
    if meta.size != expected {
        return Err(format!(
            "standard input object {name} has {} bytes; the request says {expected}",
            meta.size
        ));
    }
    let mut out = tokio::fs::File::from_std(
        file.try_clone()
            .map_err(|e| format!("open standard input file: {e}"))?,
    );
    // One byte past what is expected is enough to notice a stream that
    // does not match its metadata.
    let copied = tokio::io::copy(&mut stream.take(expected + 1), &mut out)
        .await
        .map_err(|e| format!("copy standard input from {name}: {e}"))?;
    if copied != expected {
        return Err(format!(
            "standard input object {name} gave {copied} bytes; the request says {expected}"
        ));
    }
    // Bash reads from the start of the shared file description.
    out.rewind()
        .await
        .map_err(|e| format!("rewind standard input file: {e}"))?;
    Ok(())
}
