//! The manifest object: read (a missing one is an empty workspace) and
//! written under a precondition (a failed one is a conflict).

use runbox_core::store::{ObjectMeta, Precondition, PutOptions, Store};

use super::{Manifest, Result, WorkspaceError};

/// The manifest `name` as stored, with its generation; empty and 0 when
/// there is none.
pub(super) async fn read_manifest(store: &dyn Store, name: &str) -> Result<(Manifest, i64)> {
    match store.get(name).await {
        Ok(obj) => {
            let manifest =
                Manifest::decode(&obj.data).map_err(|source| WorkspaceError::InvalidManifest {
                    name: name.to_owned(),
                    source,
                })?;
            Ok((manifest, obj.meta.generation))
        }
        Err(e) if e.is_not_found() => Ok((Manifest::default(), 0)),
        Err(source) => Err(WorkspaceError::Store {
            op: "read workspace manifest",
            name: name.to_owned(),
            source,
        }),
    }
}

/// Writes the manifest `name` if `precondition` holds.
pub(super) async fn put_manifest(
    store: &dyn Store,
    name: &str,
    manifest: &Manifest,
    precondition: Precondition,
) -> Result<ObjectMeta> {
    match store
        .put(name, manifest.encode(), PutOptions::when(precondition))
        .await
    {
        Ok(meta) => Ok(meta),
        Err(source) if source.is_conflict() => Err(WorkspaceError::Conflict {
            name: name.to_owned(),
            source,
        }),
        Err(source) => Err(WorkspaceError::Store {
            op: "write workspace manifest",
            name: name.to_owned(),
            source,
        }),
    }
}
