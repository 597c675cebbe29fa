//! `direct-tcpip` (`ssh -L 8888:localhost:8888`): only ever to a port of the
//! user's own container. The target must be `localhost` (or its loopback
//! addresses), which means "my environment"; spawngate connects to the
//! container's own address, so no name or address a client sends can point at
//! another container, spawngate or the host.

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Msg};

use super::Shared;
use crate::runtime::EnvId;
use crate::store::Env;

/// The container port a forwarding to `host:port` means, if it is allowed.
pub(super) fn target_port(host: &str, port: u32) -> Option<u16> {
    let local = matches!(
        host.trim_end_matches('.').to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1" | "[::1]"
    );
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    local.then_some(port)
}

pub(super) async fn run(
    shared: Arc<Shared>,
    env: Env,
    port: u16,
    channel: russh::Channel<Msg>,
    reply: ChannelOpenHandle,
) {
    if let Err(e) = super::session::ensure_started(&shared, &env, None).await {
        tracing::info!(user = %env.owner().name, error = %e, "ssh: forwarding refused");
        reply.reject(ChannelOpenFailure::ConnectFailed).await;
        return;
    }
    let env_id = EnvId::User(env.slug().clone());
    let address = match shared.lifecycle.runtime().port_address(&env_id, port).await {
        Ok(Some(a)) => a,
        Ok(None) | Err(_) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(address),
    )
    .await;
    let mut stream = match connected {
        Ok(Ok(s)) => s,
        _ => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    reply.accept().await;
    let mut remote = channel.into_stream();
    let mut touch = tokio::time::interval(Duration::from_secs(1));
    let stopped = shared.lifecycle.until_stopped(env.slug());
    tokio::pin!(stopped);
    let copy = tokio::io::copy_bidirectional(&mut remote, &mut stream);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => break,
            _ = touch.tick() => shared.lifecycle.touch(env.slug()),
            () = &mut stopped => break,
            () = shared.tasks.cancelled() => break,
        }
    }
    shared.lifecycle.touch(env.slug());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_localhost_ports_are_forwarded() {
        assert_eq!(target_port("localhost", 8080), Some(8080));
        assert_eq!(target_port("127.0.0.1", 22), Some(22));
        assert_eq!(target_port("::1", 1), Some(1));
        assert_eq!(target_port("LOCALHOST.", 80), Some(80));
        for host in [
            "10.0.0.2",
            "spawngate-u-abc",
            "127.0.0.2",
            "0.0.0.0",
            "example.org",
            "",
        ] {
            assert_eq!(target_port(host, 8080), None, "{host}");
        }
        assert_eq!(target_port("localhost", 0), None);
        assert_eq!(target_port("localhost", 70000), None);
    }
}
