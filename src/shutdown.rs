//! One shutdown signal for every role: SIGTERM (Heroku, Railway, systemd) or SIGINT (Ctrl-C).

use tokio_util::sync::CancellationToken;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received, draining");
}

/// A token cancelled on the first shutdown signal.
pub fn token() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        child.cancel();
    });
    token
}
