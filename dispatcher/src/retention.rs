//! Retention: deleting the objects of finished executions that nobody needs
//! any more ([`crate::Client::gc`]).
//!
//! A foreground command leaves `requests/{execution}.json`,
//! `results/{execution}.json`, `logs/{execution}/…` and, when its output
//! was followed live, `results/{execution}.chunk.…` behind, keyed by
//! execution, not session, so destroying a session does not remove them.
//! A garbage collection deletes them for every execution whose result was
//! written more than a given age ago. It works through the [`Store`] trait
//! only, so it runs the same on every backend; on Cloud Storage a bucket
//! lifecycle rule does the same job without a process (README, Retention).
//!
//! What it never touches:
//! - an execution without a result (still running, or lost before it
//!   settled): the result is what says it is over;
//! - an execution with a background marker in any session: the listing of
//!   background processes reads its result, and destroying the session
//!   removes its objects;
//! - anything under `sessions/`.
//!
//! Each execution's result is deleted last, so a collection that stops
//! half-way (crash, store error) finds the execution again next time.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use runbox_core::store::{self, ListOptions, ObjectMeta, Precondition, Store};
use runbox_core::{ExecutionId, SessionId, layout};

use crate::error::{Error, Result};

/// What one garbage collection deleted (or, in a dry run, would delete).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Executions whose objects were deleted.
    pub executions: usize,
    /// Objects deleted: requests, results and log objects together.
    pub objects: usize,
    /// Executions old enough to be deleted but kept because a session still
    /// has their background marker.
    pub kept_background: usize,
}

/// One execution a dry run would delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcCandidate {
    /// The execution.
    pub execution_id: ExecutionId,
    /// How many of its objects exist now (request, result, logs).
    pub objects: usize,
    /// When its result was written.
    pub finished_at: SystemTime,
}

/// What a dry run found: the totals a real run would report, and the
/// executions it would delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// The totals.
    pub report: GcReport,
    /// The executions, in result-name order.
    pub candidates: Vec<GcCandidate>,
}

/// Deletes the request, logs and result of every execution whose result
/// was written more than `older_than` ago, except background executions.
pub(crate) async fn collect(store: &dyn Store, older_than: Duration) -> Result<GcReport> {
    let mut report = GcReport::default();
    sweep(store, older_than, &mut report, None).await?;
    Ok(report)
}

/// What [`collect`] would delete, deleting nothing.
pub(crate) async fn plan(store: &dyn Store, older_than: Duration) -> Result<GcPlan> {
    let mut plan = GcPlan::default();
    let mut candidates = Vec::new();
    sweep(store, older_than, &mut plan.report, Some(&mut candidates)).await?;
    for (id, finished_at) in candidates {
        let objects = count_objects(store, &id).await?;
        plan.report.objects += objects;
        plan.candidates.push(GcCandidate {
            execution_id: id,
            objects,
            finished_at,
        });
    }
    Ok(plan)
}

/// Walks the result objects page by page and handles each one old enough:
/// deletes its execution's objects, or, in a dry run, adds it to
/// `dry_run` instead. Counts into `report`.
async fn sweep(
    store: &dyn Store,
    older_than: Duration,
    report: &mut GcReport,
    mut dry_run: Option<&mut Vec<(ExecutionId, SystemTime)>>,
) -> Result<()> {
    // The cutoff is taken before the markers are listed: a result written
    // before it belongs to an execution whose marker (written before its
    // launch) was there to be listed, so no background execution started
    // during the collection can be mistaken for a foreground one.
    let Some(cutoff) = SystemTime::now().checked_sub(older_than) else {
        return Ok(());
    };
    let background = background_executions(store).await?;
    let mut opts = ListOptions {
        prefix: layout::RESULTS_PREFIX.to_owned(),
        ..ListOptions::default()
    };
    loop {
        let page = store
            .list(&opts)
            .await
            .map_err(|e| Error::store("gc: list results", e))?;
        for meta in page.objects {
            let Some(id) = layout::parse_result(&meta.name) else {
                continue;
            };
            // A backend that cannot say when the result was written gives
            // no proof of age: keep it.
            if meta.updated.is_none_or(|t| t > cutoff) {
                continue;
            }
            if background.contains(&id) {
                report.kept_background += 1;
                continue;
            }
            report.executions += 1;
            match dry_run.as_deref_mut() {
                None => report.objects += delete_execution(store, &id, &meta).await?,
                Some(found) => found.push((id, meta.updated.unwrap_or(cutoff))),
            }
        }
        match page.next_page_token {
            Some(token) => opts.page_token = Some(token),
            None => return Ok(()),
        }
    }
}

