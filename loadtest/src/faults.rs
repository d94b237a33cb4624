//! The scripted fault of `loadtest failover`: injected at `--fault-at`, undone at `--recover-at`
//! and on every early exit (Ctrl-C, an error), each step printed with what it changed.
//!
//! - `local:outage`, `local:unhealthy`: the local environment's control API (`POST /fault`), found
//!   from its state file (`deployer local`); undone with `recover`.
//! - `aws:lambda-concurrency-zero`: the region's function gets reserved concurrency 0 (every
//!   invocation is throttled; API Gateway answers 5xx, the health check fails); undone by restoring
//!   the reserved concurrency it had (or removing it when it had none).
//! - `aws:invert-health-check`: the region's Route 53 health check is inverted (a healthy endpoint
//!   reads unhealthy, so Route 53 fails over); undone by restoring the `Inverted` it had.
//! - `cmd:COMMAND`: `sh -c COMMAND` (exit 0 required); undone with `--recover-cmd` when given.

use std::net::SocketAddr;
use std::time::Duration;

use aws_sdk_lambda::error::DisplayErrorContext;
use hyper::Method;
use tworegion_common::aws::{AwsOptions, parse_region, sdk_config};

use crate::client;

/// The kinds of fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// `local:outage`.
    LocalOutage,
    /// `local:unhealthy`.
    LocalUnhealthy,
    /// `aws:lambda-concurrency-zero`.
    LambdaConcurrencyZero,
    /// `aws:invert-health-check`.
    InvertHealthCheck,
    /// `cmd:COMMAND`.
    Command(String),
}

impl FaultKind {
    /// Parses `--fault`.
    pub fn parse(text: &str) -> Result<FaultKind, String> {
        match text {
            "local:outage" => Ok(FaultKind::LocalOutage),
            "local:unhealthy" => Ok(FaultKind::LocalUnhealthy),
            "aws:lambda-concurrency-zero" => Ok(FaultKind::LambdaConcurrencyZero),
            "aws:invert-health-check" => Ok(FaultKind::InvertHealthCheck),
            _ => match text.strip_prefix("cmd:") {
                Some(cmd) if !cmd.trim().is_empty() => Ok(FaultKind::Command(cmd.to_owned())),
                Some(_) => Err("--fault cmd: give the command after cmd:, for example \
                     cmd:'sudo iptables -A OUTPUT -d 10.0.0.5 -j DROP'"
                    .to_owned()),
                None => Err(format!(
                    "--fault {text:?} is not a fault: use local:outage, local:unhealthy, \
                     aws:lambda-concurrency-zero, aws:invert-health-check or cmd:'COMMAND'"
                )),
            },
        }
    }

    /// Whether it needs the local environment.
    pub fn is_local(&self) -> bool {
        matches!(self, FaultKind::LocalOutage | FaultKind::LocalUnhealthy)
    }
}

/// Where the fault goes.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The region it hits.
    pub region: String,
    /// The local environment's control API.
    pub control: Option<SocketAddr>,
    /// The Lambda function (aws:lambda-concurrency-zero).
    pub function: Option<String>,
    /// The Route 53 health check ID (aws:invert-health-check).
    pub health_check_id: Option<String>,
    /// `--recover-cmd`.
    pub recover_cmd: Option<String>,
    /// How to reach AWS.
    pub aws: AwsOptions,
}

/// How to undo what was done.
#[derive(Debug, Clone)]
pub enum Undo {
    /// `recover` through the control API.
    Local {
        /// Control API.
        control: SocketAddr,
        /// Region.
        region: String,
    },
    /// Restore the function's reserved concurrency.
    Lambda {
        /// Region.
        region: String,
        /// Function.
        function: String,
        /// What it had (None: no reservation).
        previous: Option<i32>,
    },
    /// Restore the health check's `Inverted`.
    HealthCheck {
        /// Health check ID.
        id: String,
        /// What it had.
        previous: bool,
    },
    /// Run this command (None: nothing to undo).
    Command(Option<String>),
}

