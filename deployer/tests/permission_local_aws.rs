//! API Gateway's invoke permission against the local AWS: added to the function's policy limited to
//! the REST API, a second plan is empty, a new API is a replaced statement, removal takes it out.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use deployer::desired::{Kind, Resolved, Resource, reference_attr_key};
use deployer::plan::{Action, plan};
use deployer::resources::permission;
use serde_json::json;
use tworegion_common::test_support::{LocalAws, REGION_A};

fn wanted(app: &str, api_id: &str) -> Resource {
    let d = support::deployment(app, &[]);
    let mut resolved = Resolved::new();
    resolved.insert(
        reference_attr_key(
            Kind::RestApi,
            REGION_A,
            &format!("{app}-test"),
            "source_arn",
        ),
        json!(format!(
            "arn:aws:execute-api:{REGION_A}:123456789012:{api_id}/*/*"
        )),
    );
    support::wanted(&d, "sha", Kind::LambdaPermission, Some(REGION_A), &resolved).remove(0)
}

#[tokio::test]
async fn invoke_permission_reconciles() {
    let local = LocalAws::from_env();
    let lambda = aws_sdk_lambda::Client::new(&local.sdk_config(REGION_A));
    let iam = aws_sdk_iam::Client::new(&local.sdk_config(REGION_A));
    let app = format!("p{}", std::process::id() % 1_000_000);
    let function = format!("{app}-test-api");
    let role_name = format!("{app}-perm-role");
    let role_arn = support::lambda_role(&iam, &role_name).await;
    lambda
        .create_function()
        .function_name(&function)
        .runtime(aws_sdk_lambda::types::Runtime::from("provided.al2023"))
        .role(&role_arn)
        .handler("bootstrap")
        .code(
            aws_sdk_lambda::types::FunctionCode::builder()
                .zip_file(aws_sdk_lambda::primitives::Blob::new(b"PK".to_vec()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    // The permission is on the alias API Gateway invokes, which must exist first.
    let version = lambda
        .publish_version()
        .function_name(&function)
        .send()
        .await
        .unwrap();
    lambda
        .create_alias()
        .function_name(&function)
        .name("live")
        .function_version(version.version().unwrap())
        .send()
        .await
        .unwrap();

    let want = wanted(&app, "abc123");
    assert_eq!(want.props["qualifier"], json!("live"));
    let name = want.name.clone();
    let step = |want: Option<Resource>| {
        let lambda = lambda.clone();
        let function = function.clone();
        let name = name.clone();
        async move {
            let observed: Vec<Resource> =
                permission::observe(&lambda, REGION_A, &function, Some("live"), &name)
                    .await
                    .unwrap()
                    .into_iter()
                    .collect();
            let want: Vec<Resource> = want.into_iter().collect();
            let plan = plan(&want, &observed);
            for change in &plan.changes {
                permission::apply(&lambda, change, want.first(), observed.first())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            plan.changes
        }
    };
    assert_eq!(step(Some(want.clone())).await.len(), 1);
    let observed = permission::observe(&lambda, REGION_A, &function, Some("live"), &name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(observed.props["principal"], "apigateway.amazonaws.com");
    assert_eq!(
        observed.props["source"],
        format!("arn:aws:execute-api:{REGION_A}:123456789012:abc123/*/*").as_str()
    );
    assert!(
        plan(std::slice::from_ref(&want), std::slice::from_ref(&observed)).is_empty(),
        "a second up changes nothing"
    );

    let moved = step(Some(wanted(&app, "def456"))).await;
    assert!(
        matches!(&moved[0].action, Action::Update { changes } if changes.len() == 1 && changes[0].field == "source"),
        "{moved:?}"
    );
    let observed = permission::observe(&lambda, REGION_A, &function, Some("live"), &name)
        .await
        .unwrap()
        .unwrap();
    assert!(
        observed.props["source"]
            .as_str()
            .unwrap()
            .contains("def456")
    );

    assert_eq!(step(None).await.len(), 1);
    assert!(
        permission::observe(&lambda, REGION_A, &function, Some("live"), &name)
            .await
            .unwrap()
            .is_none()
    );
    lambda
        .delete_function()
        .function_name(&function)
        .send()
        .await
        .unwrap();
    iam.delete_role()
        .role_name(&role_name)
        .send()
        .await
        .unwrap();
}
