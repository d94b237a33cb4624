//! Logging set-up: `tracing` with key-value fields, human-readable on a terminal, JSON lines otherwise.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable when stdout is a terminal, JSON otherwise (ECS, Lambda, CI).
    #[default]
    Auto,
    /// Human-readable, coloured lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The concrete format: `Auto` becomes `Human` on a terminal and `Json` elsewhere.
    pub fn resolve(self, stdout_is_terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if stdout_is_terminal => LogFormat::Human,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// A `--log-format` value that is not one of `auto`, `human`, `json`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown log format {0:?}: use auto, human or json")]
pub struct UnknownLogFormat(pub String);

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LogFormat::Auto),
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.to_owned())),
        }
    }
}

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid log filter {filter:?}: {source}; use a level (info, debug) or directives like \"info,replicator=debug\""
)]
pub struct InvalidLogFilter {
    filter: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

/// Installs the global `tracing` subscriber, writing to stderr.
///
/// `filter` uses `RUST_LOG` syntax (`info`, `warn,replicator=debug`); the binary passes it from a flag so
/// that this function reads no environment. Calling it twice keeps the first subscriber.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), InvalidLogFilter> {
    let env_filter = EnvFilter::from_str(filter).map_err(|source| InvalidLogFilter {
        filter: filter.to_owned(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let result = match format.resolve(std::io::stdout().is_terminal()) {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        _ => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    // An error here only means a subscriber is already installed (tests, a second call): keep it.
    drop(result);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_human_on_a_terminal_and_json_elsewhere() {
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Human);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        assert_eq!(LogFormat::Json.resolve(true), LogFormat::Json);
        assert_eq!(LogFormat::Human.resolve(false), LogFormat::Human);
    }

    #[test]
    fn parses_formats_and_names_the_choices_on_error() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("human".parse::<LogFormat>(), Ok(LogFormat::Human));
        assert_eq!("auto".parse::<LogFormat>(), Ok(LogFormat::Auto));
        let err = "xml".parse::<LogFormat>().unwrap_err().to_string();
        assert_eq!(err, "unknown log format \"xml\": use auto, human or json");
    }

    #[test]
    fn a_bad_filter_is_an_error_naming_it() {
        let err = init_logging(LogFormat::Human, "info,=[")
            .unwrap_err()
            .to_string();
        assert!(err.contains("info,=["), "{err}");
    }
}
