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

use crate::rollout::Rollout;

use crate::config::{ConfigFile, Deployment};
use crate::engine::{Clients, DataPolicy, Engine, FailoverReport, Status};
use crate::plan::render;
use crate::plan::{Action, Change};

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
    Up {
        /// Allow deleting a table the config no longer names (a rename), with its data.
        #[arg(long)]
        allow_data_loss: bool,
        /// Reconcile this region (and the global parts: IAM, Route 53) alone, never calling the
        /// other region: for when the other region is down.
        #[arg(long)]
        region: Option<String>,
        /// Change both regions at once, without checking the first before the second (by default
        /// the region not serving goes first, must pass its health check and a smoke request, and
        /// is rolled back to its previous Lambda version if it does not).
        #[arg(long, conflicts_with = "region")]
        parallel: bool,
        /// The longest one region's check may take, in seconds (health check, then smoke request).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=3600))]
        rollout_timeout: u64,
    },
    /// What is deployed, whether it matches the config, each region's health, which region DNS serves.
    Status,
    /// Send clients to REGION: turn the other region's Route 53 switch off (needs only Route 53).
    Failover {
        /// The region to serve from (one of the config's two).
        #[arg(long)]
        to: String,
    },
    /// Undo `failover`: turn every switch on, so Route 53 routes by health again.
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
    /// The replicator's container image, built without a container engine (docs/deployer.md, "The
    /// replicator's image").
    Image {
        /// What to do.
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Delete everything this app and stage created (tagged with them), and nothing else. Tables
    /// are deleted only with --allow-data-loss; adopted tables are released (untagged), not deleted.
    Down {
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
        /// Delete the tables the deployer created, with their data (deletion protection is turned
        /// off first).
        #[arg(long, conflicts_with = "keep_data")]
        allow_data_loss: bool,
        /// Leave every table, untagged, with its data; remove everything else.
        #[arg(long)]
        keep_data: bool,
        /// Delete adopted tables too (with --allow-data-loss) instead of releasing them.
        #[arg(long, requires = "allow_data_loss")]
        delete_adopted: bool,
    },
}

/// `deployer image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Write the image of a static replicator binary as an OCI image layout (for skopeo, crane or
    /// oras to push, or to inspect) and print its digest.
    Build {
        /// The replicator binary: a static Linux executable (x86-64 or aarch64).
        #[arg(long)]
        binary: PathBuf,
        /// The folder to write the layout into (created; blobs already there are kept, and its
        /// index then names this image only).
        #[arg(long)]
        out: PathBuf,
        /// The name the layout's index gives the image.
        #[arg(long, default_value = "latest")]
        tag: String,
        /// The CA certificates to put in the image.
        #[arg(long, default_value = crate::image::HOST_CA_BUNDLE)]
        ca_bundle: PathBuf,
    },
}

