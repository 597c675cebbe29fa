//! A session channel: its pty and environment requests, then one shell, command
//! or `sftp` subsystem run inside the user's container, with stdin, stdout,
//! stderr, resizes and the exit status passed through. While it runs it counts
//! as activity; a stopped environment (culled, stopped by an admin) ends it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelWriteHalf};
use tokio::io::AsyncWriteExt;

use super::Shared;
use crate::lifecycle::Readiness;
use crate::runtime::{EnvId, ExecOutput, ExecRequest, TtySize};
use crate::store::Env;

/// How often an open session records activity: an atomic store, so often
/// enough for the shortest idle timeout.
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// The longest a connection waits for the environment to start.
const START_LIMIT: Duration = Duration::from_secs(120);

/// Where an image keeps OpenSSH's `sftp-server` (Debian, Alpine, Fedora).
const SFTP_SERVERS: [&str; 4] = [
    "/usr/lib/openssh/sftp-server",
    "/usr/lib/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
];

/// The first of [`SFTP_SERVERS`] the image has. Probed without a shell (an
/// image may have none): `sftp-server -h` exits 1 after its usage, a missing
/// program 126 or 127. Looked for before the client's session starts, since a
/// failed exec's message would reach sftp as garbled protocol.
async fn find_sftp_server(runtime: &dyn crate::runtime::Runtime, env: &EnvId) -> Option<String> {
    for path in SFTP_SERVERS {
        let probe = ExecRequest {
            command: vec![path.to_owned(), "-h".to_owned()],
            tty: None,
            env: Vec::new(),
        };
        let Ok(mut exec) = runtime.exec(env, &probe).await else {
            return None;
        };
        drop(exec.input);
        while exec.output.next().await.is_some() {}
        for _ in 0..50 {
            match runtime.exec_exit_code(&exec.id).await {
                Ok(Some(126 | 127)) => break,
                Ok(Some(_)) => return Some(path.to_owned()),
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => return None,
            }
        }
    }
    None
}

/// Client variables passed into the container (as OpenSSH's `AcceptEnv` default).
fn accepted_env(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_") || name == "COLORTERM"
}

enum Start {
    Shell,
    Exec(String),
    Sftp,
}

pub(super) async fn run(shared: Arc<Shared>, target: Env, channel: Channel<Msg>) {
    let (mut reader, writer) = channel.split();
    let mut tty: Option<TtySize> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let start = loop {
        match reader.wait().await {
            None | Some(ChannelMsg::Eof | ChannelMsg::Close) => return,
            Some(ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            }) => {
                tty = Some(size(col_width, row_height));
                env.push(("TERM".into(), term));
            }
            Some(ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            }) => {
                if tty.is_some() {
                    tty = Some(size(col_width, row_height));
                }
            }
            Some(ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            }) if accepted_env(&variable_name) => env.push((variable_name, variable_value)),
            Some(ChannelMsg::RequestShell { .. }) => break Start::Shell,
            Some(ChannelMsg::Exec { command, .. }) => {
                break Start::Exec(String::from_utf8_lossy(&command).into_owned());
            }
            Some(ChannelMsg::RequestSubsystem { name, .. }) if name == "sftp" => break Start::Sftp,
            Some(ChannelMsg::RequestSubsystem { .. }) => return,
            Some(_) => {}
        }
    };
    let code = match serve(&shared, &target, start, tty, env, &mut reader, &writer).await {
        Ok(code) => code,
        Err(message) => {
            let _ = writer
                .extended_data_bytes(1, format!("spawngate: {message}\r\n").into_bytes())
                .await;
            1
        }
    };
    let _ = writer.exit_status(code).await;
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

fn size(cols: u32, rows: u32) -> TtySize {
    TtySize {
        cols: u16::try_from(cols).unwrap_or(u16::MAX),
        rows: u16::try_from(rows).unwrap_or(u16::MAX),
    }
}

