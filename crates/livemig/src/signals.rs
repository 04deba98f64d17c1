//! SIGINT (Ctrl-C) and SIGTERM as a request to stop cleanly: the first one runs the command's
//! stop action (cancel the migration, stop the receiver) and is announced on stderr; the
//! process then ends by its own path, with the exit code of where the guest is. Later signals
//! are ignored: every path that follows is bounded by deadlines.

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

/// Calls `on_signal` once, on the first SIGINT or SIGTERM. The handlers are in place when this
/// returns.
pub fn on_interrupt(on_signal: impl FnOnce() + Send + 'static) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    let (mut int, mut term) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .context("cannot install handlers for SIGINT and SIGTERM")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                }
            });
            crate::out::note(&format!(
                "livemig: {name}: stopping cleanly (the guest is not left behind; a hand-over already committed completes)"
            ));
            on_signal();
            // Keep the handlers installed (and further signals swallowed) until the process ends.
            rt.block_on(async {
                loop {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
            });
        })
        .context("cannot start the signal thread")?;
    Ok(())
}