/// `deployer image build`: builds, writes the layout, prints the digest (or JSON).
fn image(command: &ImageCommand, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let ImageCommand::Build {
        binary,
        out: dir,
        tag,
        ca_bundle,
    } = command;
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| fail(format!("{what} {}: {e}", path.display())))
    };
    let image = crate::image::build(&read(binary, "--binary")?, &read(ca_bundle, "--ca-bundle")?)
        .map_err(|e| fail(format!("--binary {}: {e}", binary.display())))?;
    crate::image::write_layout(&image, dir, tag)
        .map_err(|e| fail(format!("--out {}: {e}", dir.display())))?;
    if json {
        writeln!(
            out,
            "{}",
            json!({
                "digest": image.digest(),
                "layout": dir.display().to_string(),
                "tag": tag,
                "architecture": image.architecture,
                "layer_bytes": image.layer.len(),
            })
        )?;
    } else {
        writeln!(
            out,
            "Wrote the {} image {} to {} (tag {tag}; layer {} bytes).",
            image.architecture,
            image.digest(),
            dir.display(),
            image.layer.len()
        )?;
    }
    Ok(0)
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
    if let Command::Image { command } = &cli.command {
        return image(command, cli.json, out);
    }
    if let Command::Local { state_dir, command } = &cli.command {
        return crate::local::run(command, &cli.config, state_dir, cli.json, out)
            .await
            .map_err(Failure);
    }
    let d = load(&cli.config)?;
    let artifact = match cli.command {
        Command::Plan | Command::Up { .. } => Some(read_artifact(&cli.config, &d)?),
        // Status compares the code too when the artifact is at hand; down and failover never need it.
        Command::Status => read_artifact(&cli.config, &d).ok(),
        _ => None,
    };
    if let Command::Down { yes: false, .. } = cli.command {
        return Err(fail(format!(
            "down deletes every resource tagged tworegion:app={} tworegion:stage={} in {} and {} \
             (tables only with --allow-data-loss, or kept with --keep-data); add --yes to confirm",
            d.file.app, d.file.stage, d.regions[0], d.regions[1]
        )));
    }
    let options = AwsOptions {
        profile: cli.profile.clone(),
        endpoint_url: None,
        ..AwsOptions::default()
    };
    if let Command::Up { .. } = cli.command {
        d.key_needed_for_up().map_err(fail)?;
    }
    let clients = Clients::load(&d.regions, &options).await?;
    let engine = Engine::new(d, clients, artifact);
    // Only `up` and `plan` read (and compare) the API key's secret value.
    let engine = match cli.command {
        Command::Plan | Command::Up { .. } => engine,
        _ => engine.without_secrets(),
    };
    let mut sink = std::io::sink();
    let progress: &mut dyn Write = if cli.json { &mut sink } else { out };
    match &cli.command {
        Command::Plan => {
            let (plan, loses_data) = engine.plan().await?;
            let f = &engine.deployment().file;
            let mut warnings = engine.deployment().plan_warnings();
            for c in &loses_data {
                warnings.push(format!(
                    "DATA LOSS: {} deletes the table and every item in it; up refuses it without \
                     --allow-data-loss",
                    crate::engine::describe(c)
                ));
            }
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
        Command::Up {
            allow_data_loss,
            region,
            parallel,
            rollout_timeout,
        } => {
            let policy = DataPolicy {
                allow_data_loss: *allow_data_loss,
                ..DataPolicy::default()
            };
            let gate = crate::rollout::HealthGate {
                timeout: std::time::Duration::from_secs(*rollout_timeout),
            };
            let rollout = if *parallel {
                Rollout::Parallel
            } else {
                Rollout::RegionByRegion(&gate)
            };
            let report = engine
                .up(policy, region.as_deref(), rollout, progress)
                .await?;
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
            let report = engine.failover(Some(to)).await?;
            report_failover(Some(to), &report, cli.json, out)?;
            Ok(0)
        }
        Command::Failback => {
            let report = engine.failover(None).await?;
            report_failover(None, &report, cli.json, out)?;
            Ok(0)
        }
        Command::Local { .. } | Command::Image { .. } => Err(fail("unreachable: handled above")),
        Command::Down {
            allow_data_loss,
            keep_data,
            delete_adopted,
            ..
        } => {
            let policy = DataPolicy {
                allow_data_loss: *allow_data_loss,
                keep_data: *keep_data,
                delete_adopted: *delete_adopted,
            };
            let changes = engine.down(policy, progress).await?;
            let (released, deleted): (Vec<Change>, Vec<Change>) = changes
                .into_iter()
                .partition(|c| c.action == Action::Release);
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    json!({ "deleted": deleted, "released": released })
                )?;
            } else if deleted.is_empty() && released.is_empty() {
                writeln!(out, "Nothing to delete.")?;
            } else {
                writeln!(out, "Deleted {} resource(s).", deleted.len())?;
                for r in &released {
                    writeln!(
                        out,
                        "Released {:?} {} in {} (untagged; it and its data stay).",
                        r.kind,
                        r.name,
                        r.region.as_deref().unwrap_or("global")
                    )?;
                }
            }
            Ok(0)
        }
    }
}

