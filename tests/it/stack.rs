//! The Swarm deployment: `docker stack deploy -c examples/stack.yml` on a
//! single-node swarm serves a user end to end through the stack's own Traefik,
//! each user's environment a Swarm service on the stack's overlay.

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::COOKIE;

use crate::harness::{
    Later, cleanup_docker, docker_lines, free_port, login_with_link, poll, random_hex, repo_root,
};
use crate::swarm_setup::SwarmGuard;

struct Stack {
    /// The stack's name; also its spawngate's instance label.
    name: String,
    /// The stack's overlay, users' services join it.
    network: String,
    env: Vec<(String, String)>,
    /// Dropped last: the swarm outlives the stack.
    _swarm: Arc<SwarmGuard>,
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

impl Stack {
    fn namespace_label(&self) -> String {
        format!("label=com.docker.stack.namespace={}", self.name)
    }

    /// The container of spawngate's running task (the stack has one replica).
    fn spawngate_container(&self) -> Option<String> {
        docker_lines(&[
            "ps",
            "-q",
            "--filter",
            &format!(
                "label=com.docker.swarm.service.name={}_spawngate",
                self.name
            ),
        ])
        .into_iter()
        .next()
    }

    /// `docker exec <spawngate's task> /spawngate <args>`, as the stack file's header says.
    fn exec(&self, args: &[&str]) -> String {
        let container = self.spawngate_container().expect("spawngate's task runs");
        let mut full = vec!["exec", container.as_str(), "/spawngate"];
        full.extend_from_slice(args);
        let out = docker(&full);
        assert!(
            out.status.success(),
            "{:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The last lines of both services' logs and their tasks, for a timeout.
    fn logs(&self) -> String {
        let mut all = String::new();
        for service in ["spawngate", "traefik"] {
            let name = format!("{}_{service}", self.name);
            let ps = docker(&["service", "ps", "--no-trunc", &name]);
            let logs = docker(&["service", "logs", "--tail", "20", &name]);
            all.push_str(&format!(
                "\n--- {name}\n{}{}{}",
                String::from_utf8_lossy(&ps.stdout),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            ));
        }
        all
    }
}

/// Polls `gone` every 250 ms for up to `secs` (in a `Drop`: no async).
fn wait_sync(secs: u64, mut gone: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if gone() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = docker(&["stack", "rm", &self.name]);
        // Until spawngate's task is gone it may still create a user's service.
        let ns = self.namespace_label();
        let stopped = wait_sync(30, || {
            docker_lines(&["service", "ls", "-q", "--filter", &ns]).is_empty()
                && docker_lines(&["ps", "-aq", "--filter", &ns]).is_empty()
        });
        // Users' services, volumes and networks are spawngate's, not the stack's.
        cleanup_docker(&self.name, &self.network);
        // `stack rm` leaves volumes, and the overlay stays in use a moment after
        // its last task (users' tasks included) went.
        let network = self.network.clone();
        let edge = format!("{}-edge", self.name);
        let instance = format!("label=spawngate.instance={}", self.name);
        let cleaned = wait_sync(30, || {
            let mut volumes = docker_lines(&["volume", "ls", "-q", "--filter", &ns]);
            volumes.extend(docker_lines(&["volume", "ls", "-q", "--filter", &instance]));
            if !volumes.is_empty() {
                let mut args = vec!["volume", "rm", "-f"];
                args.extend(volumes.iter().map(String::as_str));
                let _ = docker(&args);
            }
            let _ = docker(&["network", "rm", &network]);
            let _ = docker(&["network", "rm", &edge]);
            docker_lines(&["volume", "ls", "-q", "--filter", &ns]).is_empty()
                && docker_lines(&["service", "ls", "-q", "--filter", &instance]).is_empty()
                && docker_lines(&["volume", "ls", "-q", "--filter", &instance]).is_empty()
                && !docker(&["network", "inspect", &network]).status.success()
                && !docker(&["network", "inspect", &edge]).status.success()
        });
        // A failing test already says why; a passing one must not leave litter.
        assert!(
            std::thread::panicking() || (stopped && cleaned),
            "stack {} left Docker objects behind",
            self.name
        );
    }
}

/// Deploys a uniquely named stack and waits (bounded) until its Traefik serves
/// spawngate's login page through the provider's routes.
async fn deploy() -> (Stack, String, reqwest::Client) {
    let swarm = SwarmGuard::acquire();
    let name = format!("sgs{}", random_hex(4));
    let network = format!("{name}-users");
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    let env: Vec<(String, String)> = vec![
        ("SPAWNGATE_PROVIDER_TOKEN".into(), random_hex(16)),
        ("SPAWNGATE_HTTP_PORT".into(), port.to_string()),
        ("SPAWNGATE_PUBLIC_URL".into(), public.clone()),
        ("SPAWNGATE_USERS_NETWORK".into(), network.clone()),
        ("SPAWNGATE_EDGE_NETWORK".into(), format!("{name}-edge")),
        ("SPAWNGATE_INSTANCE".into(), name.clone()),
    ];
    let stack = Stack {
        name,
        network,
        env,
        _swarm: swarm,
    };
    let up = Command::new("docker")
        .current_dir(repo_root())
        .args(["stack", "deploy", "-c", "examples/stack.yml", &stack.name])
        .envs(stack.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "docker stack deploy: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let client = crate::harness::http_client();
    crate::harness::until_login_page(
        &client,
        &public,
        Later(|| format!("the stack to come up: {}", stack.logs())),
    )
    .await;
    (stack, public, client)
}

/// Adds a user with the CLI in spawngate's task and signs them in through Traefik
/// with a fresh login link; returns the slug and the `Cookie` value.
async fn add_and_login(
    stack: &Stack,
    client: &reqwest::Client,
    public: &str,
    name: &str,
) -> (String, String) {
    let added = stack.exec(&["user", "add", name]);
    let slug = crate::harness::slug_in(&added);
    let link = stack.exec(&["user", "login-link", name]);
    assert!(
        link.starts_with(&format!("{public}/_spawngate/login?token=")),
        "{link}"
    );
    let cookie = login_with_link(client, public, &link, "spawngate_session").await;
    (slug, cookie)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stack_deployment_serves_a_user_end_to_end() {
    let (stack, public, client) = deploy().await;
    let (slug, cookie) = add_and_login(&stack, &client, &public, "alice").await;

    // Until Traefik polls the new router and the service's task answers, the
    // catch-all asks to retry; then alice's own service answers.
    let url = format!("{public}/u-{slug}/whoami.json");
    let what = Later(|| format!("{url} to answer 200: {}", stack.logs()));
    let who: serde_json::Value = poll(60, what, || async {
        // A connection error counts as "not yet".
        let resp = client.get(&url).header(COOKIE, &cookie).send().await.ok()?;
        match resp.status() {
            StatusCode::OK => resp.json().await.ok(),
            _ => None,
        }
    })
    .await;
    assert_eq!(who["user"], "alice");
    assert_eq!(who["path"], "/whoami.json", "prefix stripped");
    assert_eq!(who["headers"]["x-spawngate-user"], "alice");

    // It is a Swarm service of this instance, on the stack's overlay.
    let service = format!("spawngate-u-{slug}");
    let services = docker_lines(&[
        "service",
        "ls",
        "--filter",
        &format!("label=spawngate.instance={}", stack.name),
        "--filter",
        &format!("label=spawngate.slug={slug}"),
        "--format",
        "{{.Name}}",
    ]);
    assert_eq!(services, std::slice::from_ref(&service));
    let overlay = docker_lines(&["network", "inspect", "-f", "{{.Id}}", &stack.network]);
    let attached = docker_lines(&[
        "service",
        "inspect",
        "-f",
        "{{range .Spec.TaskTemplate.Networks}}{{.Target}}{{end}}",
        &service,
    ]);
    assert_eq!(attached, overlay, "{service} joins {}", stack.network);

    // Bob's session does not open alice's environment.
    let (_bob_slug, bob_cookie) = add_and_login(&stack, &client, &public, "bob").await;
    let on_alice = client
        .get(&url)
        .header(COOKIE, &bob_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(on_alice.status(), StatusCode::FORBIDDEN);
}
