//! Logging: `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one JSON object per
//! line, anything else a compact human format without timestamps (the platform adds them).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Install the global subscriber. Call first in every subcommand.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .init();
    } else {
        registry.with(fmt::layer().compact().without_time()).init();
    }
}