/// Every execution that has a background marker in some session: the
/// sessions are listed one "directory" level deep, then each session's
/// markers.
async fn background_executions(store: &dyn Store) -> Result<HashSet<ExecutionId>> {
    let mut found = HashSet::new();
    let mut opts = ListOptions {
        prefix: layout::SESSIONS_PREFIX.to_owned(),
        delimiter: Some('/'),
        ..ListOptions::default()
    };
    loop {
        let page = store
            .list(&opts)
            .await
            .map_err(|e| Error::store("gc: list sessions", e))?;
        for prefix in &page.prefixes {
            let Some(session) = prefix
                .strip_prefix(layout::SESSIONS_PREFIX)
                .and_then(|s| s.strip_suffix('/'))
                .and_then(|s| SessionId::new(s).ok())
            else {
                continue;
            };
            let markers_prefix = layout::background_prefix(&session);
            let markers = store::list_all(store, &markers_prefix).await.map_err(|e| {
                Error::store(format!("gc: list background markers of {session}"), e)
            })?;
            found.extend(markers.iter().filter_map(|m| {
                let id = m
                    .name
                    .strip_prefix(&markers_prefix)?
                    .strip_suffix(".json")?;
                ExecutionId::new(id).ok()
            }));
        }
        match page.next_page_token {
            Some(token) => opts.page_token = Some(token),
            None => return Ok(found),
        }
    }
}

/// Deletes an execution's request (and its stdin), its warm taken mark,
/// logs and live output
/// chunks, then its result (the
/// generation listed: a result is written once, so another generation
/// would be news worth keeping); returns how many objects were deleted.
async fn delete_execution(
    store: &dyn Store,
    id: &ExecutionId,
    result: &ObjectMeta,
) -> Result<usize> {
    let op = || format!("gc: delete execution {id}");
    let mut n = 0;
    for name in [
        layout::request(id),
        layout::request_stdin(id),
        layout::warm_taken(id),
    ] {
        match store.delete(&name, Precondition::None).await {
            Ok(()) => n += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Error::store(op(), e)),
        }
    }
    // Live output chunks sit beside the result: deleted before it, so an
    // interrupted collection finds the result and comes back for them.
    for prefix in [layout::logs_prefix(id), layout::output_chunks_prefix(id)] {
        n += store::delete_prefix(store, &prefix)
            .await
            .map_err(|e| Error::store(op(), e))?;
    }
    match store
        .delete(
            &result.name,
            Precondition::GenerationMatch(result.generation),
        )
        .await
    {
        Ok(()) => n += 1,
        Err(e) if e.is_not_found() || e.is_conflict() => {}
        Err(e) => return Err(Error::store(op(), e)),
    }
    Ok(n)
}

/// How many objects an execution has now: request, result, logs and live
/// output chunks.
async fn count_objects(store: &dyn Store, id: &ExecutionId) -> Result<usize> {
    let op = || format!("gc: list objects of execution {id}");
    let mut n = 0;
    for prefix in [
        layout::request(id),
        layout::request_stdin(id),
        layout::warm_taken(id),
        layout::result(id),
        layout::logs_prefix(id),
        layout::output_chunks_prefix(id),
    ] {
        n += store::list_all(store, &prefix)
            .await
            .map_err(|e| Error::store(op(), e))?
            .len();
    }
    Ok(n)
}
