//! AWS SDK configuration for one region.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// A region name that failed validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid AWS region {name:?}: {reason}; expected a name such as us-east-1 or eu-west-2 \
     (lowercase letters and digits in dash-separated parts, ending in a number)"
)]
pub struct InvalidRegion {
    /// The rejected input.
    pub name: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

/// Checks that `name` looks like an AWS region (`us-east-1`, `us-gov-west-1`, `ap-southeast-4`) and
/// returns it as a [`Region`].
///
/// The check is syntactic: the SDK accepts any string and would only fail later, at the first call,
/// with a DNS or signing error that does not name the flag.
pub fn parse_region(name: &str) -> Result<Region, InvalidRegion> {
    let invalid = |reason| InvalidRegion {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    let parts: Vec<&str> = name.split('-').collect();
    if parts.len() < 3 {
        return Err(invalid("it has fewer than three dash-separated parts"));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(invalid("it has an empty part"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("it has characters other than a-z, 0-9 and '-'"));
    }
    let (last, rest) = parts.split_last().ok_or_else(|| invalid("it is empty"))?;
    if !last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("its last part is not a number"));
    }
    if rest
        .iter()
        .any(|p| !p.bytes().all(|b| b.is_ascii_lowercase()))
    {
        return Err(invalid("only its last part may contain digits"));
    }
    Ok(Region::new(name.to_owned()))
}

/// Options shared by every binary that talks to AWS.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// A named profile from `~/.aws/config`; `None` uses the default chain (`AWS_PROFILE`, environment
    /// credentials, web identity, ECS container credentials, instance metadata).
    pub profile: Option<String>,
    /// An endpoint for every service, overriding `AWS_ENDPOINT_URL` (for example the local AWS).
    pub endpoint_url: Option<String>,
    /// Sign with fixed placeholder credentials instead of the credential chain: for the local AWS,
    /// which checks no signature (`deployer local` uses it when no credentials are set).
    pub placeholder_credentials: bool,
}

/// Loads the SDK configuration for `region` from the default credential chain and profiles.
///
/// `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>` (for example `AWS_ENDPOINT_URL_DYNAMODB`) are
/// honoured by the SDK itself; [`AwsOptions::endpoint_url`] overrides both.
pub async fn sdk_config(region: Region, options: &AwsOptions) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
    if let Some(profile) = &options.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(endpoint) = &options.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if options.placeholder_credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            "local", "local", None, None, "local",
        ));
    }
    loader.load().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_region_names() {
        for name in [
            "us-east-1",
            "us-west-2",
            "eu-central-2",
            "ap-southeast-4",
            "us-gov-west-1",
            "cn-northwest-1",
            "il-central-1",
        ] {
            assert_eq!(parse_region(name).unwrap().as_ref(), name);
        }
    }

    #[test]
    fn rejects_bad_region_names_with_a_reason() {
        let cases = [
            ("", "it is empty"),
            ("useast1", "it has fewer than three dash-separated parts"),
            ("us-east", "it has fewer than three dash-separated parts"),
            ("US-EAST-1", "it has characters other than a-z, 0-9 and '-'"),
            ("us-east-x", "its last part is not a number"),
            ("us--1", "it has an empty part"),
            (
                "us-east-1 ",
                "it has characters other than a-z, 0-9 and '-'",
            ),
            ("us-ea5t-1", "only its last part may contain digits"),
        ];
        for (name, reason) in cases {
            let err = parse_region(name).unwrap_err();
            assert_eq!(err.reason, reason, "for {name:?}");
            let message = err.to_string();
            assert!(
                message.contains("us-east-1"),
                "message suggests a fix: {message}"
            );
        }
    }
}
