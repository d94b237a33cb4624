//! The Lambda function against the local AWS: created from the artifact, a second plan is empty, a
//! new memory size or a new artifact is exactly that update, removal deletes it.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use deployer::desired::{Kind, Resolved, Resource, reference_key};
use deployer::plan::{Action, plan};
use deployer::resources::function;
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_A};

fn wanted(app: &str, memory: i32, artifact: &[u8], role_arn: &str) -> Resource {
    let d = support::deployment(app, &[("memory_mb = 256", format!("memory_mb = {memory}"))]);
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
        Kind::LambdaFunction,
        Some(REGION_A),
        &resolved,
    )
    .remove(0)
}

#[tokio::test]
async fn function_reconciles() {
    let local = LocalAws::from_env();
    let lambda = aws_sdk_lambda::Client::new(&local.sdk_config(REGION_A));
    let iam = aws_sdk_iam::Client::new(&local.sdk_config(REGION_A));
    let app = format!("f{}", std::process::id() % 1_000_000);
    let role_name = format!("{app}-test-api-{REGION_A}");
    let role_arn = support::lambda_role(&iam, &role_name).await;
    let v1 = b"PK first build".to_vec();
    let v2 = b"PK second build".to_vec();

    let name = format!("{app}-test-api");
    let step = |want: Option<Resource>, artifact: Vec<u8>| {
        let lambda = lambda.clone();
        let name = name.clone();
        async move {
            let observed: Vec<Resource> = function::observe(&lambda, REGION_A, &name)
                .await
                .unwrap()
                .into_iter()
                .collect();
            let want: Vec<Resource> = want.into_iter().collect();
            let plan = plan(&want, &observed);
            for change in &plan.changes {
                function::apply(&lambda, change, want.first(), observed.first(), &artifact)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            plan.changes
        }
    };

    let created = step(Some(wanted(&app, 256, &v1, &role_arn)), v1.clone()).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].action, Action::Create);
    let observed = function::observe(&lambda, REGION_A, &name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        observed.props["code_sha256"],
        function::code_sha256(&v1).as_str(),
        "our hash is Lambda's"
    );
    assert_eq!(observed.props["environment"]["SAMPLE_APP_TABLE"], "todos");
    assert!(
        plan(
            &[wanted(&app, 256, &v1, &role_arn)],
            std::slice::from_ref(&observed)
        )
        .is_empty(),
        "a second up changes nothing"
    );

    let fields = |changes: &[deployer::plan::Change]| -> Vec<String> {
        changes
            .iter()
            .flat_map(|c| match &c.action {
                Action::Update { changes } => changes.iter().map(|f| f.field.clone()).collect(),
                other => vec![format!("{other:?}")],
            })
            .collect()
    };
    let memory = step(Some(wanted(&app, 512, &v1, &role_arn)), v1.clone()).await;
    assert_eq!(fields(&memory), vec!["memory_mb"]);
    let code = step(Some(wanted(&app, 512, &v2, &role_arn)), v2.clone()).await;
    assert_eq!(fields(&code), vec!["code_sha256"]);
    let observed = function::observe(&lambda, REGION_A, &name)
        .await
        .unwrap()
        .unwrap();
    assert!(plan(&[wanted(&app, 512, &v2, &role_arn)], &[observed]).is_empty());

    let removed = step(None, Vec::new()).await;
    assert_eq!(removed.len(), 1);
    assert!(
        function::observe(&lambda, REGION_A, &name)
            .await
            .unwrap()
            .is_none()
    );
    // A function made by hand with the right name and settings is adopted: only the tags change.
    lambda
        .create_function()
        .function_name(&name)
        .runtime(aws_sdk_lambda::types::Runtime::from("provided.al2023"))
        .architectures(aws_sdk_lambda::types::Architecture::X8664)
        .handler("bootstrap")
        .role(&role_arn)
        .memory_size(256)
        .timeout(10)
        .environment(
            aws_sdk_lambda::types::Environment::builder()
                .variables("SAMPLE_APP_TABLE", "todos")
                .variables("SAMPLE_APP_PARTITION_KEY", "id")
                .build(),
        )
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(v1.clone()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let adopted = step(Some(wanted(&app, 256, &v1, &role_arn)), v1.clone()).await;
    assert_eq!(fields(&adopted), vec!["tags"]);
    let observed = function::observe(&lambda, REGION_A, &name)
        .await
        .unwrap()
        .unwrap();
    assert!(plan(&[wanted(&app, 256, &v1, &role_arn)], &[observed]).is_empty());
    step(None, Vec::new()).await;

    iam.delete_role()
        .role_name(&role_name)
        .send()
        .await
        .unwrap();
}
