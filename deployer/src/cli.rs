//! The command line: `deployer --config FILE plan | up | status | failover --to R | failback | down --yes`.
//!
//! Exit codes, as Terraform's `plan -detailed-exitcode`: 0 success (for `plan`: nothing to change),
//! 2 only for `plan` with changes, 1 for every error (bad flags, invalid config, `down` without
//! `--yes`, AWS refusing or failing), so that a script can tell drift from a broken run.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::json;
use tworegion_common::aws::AwsOptions;

use crate::config::{ConfigFile, Deployment};
use crate::engine::{Clients, Engine, Status};
use crate::plan::render;

/// Reconciles one serverless app in two AWS regions and the failover DNS from one config file.
/// `AWS_ENDPOINT_URL` points it at another endpoint (the local AWS).
#[derive(Debug, Parser)]
#[command(version)]
pub struct Cli {
    /// The config file (TOML; see deployer/examples/ and docs/deployer.md).
    #[arg(
        long,
        short,
        env = "DEPLOYER_CONFIG",
        default_value = "tworegion.toml",
        global = true
    )]
    pub config: PathBuf,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// AWS profile from ~/.aws/config [default: the standard credential chain].
    #[arg(long, env = "DEPLOYER_PROFILE", global = true)]
    pub profile: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what `up` would change; exit 0 when nothing, 2 when something, 1 on an error.
    Plan,
    /// Create, update and delete until both regions match the config (safe to re-run and resume).
    Up,
    /// What is deployed, whether it matches the config, each region's health, which region DNS serves.
    Status,
    /// Send clients to REGION: invert the other region's Route 53 health check.
    Failover {
        /// The region to serve from (one of the config's two).
        #[arg(long)]
        to: String,
    },
    /// Undo `failover`: restore every health check, so Route 53 routes by health again.
    Failback,
    /// The local two-region environment: both regions, failover DNS, health checks and faults on
    /// loopback (docs/local.md).
    Local {
        /// Where the environment keeps its state file and logs.
        #[arg(long, env = "DEPLOYER_LOCAL_STATE", default_value = ".tworegion-local")]
        state_dir: PathBuf,
        /// What to do.
        #[command(subcommand)]
        command: crate::local::LocalCommand,
    },
    /// Delete everything this app and stage created (tagged with them), and nothing else.
    Down {
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// A failure: what to tell the user (the exit code is always 1; 2 means "changes" for `plan`).
#[derive(Debug)]
pub struct Failure(pub String);

fn fail(error: impl std::fmt::Display) -> Failure {
    Failure(error.to_string())
}

impl From<crate::resources::DeployError> for Failure {
    fn from(error: crate::resources::DeployError) -> Failure {
        fail(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Failure {
        fail(error)
    }
}

/// Reads and validates the config file (API key values from the environment).
pub fn load(path: &Path) -> Result<Deployment, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "cannot read the config file {}: {e}; pass --config FILE (or DEPLOYER_CONFIG)",
            path.display()
        ))
    })?;
    ConfigFile::parse(&text)
        .and_then(|f| f.validate(&|name| std::env::var(name).ok()))
        .map_err(|e| fail(format!("{}: {e}", path.display())))
}

/// The Lambda artifact's path: relative paths are relative to the config file's directory.
pub fn artifact_path(config: &Path, artifact: &str) -> PathBuf {
    let artifact = Path::new(artifact);
    if artifact.is_absolute() {
        return artifact.to_owned();
    }
    config
        .parent()
        .map(|dir| dir.join(artifact))
        .unwrap_or_else(|| artifact.to_owned())
}

fn read_artifact(config: &Path, d: &Deployment) -> Result<Vec<u8>, Failure> {
    let path = artifact_path(config, &d.file.lambda.artifact);
    std::fs::read(&path).map_err(|e| {
        fail(format!(
            "lambda.artifact: cannot read {}: {e}; build it with scripts/package-lambda or fix the \
             path (relative paths are relative to the config file)",
            path.display()
        ))
    })
}

