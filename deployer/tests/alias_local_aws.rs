//! The function's alias `live` against the local AWS: created on a published version of the
//! function's code, a second plan is empty, a new build is an alias update onto a new version, a
//! rollback moves it back (and a plan then wants the new build again), an unchanged function is never
//! published twice.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use deployer::desired::{Kind, Resolved, Resource, reference_key};
use deployer::plan::{Action, plan};
use deployer::resources::{alias, function};
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_A};

fn wanted(app: &str, artifact: &[u8], role_arn: &str, kind: Kind) -> Resource {
    let d = support::deployment(app, &[]);
    let mut resolved = Resolved::new();
    resolved.insert(
        reference_key(
            Kind::LambdaRole,
            REGION_A,
            &format!("{app}-test-api-{REGION_A}"),
        ),
        json!(role_arn),
    );
    support::wanted(
        &d,
        &function::code_sha256(artifact),
        kind,
        Some(REGION_A),
        &resolved,
    )
    .remove(0)
}

#[tokio::test]
async fn alias_follows_the_function_and_rolls_back() {
    let local = LocalAws::from_env();
    let lambda = aws_sdk_lambda::Client::new(&local.sdk_config(REGION_A));
    let iam = aws_sdk_iam::Client::new(&local.sdk_config(REGION_A));
    let app = format!("al{}", std::process::id() % 1_000_000);
    let role_name = format!("{app}-test-api-{REGION_A}");
    let role_arn = support::lambda_role(&iam, &role_name).await;
    let function_name = format!("{app}-test-api");
    let v1 = b"PK first build".to_vec();
    let v2 = b"PK second build".to_vec();

    // Makes the function what `artifact` asks for, then reconciles the alias; returns the alias's
    // planned changes.
    let deploy = |artifact: Vec<u8>| {
        let lambda = lambda.clone();
        let app = app.clone();
        let role_arn = role_arn.clone();
        let function_name = function_name.clone();
        async move {
            let want_f = wanted(&app, &artifact, &role_arn, Kind::LambdaFunction);
            let have_f: Vec<Resource> = function::observe(&lambda, REGION_A, &function_name)
                .await
                .unwrap()
                .into_iter()
                .collect();
            for change in &plan(std::slice::from_ref(&want_f), &have_f).changes {
                function::apply(&lambda, change, Some(&want_f), have_f.first(), &artifact)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            let want_a = wanted(&app, &artifact, &role_arn, Kind::LambdaAlias);
            let have_a: Vec<Resource> = alias::observe(&lambda, REGION_A, &function_name, "live")
                .await
                .unwrap()
                .into_iter()
                .collect();
            let changes = plan(std::slice::from_ref(&want_a), &have_a).changes;
            for change in &changes {
                alias::apply(&lambda, change, Some(&want_a), have_a.first())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            changes
        }
    };
    let observe = || async {
        alias::observe(&lambda, REGION_A, &function_name, "live")
            .await
            .unwrap()
            .unwrap()
    };

    let created = deploy(v1.clone()).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].action, Action::Create);
    let first = observe().await;
    assert_eq!(
        first.props["code_sha256"],
        function::code_sha256(&v1).as_str()
    );
    let first_version = alias::version(Some(&first)).unwrap();
    assert_ne!(
        first_version, "$LATEST",
        "the alias names a published version"
    );
    assert!(
        first.props["arn"].as_str().unwrap().ends_with(":live"),
        "API Gateway invokes the alias ARN: {}",
        first.props["arn"]
    );
    assert!(
        deploy(v1.clone()).await.is_empty(),
        "a second up changes nothing"
    );

    let updated = deploy(v2.clone()).await;
    assert_eq!(updated.len(), 1);
    assert!(
        matches!(&updated[0].action, Action::Update { changes } if changes.iter().any(|c| c.field == "code_sha256")),
        "{updated:?}"
    );
    let second = observe().await;
    let second_version = alias::version(Some(&second)).unwrap();
    assert_ne!(second_version, first_version);
    assert_eq!(
        second.props["code_sha256"],
        function::code_sha256(&v2).as_str()
    );

    // A rollback moves the alias back; the next plan wants the new build again, and publishing an
    // unchanged function returns the same version instead of a new one.
    alias::point(
        &lambda,
        &function_name,
        "live",
        &first_version,
        true,
        second.props["revision_id"].as_str(),
        "test",
    )
    .await
    .unwrap();
    let rolled_back = observe().await;
    assert_eq!(alias::version(Some(&rolled_back)).unwrap(), first_version);
    assert_eq!(
        rolled_back.props["code_sha256"],
        function::code_sha256(&v1).as_str()
    );
    let again = deploy(v2.clone()).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        alias::version(Some(&observe().await)).unwrap(),
        second_version
    );
}
