//! spawngate as a real process (the static-free debug binary cargo built), for
//! tests that restart it, SIGTERM it or SIGKILL it mid-spawn.

use std::process::{Child, Command, Output, Stdio};

use crate::harness::{
    Backend, IMAGE, Traefik, cleanup_docker, containers_of, free_port, get_json, http_client,
    login_with_link, poll, random_hex, wait_until,
};

pub struct ProcHarness {
    pub instance: String,
    pub network: String,
    pub public: String,
    pub direct: String,
    /// Kept so the directory lives as long as the harness.
    _data_dir: tempfile::TempDir,
    pub client: reqwest::Client,
    pub traefik: Option<Traefik>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Dropped last: the swarm outlives this test's services.
    _swarm: Option<std::sync::Arc<crate::swarm_setup::SwarmGuard>>,
}

impl ProcHarness {
    /// Starts spawngate (configured by environment only) and Traefik.
    pub async fn start(extra_env: &[(&str, &str)]) -> ProcHarness {
        Self::start_on(Backend::Docker, extra_env).await
    }

    /// [`ProcHarness::start`] on `backend`.
    pub async fn start_on(backend: Backend, extra_env: &[(&str, &str)]) -> ProcHarness {
        let instance = format!("p{}", random_hex(5));
        let network = format!("sgtest-{instance}");
        let web_port = free_port();
        let public = format!("http://127.0.0.1:{web_port}");
        let mut h = Self::without_traefik(backend, &instance, &network, &public, extra_env).await;
        h.traefik = Some(Traefik::start(web_port, free_port(), &h.direct, None, &[]).await);
        h
    }

    /// spawngate alone (data dir and listen port of its own) for Docker instance
    /// `instance`, reached by users at `public`: one of several replicas (see
    /// `replicas.rs`), or the start of [`ProcHarness::start_on`].
    pub async fn without_traefik(
        backend: Backend,
        instance: &str,
        network: &str,
        public: &str,
        extra_env: &[(&str, &str)],
    ) -> ProcHarness {
        let swarm = backend.prepare();
        let data_dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            (
                "SPAWNGATE_SERVER_LISTEN".into(),
                format!("127.0.0.1:{port}"),
            ),
            ("SPAWNGATE_SERVER_PUBLIC_URL".into(), public.to_owned()),
            (
                "SPAWNGATE_SERVER_DATA_DIR".into(),
                data_dir.path().display().to_string(),
            ),
            ("SPAWNGATE_DOCKER_NETWORK".into(), network.to_owned()),
            ("SPAWNGATE_DOCKER_INSTANCE".into(), instance.to_owned()),
            ("SPAWNGATE_DOCKER_IMAGE".into(), IMAGE.into()),
            ("SPAWNGATE_LOG".into(), "warn".into()),
            // See harness.rs: background pre-creation could outlive the clean-up.
            ("SPAWNGATE_LIFECYCLE_PRECREATE".into(), "false".into()),
        ];
        env.extend(backend.env());
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut h = ProcHarness {
            instance: instance.to_owned(),
            network: network.to_owned(),
            public: public.to_owned(),
            direct: format!("http://127.0.0.1:{port}"),
            _data_dir: data_dir,
            client: http_client(),
            traefik: None,
            env,
            child: None,
            _swarm: swarm,
        };
        h.spawn_server().await;
        h
    }

    /// Starts the server process and waits (bounded) for `/healthz`.
    pub async fn spawn_server(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_spawngate"))
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let (client, healthz) = (&self.client, &format!("{}/healthz", self.direct));
        poll(20, "spawngate to come up", || async move {
            let resp = client.get(healthz).send().await;
            resp.is_ok_and(|r| r.status() == 200).then_some(())
        })
        .await;
    }

    fn pid(&self) -> String {
        self.child.as_ref().unwrap().id().to_string()
    }

    /// Whether the server process runs (it was spawned and not signalled away).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `signal` and waits (bounded) for the process to exit.
    pub async fn signal(&mut self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = self.child.take().unwrap();
        wait_until(40, format!("spawngate to exit after SIG{signal}"), || {
            child.try_wait().unwrap().is_some()
        })
        .await;
    }

    /// The data directory (the store is there).
    pub fn data_dir(&self) -> &std::path::Path {
        self._data_dir.path()
    }

    /// A CLI command against this instance, not yet started (for commands the test
    /// runs concurrently).
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spawngate"));
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs a CLI command against this instance (over the control socket when the
    /// server runs).
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_spawngate"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spawngate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Creates a user through the CLI; returns the slug once Traefik routes it.
    pub async fn user(&self, name: &str) -> String {
        let out = String::from_utf8_lossy(&self.cli(&["user", "add", name]).stdout).into_owned();
        let slug = crate::harness::slug_in(&out);
        if let Some(t) = &self.traefik {
            t.wait_router(&format!("u-{slug}")).await;
        }
        slug
    }

    /// Runs a CLI command with `env` over this instance's environment, whatever
    /// its outcome (for commands expected to fail, or another data directory).
    pub fn cli_with(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_spawngate"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// Changes one setting for the next [`ProcHarness::spawn_server`] and CLI call.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    pub async fn login(&self, name: &str) -> String {
        let link =
            String::from_utf8_lossy(&self.cli(&["user", "login-link", name]).stdout).into_owned();
        login_with_link(&self.client, &self.public, &link, "spawngate_session").await
    }

    pub fn containers_of(&self, slug: &str) -> Vec<String> {
        containers_of(&self.instance, slug)
    }

    /// spawngate's own `/readyz`.
    pub async fn readyz(&self) -> (reqwest::StatusCode, serde_json::Value) {
        get_json(&self.client, &format!("{}/readyz", self.direct)).await
    }
}

impl Drop for ProcHarness {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.traefik.take();
        cleanup_docker(&self.instance, &self.network);
        // See Harness: a Docker call in flight when the process died can still land.
        std::thread::sleep(std::time::Duration::from_millis(750));
        cleanup_docker(&self.instance, &self.network);
    }
}

/// `docker inspect -f <format> <container>`, trimmed.
pub fn inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
