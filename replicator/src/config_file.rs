//! `replicator run --config FILE`: several paths in one process.
//!
//! The file is TOML. Its keys are `replicator run`'s flags without their dashes, with the same values
//! and checks. Keys at the top of the file apply to every path; each `[[path]]` table is one path
//! (source stream to target table) and may set any key that is not a process key ([`PROCESS_KEYS`]:
//! one worker ID, metrics endpoint, EMF output and shutdown deadline for the whole process).
//! A key that a flag repeats (`emf-dimension`) takes an array. Environment variables (`REPLICATOR_*`)
//! do not fill in keys the file leaves out: the file says everything but the defaults.
//!
//! ```toml
//! lease-table = "todo-replicator-leases"
//! metrics-addr = "0.0.0.0:9464"
//!
//! [[path]]
//! source-region = "us-east-1"
//! source-table = "todos"
//! target-region = "us-west-2"
//! target-table = "todos"
//! mode = "lww"
//!
//! [[path]]
//! source-region = "us-west-2"
//! source-table = "todos"
//! target-region = "us-east-1"
//! target-table = "todos"
//! mode = "lww"
//! ```

use std::path::Path;

use clap::{Args, FromArgMatches};

use crate::config::{Config, RunArgs};

/// Keys that apply to the whole process: at the top of the file only.
pub const PROCESS_KEYS: &[&str] = &[
    "worker-id",
    "metrics-addr",
    "metrics-format",
    "emf-namespace",
    "emf-dimension",
    "emf-interval",
    "shutdown-deadline",
];

/// A `--config` file that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--config {file}: {problem}")]
pub struct ConfigFileError {
    /// The file as given.
    pub file: String,
    /// What is wrong (and where in the file) and how to fix it.
    pub problem: String,
}

/// Reads and checks `file` into one [`Config`] per `[[path]]`, in the file's order.
/// `default_worker_id` is used when the file gives no `worker-id`.
pub fn load(file: &Path, default_worker_id: &str) -> Result<Vec<Config>, ConfigFileError> {
    let error = |problem: String| ConfigFileError {
        file: file.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(file).map_err(|e| error(format!("cannot read it: {e}")))?;
    parse(&text, default_worker_id).map_err(error)
}

/// `run`'s flags as a parser of argument lists, with no environment variables behind them.
fn run_flags() -> clap::Command {
    RunArgs::augment_args(clap::Command::new("replicator run --config"))
        .no_binary_name(true)
        .mut_args(|arg| arg.env(None))
}

/// Checks the text of a `--config` file into one [`Config`] per `[[path]]`.
pub fn parse(text: &str, default_worker_id: &str) -> Result<Vec<Config>, String> {
    let mut top: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("not valid TOML: {e}"))?;
    let entries = match top.remove("path") {
        Some(toml::Value::Array(entries)) if !entries.is_empty() => entries,
        None | Some(toml::Value::Array(_)) => {
            return Err(
                "no [[path]] table: give one per source and target, each with \
                 source-region, source-table, target-region, target-table and mode"
                    .to_owned(),
            );
        }
        Some(_) => return Err("`path` must be written as [[path]] tables".to_owned()),
    };
    let flags = run_flags();
    check_keys(&flags, &top, "the top of the file")?;
    let mut configs: Vec<Config> = Vec::new();
    for (i, entry) in entries.into_iter().enumerate() {
        let here = format!("[[path]] {}", i + 1);
        let toml::Value::Table(entry) = entry else {
            return Err(format!("{here} is not a table; write it as [[path]]"));
        };
        check_keys(&flags, &entry, &here)?;
        if let Some(key) = entry.keys().find(|k| PROCESS_KEYS.contains(&k.as_str())) {
            return Err(format!(
                "{here}: `{key}` applies to the whole process; move it to the top of the file"
            ));
        }
        let mut keys = top.clone();
        keys.extend(entry);
        for arg in flags.get_arguments().filter(|a| a.is_required_set()) {
            let key = arg.get_long().unwrap_or_default();
            if !keys.contains_key(key) {
                return Err(format!(
                    "{here}: `{key}` is missing; every path needs source-region, source-table, \
                     target-region, target-table and mode (here or at the top of the file)"
                ));
            }
        }
        let matches = flags
            .clone()
            .try_get_matches_from(argv(&keys, &here)?)
            .map_err(|e| format!("{here}: {}", clap_problem(&e)))?;
        let args = RunArgs::from_arg_matches(&matches)
            .map_err(|e| format!("{here}: {}", clap_problem(&e)))?;
        let config = args
            .into_config(default_worker_id.to_owned())
            .map_err(|e| format!("{here}: `{}`: {}", e.flag, e.problem))?;
        if let Some(j) = configs
            .iter()
            .position(|c| c.source == config.source && c.target == config.target)
        {
            return Err(format!(
                "{here} repeats [[path]] {} ({} > {}); give each source and target once",
                j + 1,
                config.source,
                config.target
            ));
        }
        configs.push(config);
    }
    Ok(configs)
}

