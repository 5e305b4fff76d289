//! `runbox gc`: delete the objects of executions that finished long ago.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use runbox_dispatcher::{Client, Error, GcReport};

use crate::stdout::Stdout;
use crate::timestamp;

/// Options of `runbox gc`.
#[derive(Args)]
pub struct GcArgs {
    /// Delete executions whose result is older than this (e.g. 7d, 12h, 30m, 0s).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration)]
    older_than: Duration,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl GcArgs {
    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Runs `runbox gc`.
pub async fn run(client: &Client, args: GcArgs) -> Result<ExitCode, Error> {
    let mut out = Stdout::new();
    if args.dry_run {
        let plan = client.gc_plan(args.older_than).await?;
        if args.json {
            let executions: Vec<_> = plan
                .candidates
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "executionId": c.execution_id.as_str(),
                        "objects": c.objects,
                        "finishedAt": timestamp::format(c.finished_at),
                    })
                })
                .collect();
            let mut value = report_json(&plan.report, true);
            value["candidates"] = serde_json::Value::Array(executions);
            out.line(format_args!("{value}"))?;
        } else {
            for c in &plan.candidates {
                out.line(format_args!(
                    "would delete {} ({} objects, finished {})",
                    c.execution_id,
                    c.objects,
                    timestamp::format(c.finished_at)
                ))?;
            }
            out.line(format_args!("{}", summary(&plan.report, true)))?;
        }
    } else {
        let report = client.gc(args.older_than).await?;
        if args.json {
            out.line(format_args!("{}", report_json(&report, false)))?;
        } else {
            out.line(format_args!("{}", summary(&report, false)))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn report_json(report: &GcReport, dry_run: bool) -> serde_json::Value {
    serde_json::json!({
        "dryRun": dry_run,
        "executions": report.executions,
        "objects": report.objects,
        "keptBackground": report.kept_background,
    })
}

fn summary(report: &GcReport, dry_run: bool) -> String {
    let verb = if dry_run { "would delete" } else { "deleted" };
    format!(
        "{verb} {} objects of {} finished executions; kept {} background executions",
        report.objects, report.executions, report.kept_background
    )
}