/// Runs one command, writing human or JSON output to `out`. Returns the exit code.
pub async fn run(cli: &Cli, out: &mut dyn Write) -> Result<u8, Failure> {
    if let Command::Local { state_dir, command } = &cli.command {
        return crate::local::run(command, &cli.config, state_dir, cli.json, out)
            .await
            .map_err(Failure);
    }
    let d = load(&cli.config)?;
    let artifact = match cli.command {
        Command::Plan | Command::Up => Some(read_artifact(&cli.config, &d)?),
        // Status compares the code too when the artifact is at hand; down and failover never need it.
        Command::Status => read_artifact(&cli.config, &d).ok(),
        _ => None,
    };
    if let Command::Down { yes: false } = cli.command {
        return Err(fail(format!(
            "down deletes every resource tagged tworegion:app={} tworegion:stage={} in {} and {} \
             (tables and their data included); add --yes to confirm",
            d.file.app, d.file.stage, d.regions[0], d.regions[1]
        )));
    }
    let options = AwsOptions {
        profile: cli.profile.clone(),
        endpoint_url: None,
        ..AwsOptions::default()
    };
    let clients = Clients::load(&d.regions, &options).await?;
    let engine = Engine::new(d, clients, artifact);
    let mut sink = std::io::sink();
    let progress: &mut dyn Write = if cli.json { &mut sink } else { out };
    match &cli.command {
        Command::Plan => {
            let plan = engine.plan().await?;
            let f = &engine.deployment().file;
            let warnings: Vec<String> = f.usage_plan.quota_warning().into_iter().collect();
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "changes": plan.changes, "warnings": warnings })
                    )
                    .map_err(fail)?
                )?;
            } else {
                render(&plan, false, out)?;
                for w in &warnings {
                    writeln!(out, "WARNING: {w}")?;
                }
                writeln!(out, "{}", f.failover_time().words(f.dns.record_style))?;
            }
            Ok(if plan.is_empty() { 0 } else { 2 })
        }
        Command::Up => {
            let report = engine.up(progress).await?;
            if cli.json {
                writeln!(out, "{}", json!(report))?;
            } else {
                let f = &engine.deployment().file;
                if report.applied.is_empty() {
                    writeln!(
                        out,
                        "Nothing to change: {}/{} matches the config.",
                        f.app, f.stage
                    )?;
                } else {
                    writeln!(
                        out,
                        "Applied {} change(s) in {} round(s); a second plan is empty.",
                        report.applied.len(),
                        report.rounds - 1
                    )?;
                }
                writeln!(out, "Public endpoint: {}", report.endpoints.public)?;
                for (region, url) in &report.endpoints.regional {
                    writeln!(
                        out,
                        "  {region}: {}",
                        url.as_deref().unwrap_or("(no API yet)")
                    )?;
                }
            }
            Ok(0)
        }
        Command::Status => {
            let status = engine.status().await?;
            if cli.json {
                writeln!(out, "{}", json!(status))?;
            } else {
                render_status(&status, out)?;
                let f = &engine.deployment().file;
                writeln!(
                    out,
                    "{}",
                    status.expected_failover.words(f.dns.record_style)
                )?;
            }
            Ok(status.exit_code())
        }
        Command::Failover { to } => {
            let changed = engine.failover(Some(to)).await?;
            report_failover(&engine, Some(to), &changed, cli.json, out)?;
            Ok(0)
        }
        Command::Failback => {
            let changed = engine.failover(None).await?;
            report_failover(&engine, None, &changed, cli.json, out)?;
            Ok(0)
        }
        Command::Local { .. } => Err(fail("unreachable: handled above")),
        Command::Down { .. } => {
            let deleted = engine.down(progress).await?;
            if cli.json {
                writeln!(out, "{}", json!({ "deleted": deleted }))?;
            } else if deleted.is_empty() {
                writeln!(out, "Nothing to delete.")?;
            } else {
                writeln!(out, "Deleted {} resource(s).", deleted.len())?;
            }
            Ok(0)
        }
    }
}

fn report_failover(
    engine: &Engine,
    to: Option<&str>,
    changed: &[(String, bool)],
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let hc = &engine.deployment().file.health_check;
    let seconds = i64::from(hc.interval) * i64::from(hc.failure_threshold);
    if json_out {
        let changed: Vec<_> = changed
            .iter()
            .map(|(r, inverted)| json!({ "region": r, "inverted": inverted }))
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "to": to, "changed": changed, "expected_seconds": seconds })
        )?;
        return Ok(());
    }
    if changed.is_empty() {
        writeln!(
            out,
            "Nothing to change: the health checks are already set so."
        )?;
    }
    for (region, inverted) in changed {
        let what = if *inverted {
            "inverted (Route 53 now counts it as unhealthy)"
        } else {
            "restored"
        };
        writeln!(out, "{region}: health check {what}")?;
    }
    match to {
        Some(to) => writeln!(
            out,
            "DNS answers with {to} once Route 53 notices: about {seconds} s (interval x threshold), \
             plus the record's TTL and client caches. Undo with `deployer failback`."
        ),
        None => writeln!(
            out,
            "Route 53 routes by health again; the primary serves once its check passes (about {seconds} s)."
        ),
    }?;
    Ok(())
}

/// The human form of `status`.
pub fn render_status(s: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{}/{}: routing {}, public endpoint {}",
        s.app, s.stage, s.routing, s.public_endpoint
    )?;
    match s.pending_changes {
        Some(0) => writeln!(out, "In sync with the config.")?,
        Some(n) => writeln!(out, "{n} change(s) pending: see `deployer plan`.")?,
        None => writeln!(
            out,
            "Not compared with the config (the Lambda artifact is not readable)."
        )?,
    }
    for (region, r) in &s.regions {
        writeln!(
            out,
            "{region}: {}/{} resources present",
            r.resources_present, r.resources_wanted
        )?;
        writeln!(
            out,
            "  api          {}",
            r.endpoint.as_deref().unwrap_or("(none)")
        )?;
        match &r.health {
            Some(h) => writeln!(
                out,
                "  health check {} {} ({}/{} checkers healthy{})",
                h.id,
                if h.healthy { "healthy" } else { "UNHEALTHY" },
                h.checkers_healthy,
                h.checkers_reporting,
                if h.inverted {
                    ", inverted by failover"
                } else {
                    ""
                }
            )?,
            None => writeln!(out, "  health check (none)")?,
        }
        for rep in &r.replicators {
            writeln!(
                out,
                "  replicator   {} {}/{} running",
                rep.service, rep.running, rep.desired
            )?;
        }
    }
    if s.dns_records == 0 {
        writeln!(out, "DNS: no records yet")?;
    } else {
        writeln!(
            out,
            "DNS: {} record(s); serving {}",
            s.dns_records,
            s.serving.join(", ")
        )?;
    }
    Ok(())
}
