//! The REST API against the local AWS, in both regions: created with its routes, integration and
//! stage; a second plan is empty; a changed route or function is exactly that change; an interrupted
//! creation is completed by an update; deleting ours leaves an unrelated API alone.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use aws_sdk_apigateway::Client;
use deployer::desired::{Kind, Resolved, Resource, reference_key};
use deployer::plan::{Action, Change, plan};
use deployer::resources::{Scope, rest_api};
use serde_json::{Value, json};
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B};

/// The alias API Gateway invokes.
fn function_arn(region: &str, app: &str) -> String {
    format!("arn:aws:lambda:{region}:123456789012:function:{app}-test-api:live")
}

/// The desired REST API of `app` in `region`, with the function reference resolved.
fn wanted(app: &str, region: &str) -> Resource {
    let d = support::deployment(app, &[]);
    let mut resolved = Resolved::new();
    for r in [REGION_A, REGION_B] {
        resolved.insert(
            reference_key(Kind::LambdaAlias, r, "live"),
            json!(function_arn(r, app)),
        );
    }
    support::wanted(&d, "sha", Kind::RestApi, Some(region), &resolved).remove(0)
}

fn scope(app: &str) -> Scope {
    Scope {
        app: app.to_owned(),
        stage: "test".to_owned(),
    }
}