/// Makes the environment ready, as forwardAuth would, telling the terminal while
/// it starts. `Err` is the message for the user.
pub(super) async fn ensure_started(
    shared: &Shared,
    target: &Env,
    terminal: Option<&ChannelWriteHalf<Msg>>,
) -> Result<(), String> {
    let began = std::time::Instant::now();
    let mut told = false;
    loop {
        if shared.tasks.is_cancelled() {
            return Err("spawngate is shutting down".into());
        }
        match shared
            .lifecycle
            .ensure_ready(target, shared.hold.min(Duration::from_millis(500)))
            .await
        {
            Readiness::Ready => return Ok(()),
            Readiness::Failed(e) => {
                return Err(format!("your environment could not start: {e}"));
            }
            Readiness::Pending if began.elapsed() > START_LIMIT => {
                return Err("your environment did not start in time; try again later".into());
            }
            Readiness::Pending => {
                if !told && let Some(t) = terminal {
                    let line = "spawngate: starting your environment…\r\n";
                    let _ = t.extended_data_bytes(1, line.as_bytes().to_vec()).await;
                    told = true;
                }
            }
        }
    }
}

async fn serve(
    shared: &Shared,
    target: &Env,
    start: Start,
    tty: Option<TtySize>,
    env: Vec<(String, String)>,
    reader: &mut russh::ChannelReadHalf,
    writer: &ChannelWriteHalf<Msg>,
) -> Result<u32, String> {
    ensure_started(shared, target, Some(writer)).await?;
    let runtime = shared.lifecycle.runtime().clone();
    let env_id = EnvId::User(target.slug().clone());
    let command = match &start {
        Start::Shell => vec!["/bin/sh".to_owned(), "-l".to_owned()],
        Start::Exec(line) => vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()],
        Start::Sftp => vec![find_sftp_server(runtime.as_ref(), &env_id).await.ok_or(
            "this environment has no sftp-server: scp and sftp need an image with OpenSSH's sftp-server (Debian: openssh-sftp-server)",
        )?],
    };
    let tty = if matches!(start, Start::Sftp) {
        None
    } else {
        tty
    };
    let exec = runtime
        .exec(&env_id, &ExecRequest { command, tty, env })
        .await
        .map_err(|e| format!("cannot run a command in your environment: {e}"))?;
    let crate::runtime::Exec {
        id,
        mut output,
        mut input,
    } = exec;
    let mut touch = tokio::time::interval(TOUCH_EVERY);
    let stopped = shared.lifecycle.until_stopped(target.slug());
    tokio::pin!(stopped);
    let mut stdin_open = true;
    loop {
        tokio::select! {
            out = output.next() => match out {
                Some(Ok(ExecOutput::Stdout(b))) => {
                    if writer.data_bytes(b).await.is_err() { break; }
                }
                Some(Ok(ExecOutput::Stderr(b))) => {
                    if writer.extended_data_bytes(1, b).await.is_err() { break; }
                }
                Some(Err(e)) => {
                    tracing::debug!(user = %target.owner().name, error = %e, "ssh: exec output failed");
                    break;
                }
                None => break,
            },
            msg = reader.wait() => match msg {
                Some(ChannelMsg::Data { data }) if stdin_open => {
                    if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                        stdin_open = false;
                    }
                }
                Some(ChannelMsg::Eof) => {
                    stdin_open = false;
                    let _ = input.shutdown().await;
                }
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) if tty.is_some() => {
                    let _ = runtime.exec_resize(&id, size(col_width, row_height)).await;
                }
                // The client went away: the command is left to end with its input.
                None | Some(ChannelMsg::Close) => return Ok(0),
                Some(_) => {}
            },
            _ = touch.tick() => shared.lifecycle.touch(target.slug()),
            () = &mut stopped => {
                return Err("your environment was stopped; this session ends".into());
            }
            () = shared.tasks.cancelled() => {
                return Err("spawngate is shutting down; this session ends".into());
            }
        }
    }
    shared.lifecycle.touch(target.slug());
    // Docker may report the exec as running a moment after its output closed.
    for _ in 0..50 {
        match runtime.exec_exit_code(&id).await {
            Ok(Some(code)) => return Ok(u32::try_from(code).unwrap_or(255)),
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(format!("cannot read the exit status: {e}")),
        }
    }
    Err("the command's exit status is unknown".into())
}
