//! Reading and following a background process's output chunks
//! (`logs/{execution}/stdout.000001`, ...).

use bytes::BytesMut;
use runbox_core::layout;

use super::{BackgroundHandle, FOLLOW_INTERVAL, LogRead, MAX_LOG_READ_BYTES, Stream};
use crate::engine::Engine;
use crate::error::{Error, Result};

/// Reads a stream's chunks from chunk `offset` on, without waiting; at most
/// [`MAX_LOG_READ_BYTES`] (whole chunks; at least one) per call.
pub(crate) async fn read(
    engine: &Engine,
    handle: &BackgroundHandle,
    stream: Stream,
    offset: u64,
) -> Result<LogRead> {
    let id = &handle.execution_id;
    // The result first: the executor writes every chunk before it, so if
    // it exists now, the chunks read below are all there will ever be.
    let ended = match engine.store.head(&layout::result(id)).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(Error::store(format!("read result of execution {id}"), e)),
    };
    let mut data = BytesMut::new();
    let mut next = offset;
    let mut complete = true;
    loop {
        if data.len() >= MAX_LOG_READ_BYTES {
            complete = false;
            break;
        }
        let name = layout::log_chunk(id, stream, next + 1);
        match engine.store.get(&name).await {
            Ok(o) => {
                data.extend_from_slice(&o.data);
                next += 1;
            }
            Err(e) if e.is_not_found() => break,
            Err(e) => return Err(Error::store(format!("read log {name}"), e)),
        }
    }
    Ok(LogRead {
        data: data.freeze(),
        next_offset: next,
        ended: ended && complete,
    })
}

/// Reads the streams in `from`; when nothing new is there yet, waits until
/// something is or the process ends (reading again every
/// [`FOLLOW_INTERVAL`], and at once when it ends).
pub(crate) async fn follow<const N: usize>(
    engine: &Engine,
    handle: &BackgroundHandle,
    from: [(Stream, u64); N],
) -> Result<[LogRead; N]> {
    let id = &handle.execution_id;
    // Both registered before the first read (list-then-watch): an end that
    // comes between a read and the wait is not missed.
    let mut waiter = engine.register_shared(id)?;
    let mut watch = Some(engine.end_watch(id).await?);
    loop {
        let mut reads: [LogRead; N] = std::array::from_fn(|_| LogRead::default());
        for (read_into, (stream, offset)) in reads.iter_mut().zip(from) {
            *read_into = read(engine, handle, stream, offset).await?;
        }
        if reads.iter().any(|r| !r.data.is_empty()) || reads.iter().all(|r| r.ended) {
            return Ok(reads);
        }
        let event = async {
            match waiter.as_mut() {
                Some(w) => {
                    let _ = w.await;
                }
                None => std::future::pending().await,
            }
        };
        let ended = async {
            match watch.as_mut() {
                Some(w) => w.ended(&*engine.launcher, id).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Whatever it said (event, or the notifier stopped), the next
            // read settles it. A resolved waiter cannot be polled again, so
            // from here on the timer and the end watch remain.
            () = event => waiter = None,
            account = ended => {
                watch = None;
                // The executor is gone: its result exists, or it never will
                // and is settled now; either way the next read reports the
                // end.
                engine.settle(id, &handle.session, account).await?;
            }
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
    }
}
