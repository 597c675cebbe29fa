//! Commands inside a user's container (`docker exec`) and the container's own
//! address, for the SSH server.

use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use futures_util::StreamExt;

use super::{DockerRuntime, classify, status};
use crate::runtime::{EnvId, Exec, ExecOutput, ExecRequest, RuntimeError, TtySize};

impl DockerRuntime {
    pub(super) async fn exec_in(
        &self,
        env: &EnvId,
        req: &ExecRequest,
    ) -> Result<Exec, RuntimeError> {
        let docker = self.docker()?;
        let name = self.name_of(env);
        let options = CreateExecOptions::<String> {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(req.tty.is_some()),
            env: Some(req.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            cmd: Some(req.command.clone()),
            ..Default::default()
        };
        let created = docker
            .create_exec(&name, options)
            .await
            .map_err(|e| match status(&e) {
                Some(404) => RuntimeError::Failed(format!("container '{name}' does not exist")),
                Some(409) => RuntimeError::Failed(format!("container '{name}' is not running")),
                _ => classify(e),
            })?;
        let start = StartExecOptions {
            detach: false,
            tty: req.tty.is_some(),
            // Chunks as they come: interactive output must not wait for a newline.
            output_capacity: Some(64 * 1024),
        };
        let started = docker
            .start_exec(&created.id, Some(start))
            .await
            .map_err(classify)?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(RuntimeError::Failed("docker exec did not attach".into()));
        };
        if let Some(size) = req.tty {
            // Before any output, so the first prompt fits the client's terminal.
            let _ = self.resize(&created.id, size).await;
        }
        let output = output.map(|item| match item {
            Ok(bollard::container::LogOutput::StdErr { message }) => {
                Ok(ExecOutput::Stderr(message))
            }
            Ok(
                bollard::container::LogOutput::StdOut { message }
                | bollard::container::LogOutput::Console { message }
                | bollard::container::LogOutput::StdIn { message },
            ) => Ok(ExecOutput::Stdout(message)),
            Err(e) => Err(classify(e)),
        });
        Ok(Exec {
            id: created.id,
            output: Box::pin(output),
            input,
        })
    }

    pub(super) async fn resize(&self, exec_id: &str, size: TtySize) -> Result<(), RuntimeError> {
        self.docker()?
            .resize_exec(
                exec_id,
                ResizeExecOptions {
                    width: size.cols.max(1),
                    height: size.rows.max(1),
                },
            )
            .await
            .map_err(classify)
    }

    pub(super) async fn exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        let inspected = self
            .docker()?
            .inspect_exec(exec_id)
            .await
            .map_err(classify)?;
        if inspected.running == Some(true) {
            return Ok(None);
        }
        Ok(inspected.exit_code)
    }

    /// The container's own address on its network, while it runs.
    pub(super) async fn own_port(
        &self,
        env: &EnvId,
        port: u16,
    ) -> Result<Option<std::net::SocketAddr>, RuntimeError> {
        let name = self.name_of(env);
        let c = match self.docker()?.inspect_container(&name, None).await {
            Ok(c) => c,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(classify(e)),
        };
        let state = c.state.unwrap_or_default();
        if state.running != Some(true) || state.paused == Some(true) {
            return Ok(None);
        }
        // A user's container is on one network (the shared one or its own).
        let ip = c
            .network_settings
            .and_then(|n| n.networks)
            .into_iter()
            .flatten()
            .filter_map(|(_, n)| n.ip_address)
            .find_map(|ip| ip.parse::<std::net::IpAddr>().ok());
        Ok(ip.map(|ip| std::net::SocketAddr::new(ip, port)))
    }
}
