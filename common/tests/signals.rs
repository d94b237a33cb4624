//! The signal listener, exercised with real signals sent to this test process (its own binary).

use std::time::Duration;

use tworegion_common::shutdown::{self, Signal};

fn send(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

#[tokio::test]
async fn first_signal_cancels_and_second_forces_exit() {
    let (token, forced) = shutdown::listen().expect("register handlers");
    assert!(!token.is_cancelled());

    send("-TERM");
    tokio::time::timeout(Duration::from_secs(5), token.cancelled())
        .await
        .expect("the first SIGTERM cancels the token");

    let mut forced = std::pin::pin!(forced);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), forced.as_mut())
            .await
            .is_err(),
        "one signal must not force an exit"
    );

    send("-INT");
    let second = tokio::time::timeout(Duration::from_secs(5), forced)
        .await
        .expect("the second signal resolves ForcedExit");
    assert_eq!(second, Signal::Int);
    assert_eq!(second.exit_code(), 130);
}
