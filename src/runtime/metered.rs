//! A runtime that times every operation of the one it wraps and counts its
//! failures ([`crate::metrics::RuntimeOp`]), so no backend records metrics itself.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    Capabilities, ContainerGone, ContainerInfo, ContainerSummary, EnvId, EnvironmentSpec, Exec,
    ExecRequest, Resource, Running, Runtime, RuntimeError, TtySize, Usage,
};
use crate::metrics::{Metrics, RuntimeOp};

/// `inner`, with its calls recorded in `metrics`.
pub fn metered(inner: Arc<dyn Runtime>, metrics: Arc<Metrics>) -> Arc<dyn Runtime> {
    Arc::new(Metered { inner, metrics })
}

struct Metered {
    inner: Arc<dyn Runtime>,
    metrics: Arc<Metrics>,
}

impl Metered {
    async fn timed<T>(
        &self,
        op: RuntimeOp,
        call: impl Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        let began = Instant::now();
        let result = call.await;
        self.metrics
            .runtime_call(op, Some(began.elapsed()), result.is_ok());
        result
    }
}

#[async_trait]
impl Runtime for Metered {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn name(&self, env: &EnvId) -> String {
        self.inner.name(env)
    }
    fn address(&self, env: &EnvId, host_port: Option<u16>, port: u16) -> String {
        self.inner.address(env, host_port, port)
    }
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.timed(RuntimeOp::Ping, self.inner.ping()).await
    }
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        self.timed(RuntimeOp::ImagePresent, self.inner.image_present(image))
            .await
    }
    async fn ensure_running(&self, spec: &EnvironmentSpec) -> Result<Running, RuntimeError> {
        self.timed(RuntimeOp::EnsureRunning, self.inner.ensure_running(spec))
            .await
    }
    async fn ensure_created(&self, spec: &EnvironmentSpec) -> Result<String, RuntimeError> {
        self.timed(RuntimeOp::EnsureCreated, self.inner.ensure_created(spec))
            .await
    }
    async fn inspect(&self, env: &EnvId) -> Result<Option<ContainerInfo>, RuntimeError> {
        self.timed(RuntimeOp::Inspect, self.inner.inspect(env))
            .await
    }
    async fn stop(&self, env: &EnvId, grace: std::time::Duration) -> Result<(), RuntimeError> {
        self.timed(RuntimeOp::Stop, self.inner.stop(env, grace))
            .await
    }
    async fn pause(&self, env: &EnvId) -> Result<(), RuntimeError> {
        self.timed(RuntimeOp::Pause, self.inner.pause(env)).await
    }
    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.timed(RuntimeOp::List, self.inner.list()).await
    }
    async fn network_bytes(&self, env: &EnvId) -> Result<Option<u64>, RuntimeError> {
        self.timed(RuntimeOp::NetworkBytes, self.inner.network_bytes(env))
            .await
    }
    async fn logs(&self, env: &EnvId, tail: usize) -> Result<Vec<String>, RuntimeError> {
        self.timed(RuntimeOp::Logs, self.inner.logs(env, tail))
            .await
    }
    async fn stats(&self, env: &EnvId) -> Result<Option<Usage>, RuntimeError> {
        self.timed(RuntimeOp::Stats, self.inner.stats(env)).await
    }
    async fn exec(&self, env: &EnvId, req: &ExecRequest) -> Result<Exec, RuntimeError> {
        self.timed(RuntimeOp::Exec, self.inner.exec(env, req)).await
    }
    async fn exec_resize(&self, exec_id: &str, size: TtySize) -> Result<(), RuntimeError> {
        self.timed(RuntimeOp::ExecResize, self.inner.exec_resize(exec_id, size))
            .await
    }
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, RuntimeError> {
        self.timed(RuntimeOp::ExecExitCode, self.inner.exec_exit_code(exec_id))
            .await
    }
    async fn port_address(
        &self,
        env: &EnvId,
        port: u16,
    ) -> Result<Option<std::net::SocketAddr>, RuntimeError> {
        self.timed(RuntimeOp::PortAddress, self.inner.port_address(env, port))
            .await
    }
    async fn remove(&self, env: &EnvId, with_volume: bool) -> Result<(), RuntimeError> {
        self.timed(RuntimeOp::Remove, self.inner.remove(env, with_volume))
            .await
    }
    async fn adopt_pooled(
        &self,
        pooled: &EnvId,
        spec: &EnvironmentSpec,
    ) -> Result<(), RuntimeError> {
        self.timed(
            RuntimeOp::AdoptPooled,
            self.inner.adopt_pooled(pooled, spec),
        )
        .await
    }
    async fn resources(&self) -> Result<Vec<Resource>, RuntimeError> {
        self.timed(RuntimeOp::Resources, self.inner.resources())
            .await
    }
    async fn remove_resource(&self, resource: &Resource) -> Result<(), RuntimeError> {
        self.timed(
            RuntimeOp::RemoveResource,
            self.inner.remove_resource(resource),
        )
        .await
    }
    /// Runs for as long as the stream lasts: only its breaks are counted.
    async fn watch_events(
        &self,
        on_gone: &(dyn Fn(ContainerGone) + Send + Sync),
    ) -> Result<(), RuntimeError> {
        let result = self.inner.watch_events(on_gone).await;
        self.metrics
            .runtime_call(RuntimeOp::Events, None, result.is_ok());
        result
    }
}

#[cfg(test)]
mod tests {
    /// A trait method this wrapper does not implement would silently fall back to
    /// the trait's default (e.g. "cannot pause") instead of reaching the backend.
    #[test]
    fn every_runtime_method_is_forwarded() {
        let module = include_str!("mod.rs");
        let start = module.find("pub trait Runtime").unwrap();
        let end = module[start..]
            .find("\n}\n")
            .map_or(module.len(), |i| start + i);
        let methods: Vec<&str> = module[start..end]
            .lines()
            .filter_map(|l| {
                let l = l.trim_start();
                l.strip_prefix("async fn ")
                    .or_else(|| l.strip_prefix("fn "))
            })
            .filter_map(|rest| rest.split(['(', '<']).next())
            .collect();
        assert!(methods.len() >= 15, "{methods:?}");
        let ours = include_str!("metered.rs");
        for method in methods {
            assert!(
                ours.contains(&format!("fn {method}(")),
                "runtime/metered.rs does not forward Runtime::{method}"
            );
        }
    }
}