async fn observe(client: &Client, region: &str, app: &str, wanted: &[String]) -> Vec<Resource> {
    rest_api::observe(client, region, &scope(app), wanted)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Observes, plans against `want` (nothing: everything of the scope goes), applies; the changes.
async fn step(client: &Client, region: &str, app: &str, want: Option<&Resource>) -> Vec<Change> {
    let names: Vec<String> = want.iter().map(|w| w.name.clone()).collect();
    let observed = observe(client, region, app, &names).await;
    let want: Vec<Resource> = want.into_iter().cloned().collect();
    let plan = plan(&want, &observed);
    for change in &plan.changes {
        let have = observed.iter().find(|o| o.name == change.name);
        rest_api::apply(client, change, want.first(), have)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    plan.changes
}

fn fields(change: &Change) -> Vec<String> {
    match &change.action {
        Action::Update { changes } | Action::Replace { changes } => {
            changes.iter().map(|c| c.field.clone()).collect()
        }
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn rest_api_reconciles_in_both_regions() {
    let local = LocalAws::from_env();
    let app = format!("ra{}", std::process::id() % 1_000_000);
    let clients: Vec<(&str, Client)> = [REGION_A, REGION_B]
        .into_iter()
        .map(|r| (r, Client::new(&local.sdk_config(r))))
        .collect();
    // An API of the same app in another stage, made beforehand: never ours.
    let (_, client_a) = &clients[0];
    let unrelated = client_a
        .create_rest_api()
        .name(format!("{app}-other"))
        .tags("tworegion:app", &app)
        .tags("tworegion:stage", "other")
        .send()
        .await
        .unwrap()
        .id()
        .unwrap()
        .to_owned();

    for (region, client) in &clients {
        let want = wanted(&app, region);
        let created = step(client, region, &app, Some(&want)).await;
        assert_eq!(created.len(), 1, "{created:?}");
        assert_eq!(created[0].action, Action::Create);

        let observed = observe(client, region, &app, std::slice::from_ref(&want.name)).await;
        assert_eq!(observed.len(), 1, "only ours: {observed:?}");
        let api = &observed[0];
        let id = api.props["id"].as_str().unwrap();
        assert_eq!(api.props["routes"], want.props["routes"]);
        assert_eq!(api.props["integration"], json!(function_arn(region, &app)));
        assert_eq!(api.props["stage"], "live");
        assert_eq!(api.props["endpoint"], "REGIONAL");
        assert_eq!(
            api.props["host"],
            json!(format!("{id}.execute-api.{region}.amazonaws.com"))
        );
        assert_eq!(
            api.props["source_arn"],
            json!(format!("arn:aws:execute-api:{region}:123456789012:{id}/*"))
        );
        assert!(
            plan(std::slice::from_ref(&want), &observed).is_empty(),
            "a second up changes nothing in {region}"
        );
        // Each route's method and its integration as AWS holds them.
        let resources = client
            .get_resources()
            .rest_api_id(id)
            .embed("methods")
            .send()
            .await
            .unwrap();
        let proxy = resources
            .items()
            .iter()
            .find(|r| r.path() == Some("/{proxy+}"))
            .unwrap();
        let any = &proxy.resource_methods().unwrap()["ANY"];
        assert_eq!(any.api_key_required(), Some(true));
        assert_eq!(any.authorization_type(), Some("NONE"));
        let integration = any.method_integration().unwrap();
        assert_eq!(integration.r#type().unwrap().as_str(), "AWS_PROXY");
        assert_eq!(integration.http_method(), Some("POST"));
        assert_eq!(
            integration.uri().unwrap(),
            rest_api::integration_uri(region, &function_arn(region, &app))
        );
    }

    // One route no longer needs the key: exactly that change, then nothing.
    let (region, client) = &clients[1];
    let mut want = wanted(&app, region);
    let routes = want
        .props
        .get_mut("routes")
        .unwrap()
        .as_array_mut()
        .unwrap();
    let proxy = routes
        .iter_mut()
        .find(|r| r["path"] == "/{proxy+}")
        .unwrap();
    proxy["api_key_required"] = Value::Bool(false);
    let changed = step(client, region, &app, Some(&want)).await;
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(fields(&changed[0]), vec!["routes"]);
    assert!(step(client, region, &app, Some(&want)).await.is_empty());
    let observed = observe(client, region, &app, std::slice::from_ref(&want.name)).await;
    assert_eq!(observed[0].props["routes"][1]["api_key_required"], false);

    // Another function: exactly the integration, then nothing.
    let other = format!("arn:aws:lambda:{region}:210987654321:function:{app}-v2");
    want.props.insert("integration".into(), json!(other));
    let changed = step(client, region, &app, Some(&want)).await;
    assert_eq!(fields(&changed[0]), vec!["integration"]);
    assert!(step(client, region, &app, Some(&want)).await.is_empty());
    let observed = observe(client, region, &app, std::slice::from_ref(&want.name)).await;
    assert_eq!(observed[0].props["integration"], json!(other));
    assert!(
        observed[0].props["source_arn"]
            .as_str()
            .unwrap()
            .contains(":210987654321:"),
        "the account follows the function"
    );

    // Nothing wanted: ours go (found by their tags), the unrelated API stays.
    for (region, client) in &clients {
        let deleted = step(client, region, &app, None).await;
        assert_eq!(deleted.len(), 1, "{deleted:?}");
        assert_eq!(deleted[0].action, Action::Delete);
        assert_eq!(deleted[0].name, format!("{app}-test"));
        assert!(
            observe(client, region, &app, &[format!("{app}-test")])
                .await
                .is_empty()
        );
    }
    client_a
        .get_rest_api()
        .rest_api_id(&unrelated)
        .send()
        .await
        .expect("the unrelated API survives");
    client_a
        .delete_rest_api()
        .rest_api_id(&unrelated)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn an_interrupted_creation_is_completed_by_an_update() {
    let local = LocalAws::from_env();
    let app = format!("rb{}", std::process::id() % 1_000_000);
    let client = Client::new(&local.sdk_config(REGION_B));
    let want = wanted(&app, REGION_B);
    // What a creation leaves when it stops right after CreateRestApi.
    client
        .create_rest_api()
        .name(&want.name)
        .endpoint_configuration(
            aws_sdk_apigateway::types::EndpointConfiguration::builder()
                .types(aws_sdk_apigateway::types::EndpointType::Regional)
                .build(),
        )
        .tags("tworegion:app", &app)
        .tags("tworegion:stage", "test")
        .send()
        .await
        .unwrap();
    let observed = observe(&client, REGION_B, &app, std::slice::from_ref(&want.name)).await;
    assert_eq!(
        observed[0].props["source_arn"]
            .as_str()
            .unwrap()
            .split(':')
            .nth(4),
        Some("*")
    );
    let completed = step(&client, REGION_B, &app, Some(&want)).await;
    assert_eq!(completed.len(), 1, "{completed:?}");
    assert_eq!(
        fields(&completed[0]),
        vec!["integration", "routes", "stage"]
    );
    assert!(step(&client, REGION_B, &app, Some(&want)).await.is_empty());
    assert_eq!(step(&client, REGION_B, &app, None).await.len(), 1);
}
