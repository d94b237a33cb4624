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

/// A role to reach a table through (another account), as the SDK assumes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRole {
    /// `arn:aws:iam::<account>:role/<name>`.
    pub arn: String,
    /// The external ID the role's trust policy asks for, if any.
    pub external_id: Option<String>,
    /// The session name (shows in the other account's CloudTrail).
    pub session_name: String,
}

/// A role ARN that failed validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{arn:?} is not an IAM role ARN: {reason}; expected arn:aws:iam::<12-digit account>:role/<name> \
     (arn:aws-cn:... and arn:aws-us-gov:... in those partitions)"
)]
pub struct InvalidRoleArn {
    /// The rejected input.
    pub arn: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

/// Checks that `arn` names an IAM role: `arn:<partition>:iam::<account>:role/<path and name>`.
pub fn parse_role_arn(arn: &str) -> Result<String, InvalidRoleArn> {
    let invalid = |reason| InvalidRoleArn {
        arn: arn.to_owned(),
        reason,
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(invalid("it does not have six ':'-separated parts"));
    };
    if prefix != "arn" || !partition.starts_with("aws") {
        return Err(invalid("it does not start with arn:aws"));
    }
    if service != "iam" || !region.is_empty() {
        return Err(invalid("it is not an IAM ARN (arn:aws:iam::...)"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("its account is not 12 digits"));
    }
    match resource.strip_prefix("role/") {
        Some(name) if !name.is_empty() && name.len() <= 512 => Ok(arn.to_owned()),
        _ => Err(invalid("its resource is not role/<name>")),
    }
}

/// Checks an external ID as STS takes it: 2 to 1,224 characters of letters, digits and `+=,.@:/-_`.
pub fn parse_external_id(id: &str) -> Result<String, &'static str> {
    if !(2..=1224).contains(&id.len()) {
        return Err("an external ID has 2 to 1224 characters");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@:/-_".contains(&b))
    {
        return Err("an external ID may hold only letters, digits and +=,.@:/-_");
    }
    Ok(id.to_owned())
}

/// A role session name from `text`: the characters STS accepts (letters, digits and `+=,.@-_`), at
/// most 64, at least 2.
pub fn session_name(text: &str) -> String {
    let mut name: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while name.len() < 2 {
        name.push('_');
    }
    name
}

/// [`sdk_config`] for `region`, with the credentials of `role` when one is given: the SDK's own
/// [`aws_config::sts::AssumeRoleProvider`], which calls STS with the credentials `options` give and
/// whose credentials the SDK's identity cache refreshes before they expire.
pub async fn sdk_config_as(
    region: Region,
    options: &AwsOptions,
    role: Option<&AssumeRole>,
) -> SdkConfig {
    let base = sdk_config(region.clone(), options).await;
    let Some(role) = role else {
        return base;
    };
    let mut builder = aws_config::sts::AssumeRoleProvider::builder(&role.arn)
        .session_name(&role.session_name)
        .region(region)
        .configure(&base);
    if let Some(id) = &role.external_id {
        builder = builder.external_id(id);
    }
    let provider = builder.build().await;
    base.into_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(provider),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_external_ids_and_session_names_are_checked() {
        assert!(parse_role_arn("arn:aws:iam::123456789012:role/replicator").is_ok());
        assert!(parse_role_arn("arn:aws-cn:iam::123456789012:role/team/replicator").is_ok());
        for (bad, why) in [
            ("replicator", "six"),
            ("arn:aws:iam::12345:role/x", "12 digits"),
            ("arn:aws:s3:::bucket/x", "not an IAM"),
            ("arn:aws:iam::123456789012:user/x", "role/<name>"),
            ("arn:aws:iam::123456789012:role/", "role/<name>"),
            ("arn:gcp:iam::123456789012:role/x", "arn:aws"),
        ] {
            let error = parse_role_arn(bad).expect_err(bad).to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        assert!(parse_external_id("tworegion-prod").is_ok());
        assert!(parse_external_id("x").is_err());
        assert!(parse_external_id("has space").is_err());
        assert_eq!(session_name("host name/1234"), "host-name-1234");
        assert_eq!(session_name("x"), "x_");
        assert_eq!(session_name(&"a".repeat(100)).len(), 64);
    }

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
