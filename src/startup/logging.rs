//! Logging: JSON lines for machines (the default) or a human format for development
//! (`RUST_LOG` overrides the configured level).

use tracing_subscriber::layer::{self, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Registry};

use crate::metrics::PROTOCOL_ERRORS;
use crate::settings::{LogFormat, LogSettings};

/// Errors that actix-http raises and logs itself, below the application: malformed
/// requests (bad `Content-Length`, `Content-Length` with `Transfer-Encoding`, a bad chunk
/// size), heads too large (431), header timeouts (408), broken connections. Any client can
/// cause them, so they are not logged (see `DEFAULT_DIRECTIVES`) but counted.
const PROTOCOL_TARGET: &str = "actix_http::h1";

/// Directives added to the configured level unless `RUST_LOG` says otherwise: actix-http
/// logs client mistakes at ERROR, which would let any client fill the log.
const DEFAULT_DIRECTIVES: &str = "actix_http::h1=off";

/// Counts actix-http's error events, whatever the log filter lets through.
struct CountProtocolErrors;

impl<S: tracing::Subscriber> Layer<S> for CountProtocolErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::ERROR && meta.target().starts_with(PROTOCOL_TARGET) {
            PROTOCOL_ERRORS.inc();
        }
    }
}

/// Installs the global subscriber. `to_stderr` keeps stdout clean for subcommands whose
/// output is data (such as `token`).
pub fn init(settings: &LogSettings, to_stderr: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},{DEFAULT_DIRECTIVES}", settings.level)));
    let writer = move || -> Box<dyn std::io::Write> {
        if to_stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        }
    };
    let output: Box<dyn Layer<Registry> + Send + Sync> = match settings.format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        // Colours only for a terminal: escape codes do not belong in a file or a pipe.
        LogFormat::Text => {
            use std::io::IsTerminal;
            let terminal = if to_stderr {
                std::io::stderr().is_terminal()
            } else {
                std::io::stdout().is_terminal()
            };
            fmt::layer().with_ansi(terminal).with_writer(writer).boxed()
        }
    };
    let result = tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(CountProtocolErrors)
        .try_init();
    // A second init (tests start many applications in one process) keeps the first.
    let _ = result;
}
