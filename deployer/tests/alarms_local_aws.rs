//! The replicator's CloudWatch alarms against the local AWS: the four alarms of a replicator are
//! created in its region on the metrics its EMF lines carry, a second plan is empty, a new lag
//! threshold and alarm topics are exactly those updates, and removal (or `enabled = false`) deletes
//! ours and spares an alarm made by hand under the same prefix.

// Test helpers report failure by panicking.
#![allow(clippy::unwrap_used)]

mod support;

use deployer::desired::{Kind, Resolved, Resource};
use deployer::engine::reconcile;
use deployer::plan::{Action, Change, plan};
use deployer::resources::{Scope, alarm};
use tworegion_common::test_support::{LocalAws, REGION_A, REGION_B};

fn wanted(app: &str, edits: &[(&str, String)]) -> Vec<Resource> {
    let d = support::deployment(app, edits);
    support::wanted(&d, "sha", Kind::Alarm, Some(REGION_B), &Resolved::new())
}

async fn observe(client: &aws_sdk_cloudwatch::Client, app: &str) -> Vec<Resource> {
    alarm::observe(client, REGION_B, &format!("{app}-test-replicator-"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Plans `want` against what exists (only ours may be deleted) and applies it; returns the plan.
async fn up(client: &aws_sdk_cloudwatch::Client, app: &str, want: &[Resource]) -> Vec<Change> {
    let scope = Scope {
        app: app.to_owned(),
        stage: "test".to_owned(),
    };
    let observed = observe(client, app).await;
    let plan = reconcile(want, &observed, &scope, want);
    for change in &plan.changes {
        let find = |list: &[Resource]| list.iter().find(|r| r.name == change.name).cloned();
        alarm::apply(
            client,
            change,
            find(want).as_ref(),
            find(&observed).as_ref(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    plan.changes
}

fn fields(changes: &[Change]) -> Vec<(String, Vec<String>)> {
    changes
        .iter()
        .map(|c| {
            let what = match &c.action {
                Action::Update { changes } => changes.iter().map(|f| f.field.clone()).collect(),
                other => vec![format!("{other:?}")],
            };
            (c.name.clone(), what)
        })
        .collect()
}

#[tokio::test]
async fn alarms_reconcile() {
    let local = LocalAws::from_env();
    let cw = aws_sdk_cloudwatch::Client::new(&local.sdk_config(REGION_B));
    let app = format!("al{}", std::process::id() % 1_000_000);
    let family = format!("{app}-test-replicator-{REGION_A}-to-{REGION_B}");

    let want = wanted(&app, &[]);
    let created = up(&cw, &app, &want).await;
    assert_eq!(
        fields(&created),
        // In the plan's order (by name).
        ["dead-letters", "lag", "stalled", "stopped"]
            .map(|s| (format!("{family}-{s}"), vec!["Create".to_owned()]))
            .to_vec()
    );
    let observed = observe(&cw, &app).await;
    assert_eq!(observed.len(), 4, "{observed:#?}");
    assert!(
        plan(&want, &observed).is_empty(),
        "a second up changes nothing: {:#?}",
        plan(&want, &observed)
    );
    // What CloudWatch holds: the replicator's EMF metric and dimensions, in the target's region.
    let lag = observed
        .iter()
        .find(|r| r.name == format!("{family}-lag"))
        .unwrap();
    assert_eq!(lag.props["namespace"], "tworegion/replicator");
    assert_eq!(lag.props["metric"], "OldestUnappliedAgeSeconds");
    assert_eq!(
        lag.props["dimensions"]["Path"],
        format!("{REGION_A}/todos > {REGION_B}/todos")
    );
    assert_eq!(lag.props["dimensions"]["Deployment"], format!("{app}-test"));
    assert_eq!(lag.props["threshold"], 300.0);
    assert_eq!(lag.props["treat_missing_data"], "breaching");

    // A new threshold changes the lag alarm only (its description names the threshold).
    let lag_600 = wanted(
        &app,
        &[(
            "memory = 512",
            "memory = 512\n[replicator.alarms]\nlag_seconds = 600".to_owned(),
        )],
    );
    assert_eq!(
        fields(&up(&cw, &app, &lag_600).await),
        vec![(
            format!("{family}-lag"),
            vec!["description".to_owned(), "threshold".to_owned()]
        )]
    );
    // Topics: every alarm notifies them, on alarm and on recovery.
    let topic = format!("arn:aws:sns:{REGION_B}:123456789012:ops");
    let with_topic = wanted(
        &app,
        &[(
            "memory = 512",
            format!(
                "memory = 512\n[replicator.alarms]\nlag_seconds = 600\nactions = {{ {REGION_B} = [\"{topic}\"] }}"
            ),
        )],
    );
    let changed = up(&cw, &app, &with_topic).await;
    assert_eq!(changed.len(), 4);
    assert!(
        fields(&changed).iter().all(|(_, f)| f == &["actions"]),
        "{changed:#?}"
    );
    let out = cw
        .describe_alarms()
        .alarm_names(format!("{family}-stalled"))
        .send()
        .await
        .unwrap();
    let stalled = &out.metric_alarms()[0];
    assert_eq!(stalled.alarm_actions(), std::slice::from_ref(&topic));
    assert_eq!(stalled.ok_actions(), std::slice::from_ref(&topic));
    assert!(plan(&with_topic, &observe(&cw, &app).await).is_empty());

    // An alarm made by hand under the same prefix is not ours: removal leaves it.
    let by_hand = format!("{app}-test-replicator-by-hand");
    cw.put_metric_alarm()
        .alarm_name(&by_hand)
        .namespace("tworegion/replicator")
        .metric_name("RecordsRead")
        .statistic(aws_sdk_cloudwatch::types::Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(0.0)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::LessThanThreshold)
        .send()
        .await
        .unwrap();
    // `enabled = false` removes the deployer's alarms, as `down` does.
    let disabled = wanted(
        &app,
        &[(
            "memory = 512",
            "memory = 512\n[replicator.alarms]\nenabled = false".to_owned(),
        )],
    );
    assert!(disabled.is_empty());
    let removed = up(&cw, &app, &disabled).await;
    assert_eq!(removed.len(), 4);
    assert!(removed.iter().all(|c| c.action == Action::Delete));
    let left: Vec<String> = observe(&cw, &app)
        .await
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(left, vec![by_hand.clone()]);
    cw.delete_alarms()
        .alarm_names(&by_hand)
        .send()
        .await
        .unwrap();
}