async fn local_fault(control: SocketAddr, region: &str, fault: &str) -> Result<(), String> {
    let body = serde_json::json!({ "region": region, "fault": fault }).to_string();
    let (status, answer) = client::call(
        control,
        Method::POST,
        "/fault",
        Some(body),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| format!("the local environment's control API: {e}"))?;
    if status >= 300 {
        return Err(format!(
            "the local environment's control API refused {fault} for {region} ({status}): {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    Ok(())
}

async fn shell(cmd: &str) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("`{cmd}` did not finish within 120 s"))?
    .map_err(|e| format!("`{cmd}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(format!("ran `{cmd}`"))
}

async fn lambda(region: &str, aws: &AwsOptions) -> Result<aws_sdk_lambda::Client, String> {
    let region = parse_region(region).map_err(|e| e.to_string())?;
    Ok(aws_sdk_lambda::Client::new(&sdk_config(region, aws).await))
}

async fn route53(aws: &AwsOptions) -> aws_sdk_route53::Client {
    // Route 53's control plane is global, served from us-east-1.
    let region = aws_config::Region::new("us-east-1");
    aws_sdk_route53::Client::new(&sdk_config(region, aws).await)
}

async fn set_inverted(
    client: &aws_sdk_route53::Client,
    id: &str,
    inverted: bool,
) -> Result<(), String> {
    client
        .update_health_check()
        .health_check_id(id)
        .inverted(inverted)
        .send()
        .await
        .map_err(|e| {
            format!(
                "route53 UpdateHealthCheck {id}: {}",
                DisplayErrorContext(&e)
            )
        })?;
    Ok(())
}

/// Checks, before any load, that the fault can be injected: the flags it needs are given and the
/// AWS resource it changes exists and can be read.
pub async fn preflight(kind: &FaultKind, target: &Target) -> Result<(), String> {
    match kind {
        FaultKind::LambdaConcurrencyZero => {
            let function = target.function.as_deref().ok_or(
                "aws:lambda-concurrency-zero needs --function NAME (the failed region's function)",
            )?;
            if target.region.is_empty() {
                return Err(
                    "aws:lambda-concurrency-zero needs --fault-region REGION (where the \
                            function is)"
                        .into(),
                );
            }
            lambda(&target.region, &target.aws)
                .await?
                .get_function_concurrency()
                .function_name(function)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "--function {function} in {}: {}",
                        target.region,
                        DisplayErrorContext(&e)
                    )
                })?;
            Ok(())
        }
        FaultKind::InvertHealthCheck => {
            let id = target.health_check_id.as_deref().ok_or(
                "aws:invert-health-check needs --health-check-id ID (the failed region's Route 53 \
                 health check; `deployer status` shows it)",
            )?;
            route53(&target.aws)
                .await
                .get_health_check()
                .health_check_id(id)
                .send()
                .await
                .map_err(|e| format!("--health-check-id {id}: {}", DisplayErrorContext(&e)))?;
            Ok(())
        }
        FaultKind::Command(_) | FaultKind::LocalOutage | FaultKind::LocalUnhealthy => Ok(()),
    }
}

/// An injection that failed: why, and how to undo what may have been changed anyway (a call whose
/// answer was lost may have been applied; a command may have failed half-way). Undoing is safe to
/// repeat: it restores the state read before.
#[derive(Debug, Clone)]
pub struct Failed {
    /// What went wrong.
    pub error: String,
    /// The restore to run anyway (None: nothing was changed yet).
    pub undo: Option<Undo>,
}

/// A failure after the change may have been made: `undo` restores it.
fn after(undo: &Undo) -> impl FnOnce(String) -> Failed + '_ {
    move |error| Failed {
        error,
        undo: Some(undo.clone()),
    }
}

fn before(error: impl Into<String>) -> Failed {
    Failed {
        error: error.into(),
        undo: None,
    }
}