/// Every key of `table` must be a flag of `run`.
fn check_keys(flags: &clap::Command, table: &toml::Table, here: &str) -> Result<(), String> {
    for key in table.keys() {
        if !flags.get_arguments().any(|a| a.get_long() == Some(key)) {
            return Err(format!(
                "unknown key `{key}` in {here}; the keys are `replicator run`'s flags without their \
                 dashes (see `replicator run --help`)"
            ));
        }
    }
    Ok(())
}

/// The keys as an argument list: `--key value`, once per element of an array.
fn argv(keys: &toml::Table, here: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (key, value) in keys {
        let values = match value {
            toml::Value::Array(values) if values.is_empty() => {
                return Err(format!(
                    "{here}: `{key}` is an empty array; give its values, or leave the key out"
                ));
            }
            toml::Value::Array(values) => values.iter().collect(),
            value => vec![value],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                other => {
                    return Err(format!(
                        "{here}: `{key}` is of type {}; give a string (\"30s\", \"lww\") or a whole \
                         number",
                        other.type_str()
                    ));
                }
            };
            // One argument, so a value that starts with '-' stays a value.
            out.push(format!("--{key}={text}"));
        }
    }
    Ok(out)
}

/// clap's message without its `error:` prefix, usage and help hint, with flags named as keys.
fn clap_problem(error: &clap::Error) -> String {
    let rendered = error.to_string();
    let first = rendered.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "invalid value 'x' for '--mode <MODE>'": name the key as the file spells it.
    let mut out = String::new();
    let mut rest = first;
    while let Some(at) = rest.find("'--") {
        out.push_str(&rest[..at]);
        let flag = &rest[at + 3..];
        let end = flag.find(['\'', ' ']).unwrap_or(flag.len());
        out.push('`');
        out.push_str(&flag[..end]);
        out.push('`');
        rest = match flag[end..].find('\'') {
            Some(close) => &flag[end + close + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    const TWO_WAYS: &str = r#"
lease-table = "leases"
metrics-addr = "127.0.0.1:0"
batch-size = 500
emf-dimension = ["Service=todo", "Stage=prod"]
metrics-format = "emf"

[[path]]
source-region = "us-east-1"
source-table = "todos"
target-region = "us-west-2"
target-table = "todos"
mode = "lww"

[[path]]
source-region = "us-west-2"
source-table = "todos"
target-region = "us-east-1"
target-table = "todos"
mode = "lww"
batch-size = 100

[[path]]
source-region = "us-east-1"
source-table = "users"
target-region = "us-west-2"
target-table = "users-copy"
mode = "one-way"
lease-region = "us-east-1"
"#;

    #[test]
    fn paths_take_the_top_keys_and_their_own() {
        let configs = parse(TWO_WAYS, "w-1").unwrap();
        assert_eq!(configs.len(), 3);
        let [a, b, c] = &configs[..] else { panic!() };
        assert_eq!(a.source.to_string(), "us-east-1/todos");
        assert_eq!(b.target.to_string(), "us-east-1/todos");
        assert_eq!(c.target.to_string(), "us-west-2/users-copy");
        assert_eq!((a.mode, c.mode), (Mode::Lww, Mode::OneWay));
        assert_eq!(
            (
                a.tuning.batch_size,
                b.tuning.batch_size,
                c.tuning.batch_size
            ),
            (500, 100, 500)
        );
        assert_eq!(a.lease.to_string(), "us-west-2/leases");
        assert_eq!(c.lease.to_string(), "us-east-1/leases");
        for config in &configs {
            assert_eq!(config.worker_id, "w-1");
            assert_eq!(config.metrics_addr.to_string(), "127.0.0.1:0");
            let emf = config.emf.as_ref().unwrap();
            assert_eq!(
                emf.dimensions,
                vec![
                    ("Service".to_owned(), "todo".to_owned()),
                    ("Stage".to_owned(), "prod".to_owned())
                ]
            );
        }
        // Defaults are run's defaults.
        assert_eq!(a.tuning.reads_per_second, 5);
    }

    #[test]
    fn environment_variables_do_not_fill_in_the_file() {
        // clap would read REPLICATOR_MODE for a missing `mode`; the file's parser has no env.
        assert!(run_flags().get_arguments().all(|a| a.get_env().is_none()));
    }

    #[test]
    fn mistakes_are_named_with_where_they_are() {
        let one = |extra_top: &str, extra_path: &str| {
            format!(
                "{extra_top}\n[[path]]\nsource-region = \"us-east-1\"\nsource-table = \"todos\"\n\
                 target-region = \"us-west-2\"\ntarget-table = \"todos\"\n{extra_path}\n"
            )
        };
        let cases = [
            (
                one("", "mode = \"lww\"\nbatchsize = 5"),
                "unknown key `batchsize` in [[path]] 1",
            ),
            (
                one("mode = \"lww\"\nmetrics_addr = 1", ""),
                "unknown key `metrics_addr` in the top of the file",
            ),
            (one("", ""), "[[path]] 1: `mode` is missing"),
            (
                one("", "mode = \"both\""),
                "[[path]] 1: invalid value 'both' for `mode`",
            ),
            (
                one("", "mode = \"lww\"\nbatch-size = 5000"),
                "[[path]] 1: `batch-size`: 5000 is outside 1..=1000",
            ),
            (
                one("", "mode = \"lww\"\nbatch-size = \"many\""),
                "[[path]] 1: invalid value 'many' for `batch-size`",
            ),
            (
                one("", "mode = \"lww\"\nworker-id = \"x\""),
                "[[path]] 1: `worker-id` applies to the whole process",
            ),
            (
                one("", "mode = \"lww\"\nidle-poll = 1.5"),
                "[[path]] 1: `idle-poll` is of type float; give a string",
            ),
            (
                one(
                    "",
                    "mode = \"lww\"\n[[path]]\nsource-region = \"us-east-1\"\nsource-table = \"todos\"\ntarget-region = \"us-west-2\"\ntarget-table = \"todos\"\nmode = \"one-way\"",
                ),
                "[[path]] 2 repeats [[path]] 1 (us-east-1/todos > us-west-2/todos)",
            ),
            ("mode = \"lww\"".to_owned(), "no [[path]] table"),
            (
                "path = 3".to_owned(),
                "`path` must be written as [[path]] tables",
            ),
            ("[[path]\n".to_owned(), "not valid TOML"),
            (one("", "mode = []"), "[[path]] 1: `mode` is an empty array"),
        ];
        for (text, expected) in cases {
            let error = parse(&text, "w").unwrap_err();
            assert!(
                error.contains(expected),
                "{expected:?} not in {error:?} for:\n{text}"
            );
        }
    }

    #[test]
    fn values_that_start_with_a_dash_stay_values() {
        let text = "worker-id = \"-w1\"\n[[path]]\nsource-region = \"us-east-1\"\n\
                    source-table = \"-todos\"\ntarget-region = \"us-west-2\"\n\
                    target-table = \"todos\"\nmode = \"lww\"\n";
        let configs = parse(text, "w").unwrap();
        assert_eq!(configs[0].worker_id, "-w1");
        assert_eq!(configs[0].source.table, "-todos");
        let error = parse(&text.replace("\"lww\"", "\"lww\"\nbatch-size = -5"), "w").unwrap_err();
        assert!(
            error.contains("`batch-size`: -5 is outside 1..=1000"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = load(Path::new("/nonexistent/replicator.toml"), "w").unwrap_err();
        assert_eq!(error.file, "/nonexistent/replicator.toml");
        assert!(
            error
                .to_string()
                .starts_with("--config /nonexistent/replicator.toml: cannot read it:")
        );
    }
}
