//! Names the deployer gives to what it creates, and the parsing of those names back: one module
//! owns the scheme, so that changing it is one edit. Everything derives from the deployment's
//! prefix `<app>-<stage>`.
//!
//! Region names are never guessed from their shape (GovCloud's `us-gov-west-1` has four parts, the
//! ISO partitions' `us-isob-east-1` others): a name is parsed back against the deployment's own
//! regions.

/// `<app>-<stage>`: the prefix of every name.
pub fn prefix(app: &str, stage: &str) -> String {
    format!("{app}-{stage}")
}

/// The Lambda alias that API Gateway invokes and a rollout moves (its permission is on it too).
pub const LIVE_ALIAS: &str = "live";

/// The API key (the same name in both regions): `<prefix>-key`.
pub fn api_key(prefix: &str) -> String {
    format!("{prefix}-key")
}

/// The region's own name under the custom domain, which its health check probes:
/// `<region>.<domain>` (covered by the certificate's `*.<domain>`).
pub fn probe_domain(region: &str, domain: &str) -> String {
    format!("{region}.{}", domain.trim_end_matches('.'))
}

/// The replicator's lease table (checkpoints and leases: operational state, no user data).
pub fn lease_table(prefix: &str) -> String {
    format!("{prefix}-replicator-leases")
}

/// The replicator's dead-letter table (records that could not be applied: user data).
pub fn dead_letter_table(prefix: &str) -> String {
    format!("{prefix}-replicator-dead-letters")
}

/// What a Route 53 health check of the deployment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckRole {
    /// Probes the region's endpoint: the region's real health.
    Endpoint,
    /// The region's switch: a CALCULATED check over the endpoint check that `failover` turns off
    /// (the failover records use it).
    Switch,
}

const SWITCH_SUFFIX: &str = "-switch";

/// The health check that probes `region`'s endpoint: `<prefix>-<region>`.
pub fn endpoint_check(prefix: &str, region: &str) -> String {
    format!("{prefix}-{region}")
}

/// The region's switch check: `<prefix>-<region>-switch` (sorts after the endpoint check, so a
/// plan creates the child before the check that names it, and deletes it after).
pub fn switch_check(prefix: &str, region: &str) -> String {
    format!("{prefix}-{region}{SWITCH_SUFFIX}")
}

/// The region and role of a health check named by [`endpoint_check`] or [`switch_check`], for one
/// of `regions`; `None` for any other name.
pub fn parse_check<'a>(
    prefix: &str,
    name: &str,
    regions: &'a [String],
) -> Option<(&'a str, CheckRole)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (region, role) = match rest.strip_suffix(SWITCH_SUFFIX) {
        Some(region) => (region, CheckRole::Switch),
        None => (rest, CheckRole::Endpoint),
    };
    regions
        .iter()
        .find(|r| r.as_str() == region)
        .map(|r| (r.as_str(), role))
}

/// A DNS record's set identifier for `region`: `<prefix>-<region>`.
pub fn set_identifier(prefix: &str, region: &str) -> String {
    format!("{prefix}-{region}")
}

/// The region a set identifier written by [`set_identifier`] names, for one of `regions`.
pub fn parse_set_identifier<'a>(
    prefix: &str,
    set_identifier: &str,
    regions: &'a [String],
) -> Option<&'a str> {
    let rest = set_identifier.strip_prefix(prefix)?.strip_prefix('-')?;
    regions.iter().map(String::as_str).find(|r| *r == rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn checks_parse_back_for_every_partitions_region_names() {
        let rs = regions(&["us-gov-west-1", "us-isob-east-1"]);
        let p = prefix("todos", "dev");
        for r in &rs {
            assert_eq!(
                parse_check(&p, &endpoint_check(&p, r), &rs),
                Some((r.as_str(), CheckRole::Endpoint))
            );
            assert_eq!(
                parse_check(&p, &switch_check(&p, r), &rs),
                Some((r.as_str(), CheckRole::Switch))
            );
            assert_eq!(
                parse_set_identifier(&p, &set_identifier(&p, r), &rs),
                Some(r.as_str())
            );
        }
        // Another deployment's, or a region not configured.
        assert_eq!(parse_check(&p, "todos-prod-us-gov-west-1", &rs), None);
        assert_eq!(parse_check(&p, "todos-dev-eu-west-1", &rs), None);
        assert_eq!(parse_check(&p, "todos-devus-gov-west-1", &rs), None);
    }

    #[test]
    fn the_switch_sorts_after_its_endpoint_check() {
        let p = prefix("a", "b");
        assert!(endpoint_check(&p, "us-east-1") < switch_check(&p, "us-east-1"));
    }
}
