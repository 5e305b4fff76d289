//! The background marker, `sessions/{session}/background/{execution}.json`
//! (its codec is [`runbox_core::background_marker`]): written before a
//! background launch, so whatever runs is listed, and consulted when
//! settling an execution that ended without a result (a kill that was asked
//! for makes it CANCELLED, not LOST).

use runbox_core::background_marker::BackgroundMarker;
use runbox_core::store::{PutOptions, Store};
use runbox_core::{ExecutionId, SessionId, layout};

use crate::error::{BackgroundError, Error, Result};

/// Reads and decodes the marker of `id` in `session`.
pub(crate) async fn read(
    store: &dyn Store,
    session: &SessionId,
    id: &ExecutionId,
) -> Result<BackgroundMarker> {
    let name = layout::background_marker(session, id);
    let data = store
        .get(&name)
        .await
        .map_err(|e| Error::store(format!("read background marker {name}"), e))?
        .data;
    BackgroundMarker::decode(&data, session, id).map_err(|e| {
        Error::Background(BackgroundError::InvalidMarker {
            name: name.clone(),
            detail: crate::error_chain(&e),
        })
    })
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
