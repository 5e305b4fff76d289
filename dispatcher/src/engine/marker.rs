//! The background marker, `sessions/{session}/background/{execution}.json`
//! (its codec is [`runbox_core::background_marker`]): written before a
//! background launch, so whatever runs is listed, and consulted when
//! settling an execution that ended without a result (a kill that was asked
//! for makes it CANCELLED, not LOST).

use runbox_core::background_marker::BackgroundMarker;
use runbox_core::store::{Precondition, PutOptions, Store};
use runbox_core::{ExecutionId, SessionId, layout};

use crate::error::{BackgroundError, Error, Result};

/// How many times [`update`] reads again after losing a race to another
/// writer of the same marker; there are at most two (the launch recording
/// its locator, a kill), so a third loss means something else is wrong.
const UPDATE_ATTEMPTS: usize = 4;

/// Reads and decodes the marker of `id` in `session`.
pub(crate) async fn read(
    store: &dyn Store,
    session: &SessionId,
    id: &ExecutionId,
) -> Result<BackgroundMarker> {
    read_at(store, session, id).await.map(|(marker, _)| marker)
}

/// Rewrites the marker of `id` with `change` applied, conditioned on the
/// generation read, so two writers (a launch recording where it runs, a kill
/// from another process) never undo each other's field.
pub(crate) async fn update(
    store: &dyn Store,
    session: &SessionId,
    id: &ExecutionId,
    change: impl Fn(&mut BackgroundMarker),
) -> Result<BackgroundMarker> {
    let name = layout::background_marker(session, id);
    let mut attempt = 1;
    loop {
        let (mut marker, generation) = read_at(store, session, id).await?;
        change(&mut marker);
        let opts = PutOptions::when(Precondition::GenerationMatch(generation));
        match store.put(&name, marker.encode(), opts).await {
            Ok(_) => return Ok(marker),
            Err(e) if e.is_conflict() && attempt < UPDATE_ATTEMPTS => attempt += 1,
            Err(e) => return Err(Error::store(format!("write background marker {name}"), e)),
        }
    }
}

/// The marker and the generation it was read at.
async fn read_at(
    store: &dyn Store,
    session: &SessionId,
    id: &ExecutionId,
) -> Result<(BackgroundMarker, i64)> {
    let name = layout::background_marker(session, id);
    let object = store
        .get(&name)
        .await
        .map_err(|e| Error::store(format!("read background marker {name}"), e))?;
    let marker = BackgroundMarker::decode(&object.data, session, id).map_err(|e| {
        Error::Background(BackgroundError::InvalidMarker {
            name: name.clone(),
            detail: crate::error_chain(&e),
        })
    })?;
    Ok((marker, object.meta.generation))
}

/// Writes a marker with `opts` (create-only for a new process).
pub(crate) async fn write(
    store: &dyn Store,
    marker: &BackgroundMarker,
    opts: PutOptions,
) -> Result<()> {
    let name = layout::background_marker(&marker.session, &marker.execution_id);
    store
        .put(&name, marker.encode(), opts)
        .await
        .map(drop)
        .map_err(|e| Error::store(format!("write background marker {name}"), e))
}