/// Injects `kind` at `target`; returns what changed and how to undo it.
pub async fn inject(kind: &FaultKind, target: &Target) -> Result<(String, Undo), Failed> {
    match kind {
        FaultKind::LocalOutage | FaultKind::LocalUnhealthy => {
            let control = target.control.ok_or_else(|| {
                before(
                    "a local fault needs the local environment: start it with `deployer local up` \
                     and pass --local (or --local-state-dir DIR)",
                )
            })?;
            let fault = if *kind == FaultKind::LocalOutage {
                "outage"
            } else {
                "unhealthy"
            };
            let undo = Undo::Local {
                control,
                region: target.region.clone(),
            };
            local_fault(control, &target.region, fault)
                .await
                .map_err(after(&undo))?;
            Ok((
                format!("local environment: {} is now {fault}", target.region),
                undo,
            ))
        }
        FaultKind::LambdaConcurrencyZero => {
            let function = target.function.clone().ok_or_else(|| {
                before("aws:lambda-concurrency-zero needs --function NAME (the region's function)")
            })?;
            let client = lambda(&target.region, &target.aws).await.map_err(before)?;
            let previous = client
                .get_function_concurrency()
                .function_name(&function)
                .send()
                .await
                .map_err(|e| {
                    before(format!(
                        "lambda GetFunctionConcurrency {function}: {}",
                        DisplayErrorContext(&e)
                    ))
                })?
                .reserved_concurrent_executions;
            let undo = Undo::Lambda {
                region: target.region.clone(),
                function: function.clone(),
                previous,
            };
            client
                .put_function_concurrency()
                .function_name(&function)
                .reserved_concurrent_executions(0)
                .send()
                .await
                .map_err(|e| {
                    after(&undo)(format!(
                        "lambda PutFunctionConcurrency {function} = 0: {}",
                        DisplayErrorContext(&e)
                    ))
                })?;
            Ok((
                format!(
                    "lambda {function} in {}: reserved concurrency {} -> 0",
                    target.region,
                    previous.map_or("none".to_owned(), |p| p.to_string())
                ),
                undo,
            ))
        }
        FaultKind::InvertHealthCheck => {
            let id = target.health_check_id.clone().ok_or_else(|| {
                before(
                    "aws:invert-health-check needs --health-check-id ID (the region's Route 53 \
                     health check; `deployer status` shows it)",
                )
            })?;
            let client = route53(&target.aws).await;
            let previous = client
                .get_health_check()
                .health_check_id(&id)
                .send()
                .await
                .map_err(|e| {
                    before(format!(
                        "route53 GetHealthCheck {id}: {}",
                        DisplayErrorContext(&e)
                    ))
                })?
                .health_check
                .and_then(|h| h.health_check_config)
                .and_then(|c| c.inverted)
                .unwrap_or(false);
            let undo = Undo::HealthCheck {
                id: id.clone(),
                previous,
            };
            set_inverted(&client, &id, !previous)
                .await
                .map_err(after(&undo))?;
            Ok((
                format!(
                    "route53 health check {id}: inverted {previous} -> {}",
                    !previous
                ),
                undo,
            ))
        }
        FaultKind::Command(cmd) => {
            let undo = Undo::Command(target.recover_cmd.clone());
            let changed = shell(cmd).await.map_err(after(&undo))?;
            Ok((changed, undo))
        }
    }
}

/// Undoes an injected fault; returns what it did.
pub async fn undo(undo: &Undo, aws: &AwsOptions) -> Result<String, String> {
    match undo {
        Undo::Local { control, region } => {
            local_fault(*control, region, "recover").await?;
            Ok(format!("local environment: {region} recovered"))
        }
        Undo::Lambda {
            region,
            function,
            previous,
        } => {
            let client = lambda(region, aws).await?;
            match previous {
                Some(n) => {
                    client
                        .put_function_concurrency()
                        .function_name(function)
                        .reserved_concurrent_executions(*n)
                        .send()
                        .await
                        .map_err(|e| {
                            format!(
                                "lambda PutFunctionConcurrency {function}: {}",
                                DisplayErrorContext(&e)
                            )
                        })?;
                    Ok(format!(
                        "lambda {function} in {region}: reserved concurrency back to {n}"
                    ))
                }
                None => {
                    client
                        .delete_function_concurrency()
                        .function_name(function)
                        .send()
                        .await
                        .map_err(|e| {
                            format!(
                                "lambda DeleteFunctionConcurrency {function}: {}",
                                DisplayErrorContext(&e)
                            )
                        })?;
                    Ok(format!(
                        "lambda {function} in {region}: reserved concurrency removed again"
                    ))
                }
            }
        }
        Undo::HealthCheck { id, previous } => {
            set_inverted(&route53(aws).await, id, *previous).await?;
            Ok(format!(
                "route53 health check {id}: inverted back to {previous}"
            ))
        }
        Undo::Command(Some(cmd)) => shell(cmd).await,
        Undo::Command(None) => Ok("nothing to undo (no --recover-cmd)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_kinds_parse_and_unknown_ones_say_what_is_allowed() {
        assert_eq!(FaultKind::parse("local:outage"), Ok(FaultKind::LocalOutage));
        assert_eq!(
            FaultKind::parse("cmd:echo hi"),
            Ok(FaultKind::Command("echo hi".into()))
        );
        let err = FaultKind::parse("local:meteor").expect_err("unknown");
        assert!(err.contains("local:outage, local:unhealthy"), "{err}");
        assert!(FaultKind::parse("cmd:").is_err());
    }

    #[tokio::test]
    async fn a_command_fault_runs_and_its_failure_is_reported() {
        let target = Target {
            recover_cmd: Some("true".into()),
            ..Target::default()
        };
        let (changed, undo_with) = inject(&FaultKind::Command("true".into()), &target)
            .await
            .expect("runs");
        assert_eq!(changed, "ran `true`");
        assert_eq!(
            undo(&undo_with, &AwsOptions::default()).await,
            Ok("ran `true`".into())
        );
        let failed = inject(&FaultKind::Command("echo nope >&2; exit 3".into()), &target)
            .await
            .expect_err("fails");
        assert!(failed.error.contains("nope"), "{}", failed.error);
        // A command that failed may have changed something: the restore is offered anyway.
        assert!(matches!(failed.undo, Some(Undo::Command(Some(_)))));
    }
}