fn report_failover(
    to: Option<&str>,
    report: &FailoverReport,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let target_down = to.is_some() && report.target_healthy == Some(false);
    if json_out {
        writeln!(
            out,
            "{}",
            json!({
                "to": to,
                "changed": report.changed,
                "target_healthy": report.target_healthy,
            })
        )?;
        return Ok(());
    }
    if report.changed.is_empty() {
        writeln!(out, "Nothing to change: the switches are already set so.")?;
    }
    for c in &report.changed {
        if c.switch_changed {
            let what = if c.switch_on {
                "on (serves while its endpoint is healthy)"
            } else {
                "off (Route 53 counts it as unhealthy, whatever its real health)"
            };
            writeln!(out, "{}: switch {what}", c.region)?;
        }
        if c.inversion_cleared {
            writeln!(
                out,
                "{}: health check inversion (left by an earlier failover) cleared",
                c.region
            )?;
        }
    }
    if target_down && let Some(to) = to {
        writeln!(
            out,
            "WARNING: {to}'s endpoint check reads UNHEALTHY now: while no region is healthy Route 53 \
             answers with the primary. The switch stays set; check {to} with `deployer status`."
        )?;
    }
    match to {
        Some(to) => writeln!(
            out,
            "DNS answers with {to} once Route 53 has applied the switch (no probes need to fail \
             first), plus the record's TTL and client caches. Undo with `deployer failback`."
        ),
        None => writeln!(
            out,
            "Route 53 routes by health again; the primary serves once its endpoint check passes."
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
    let unreachable = s.regions.values().any(|r| r.unreachable.is_some());
    match s.pending_changes {
        Some(0) => writeln!(out, "In sync with the config.")?,
        Some(n) => writeln!(out, "{n} change(s) pending: see `deployer plan`.")?,
        None if unreachable => writeln!(
            out,
            "Not compared with the config: a region could not be observed."
        )?,
        None => writeln!(
            out,
            "Not compared with the config (the Lambda artifact is not readable)."
        )?,
    }
    for (region, r) in &s.regions {
        match &r.unreachable {
            Some(why) => writeln!(
                out,
                "{region}: UNREACHABLE ({why}); its health below is Route 53's"
            )?,
            None => writeln!(
                out,
                "{region}: {}/{} resources present",
                r.resources_present, r.resources_wanted
            )?,
        }
        writeln!(
            out,
            "  api          {}",
            r.endpoint.as_deref().unwrap_or("(none)")
        )?;
        match &r.health {
            Some(h) => {
                writeln!(
                    out,
                    "  endpoint     {} {} ({}/{} checkers healthy{})",
                    h.id,
                    if h.endpoint_healthy {
                        "healthy"
                    } else {
                        "UNHEALTHY"
                    },
                    h.checkers_healthy,
                    h.checkers_reporting,
                    if h.inverted { ", inverted" } else { "" }
                )?;
                let switch = match (h.switch_on, h.switch_in_dns) {
                    (None, _) => "(none: run deployer up)",
                    (Some(_), false) => {
                        "not used by DNS yet (an up has not finished: run deployer up)"
                    }
                    (Some(true), true) => "on",
                    (Some(false), true) => {
                        "OFF (failover sent traffic away; undo: deployer failback)"
                    }
                };
                writeln!(
                    out,
                    "  switch       {} {switch}; DNS sees {}",
                    h.switch_id.as_deref().unwrap_or("-"),
                    if h.healthy { "healthy" } else { "UNHEALTHY" }
                )?;
            }
            None => writeln!(out, "  health check (none)")?,
        }
        if let Some(version) = &r.live_version {
            writeln!(
                out,
                "  lambda       alias live on version {version}{}",
                if r.undeployed_build {
                    "; $LATEST holds another build (a rollout rolled back or not finished)"
                } else {
                    ""
                }
            )?;
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
