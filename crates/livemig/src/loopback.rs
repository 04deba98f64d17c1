//! One engine migration on loopback for the bench commands (`bench-pause`, `bench-rescue`): a
//! fresh key, a connected pair of sockets, the destination in a thread, the source here.

use std::time::Duration;

use anyhow::{Context, Result};
use livemig_engine::{migrate_measured, net, Control, Guest, Key, ReceiverConfig, SenderConfig};
use livemig_policy::report::MigrationReport;
use livemig_policy::Policy;

/// Migrates `guest` under `policy` and `send_cfg` to a receiver on loopback whose frame
/// deadline, like both sockets' timeouts, is `timeout`; returns the source's report once the
/// receiver has finished.
pub(crate) fn migrate(
    guest: &dyn Guest,
    policy: &mut dyn Policy,
    send_cfg: &SenderConfig,
    timeout: Duration,
) -> Result<MigrationReport> {
    let key = Key::generate()?;
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut a = std::net::TcpStream::connect(l.local_addr()?)?;
    let (mut b, _) = l.accept()?;
    net::prepare(&a, timeout)?;
    net::prepare(&b, timeout)?;
    let dk = key.clone();
    let dest = std::thread::spawn(move || -> Result<()> {
        let cfg = ReceiverConfig {
            frame_deadline: timeout,
            ..ReceiverConfig::default()
        };
        livemig_engine::receive(&mut b, &dk, &cfg)?;
        Ok(())
    });
    let r = migrate_measured(
        &mut a,
        &key,
        guest,
        policy,
        send_cfg,
        &Control::new(),
        &mut |_| {},
        None,
    );
    drop(a);
    dest.join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?
        .context("the receiver failed")?;
    Ok(r?.0)
}
