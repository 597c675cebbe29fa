//! Traefik's dynamic configuration, rendered from the user directory.
//!
//! Per environment: a router whose rule cannot match another slug's prefix, a
//! forwardAuth middleware with the slug bound in its address and a service at the
//! address the runtime gives (deterministic); one stripPrefixRegex middleware is
//! shared by every router that strips. Nothing here depends on whether a container
//! runs, so starting one never changes what Traefik reads. Each user's entries are
//! rendered as JSON text when that user changes, and the document is those
//! fragments concatenated; polls get the cached bytes.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::Config;
use crate::ids::UserId;
use crate::metrics::Metrics;
use crate::runtime::{EnvId, Runtime};
use crate::store::{Changes, Directory, Env, User};

/// Headers forwardAuth copies from spawngate's answer into the request. Traefik
/// deletes each of them from the client's request first, so a client can never
/// forge them, and `Cookie` is how the session cookie is kept from user containers.
pub const AUTH_RESPONSE_HEADERS: &[&str] = &[
    "X-Spawngate-User",
    "X-Spawngate-Slug",
    "X-Spawngate-Secret",
    "X-Spawngate-Access",
    "Cookie",
    "Authorization",
];

/// Name of the always-present routers, middlewares and service.
const SELF_SERVICE: &str = "spawngate";
/// The errors middleware every user router starts with.
const APP_GONE: &str = "spawngate-app-gone";
/// Path mode: headers taken off every app's answers (see where it is defined).
const APP_HEADERS: &str = "spawngate-app-headers";
/// Path mode: the `/u-<slug>` prefix taken off requests (see where it is defined).
const STRIP: &str = "spawngate-strip";

/// The whole document as a JSON value (tests, and what [`Renderer`] must agree with).
pub fn render(config: &Config, directory: &Directory, runtime: &dyn Runtime) -> Value {
    let mut renderer = Renderer::new(config);
    renderer.update(config, directory, runtime);
    serde_json::from_slice(&renderer.document()).unwrap_or(Value::Null)
}

/// The entries that do not depend on users, as JSON text.
struct Fixed {
    routers: Vec<String>,
    services: Vec<String>,
    /// Shared by every user router: emitted only when there are users.
    middlewares: Vec<String>,
}

/// One user's entries, rendered once per change of that user.
struct Fragment {
    routers: String,
    middlewares: String,
    services: String,
}

/// Keeps every user's fragment and the document they make: a change of one user
/// re-renders that user only (the directory's change log says which), and the
/// document is the fragments concatenated.
pub struct Renderer {
    fixed: Fixed,
    users: std::collections::BTreeMap<UserId, Fragment>,
    /// The directory version the fragments are of (`None`: none yet).
    version: Option<u64>,
}

/// `"name":value` as JSON text.
fn entry(name: &str, value: &Value) -> String {
    let mut out = serde_json::to_string(name).unwrap_or_default();
    out.push(':');
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
    out
}

fn with_tls(config: &Config, mut router: Value) -> Value {
    if let Some(resolver) = &config.traefik.cert_resolver {
        router["tls"] = json!({ "certResolver": resolver });
    }
    router
}

impl Renderer {
    pub fn new(config: &Config) -> Renderer {
        Renderer {
            fixed: fixed(config),
            users: Default::default(),
            version: None,
        }
    }

    /// Brings the fragments up to `directory`.
    pub fn update(&mut self, config: &Config, directory: &Directory, runtime: &dyn Runtime) {
        let changes = match self.version {
            Some(version) => directory.changes_since(version),
            None => Changes::Everything,
        };
        match changes {
            Changes::Users(ids) => {
                for id in ids {
                    match directory.by_id(id) {
                        Some(user) => {
                            self.users
                                .insert(id.clone(), render_user(config, runtime, user));
                        }
                        None => {
                            self.users.remove(id);
                        }
                    }
                }
            }
            Changes::Everything => {
                self.users = directory
                    .iter()
                    .map(|user| (user.id.clone(), render_user(config, runtime, user)))
                    .collect();
            }
        }
        self.version = Some(directory.version());
    }

    /// The document: the fixed entries and every user's fragment.
    pub fn document(&self) -> Bytes {
        let size: usize = self
            .users
            .values()
            .map(|f| f.routers.len() + f.middlewares.len() + f.services.len() + 3)
            .sum();
        let mut out = String::with_capacity(size + 4096);
        let users = !self.users.is_empty();
        let no_users: &[String] = &[];
        // Traefik rejects an empty section ("cannot be a standalone element").
        let mut sections = 0;
        out.push_str("{\"http\":{");
        for (name, fixed, pick) in [
            (
                "routers",
                &self.fixed.routers[..],
                (|f: &Fragment| &f.routers) as fn(&Fragment) -> &String,
            ),
            (
                "middlewares",
                if users {
                    &self.fixed.middlewares[..]
                } else {
                    no_users
                },
                |f: &Fragment| &f.middlewares,
            ),
            ("services", &self.fixed.services[..], |f: &Fragment| {
                &f.services
            }),
        ] {
            let mut first = true;
            let parts = fixed
                .iter()
                .chain(self.users.values().map(pick))
                .filter(|part| !part.is_empty());
            for part in parts {
                if first {
                    if sections > 0 {
                        out.push(',');
                    }
                    out.push('"');
                    out.push_str(name);
                    out.push_str("\":{");
                    sections += 1;
                    first = false;
                } else {
                    out.push(',');
                }
                out.push_str(part);
            }
            if !first {
                out.push('}');
            }
        }
        out.push_str("}}");
        Bytes::from(out)
    }
}

fn fixed(config: &Config) -> Fixed {
    let mut routers = Vec::new();
    let entry_points = json!(config.traefik.entry_points);
    let own_pages = "PathPrefix(`/_spawngate/`) || Path(`/_spawngate`)";
    match &config.apps {
        None => {
            routers.push(entry(
                "spawngate",
                &with_tls(
                    config,
                    json!({
                        "rule": own_pages,
                        "entryPoints": entry_points,
                        "service": SELF_SERVICE,
                    }),
                ),
            ));
            // Unknown slugs land here (priority 1, below every user router) and get
            // the same answer as somebody else's slug.
            routers.push(entry(
                "spawngate-unknown-users",
                &with_tls(
                    config,
                    json!({
                        "rule": "PathPrefix(`/u-`)",
                        "priority": 1,
                        "entryPoints": entry_points,
                        "service": SELF_SERVICE,
                    }),
                ),
            ));
        }
        Some(apps) => {
            // Sign-in pages and APIs only on the login host: never on an app host,
            // where they would share an origin with user code.
            routers.push(entry(
                "spawngate",
                &with_tls(
                    config,
                    json!({
                        "rule": format!("Host(`{}`) && ({own_pages})", config.public_url.host),
                        "entryPoints": entry_points,
                        "service": SELF_SERVICE,
                    }),
                ),
            ));
            let app_hosts = format!(
                "HostRegexp(`^[0-9a-f]{{{}}}\\.{}$`)",
                crate::ids::Slug::LEN,
                apps.domain.replace('.', "\\.")
            );
            // On app hosts spawngate serves only the hand-off, its pages'
            // assets and the start-up page's progress and status, above the
            // user's app.
            routers.push(entry(
                "spawngate-handoff",
                &with_tls(
                    config,
                    json!({
                        "rule": format!("{app_hosts} && (Path(`/_spawngate/handoff`) || PathPrefix(`/_spawngate/assets/`) || Path(`/_spawngate/api/me/progress`) || Path(`/_spawngate/api/me/environment`))"),
                        "priority": 100_000,
                        "entryPoints": entry_points,
                        "service": SELF_SERVICE,
                    }),
                ),
            ));
            // App hosts without a user router: the same answer as another's slug.
            routers.push(entry(
                "spawngate-unknown-users",
                &with_tls(
                    config,
                    json!({
                        "rule": app_hosts,
                        "priority": 1,
                        "entryPoints": entry_points,
                        "service": SELF_SERVICE,
                    }),
                ),
            ));
        }
    }
    let services = vec![entry(
        SELF_SERVICE,
        &json!({ "loadBalancer": { "servers": [ { "url": config.internal_url } ], "passHostHeader": true } }),
    )];

    let mut middlewares = Vec::new();
    // The page authenticates Traefik's call by the container secret; without it
    // spawngate could not tell a vanished container from an app's own 502.
    if config.docker.inject_secret {
        // A container that goes away while answering (killed, crashed) gives
        // Traefik a reset and the client a bare 502: ask spawngate for the answer
        // instead, as a 503 (its waiting page, or "the app answered 502").
        middlewares.push(entry(
            APP_GONE,
            &json!({ "errors": {
                "status": ["502"],
                "statusRewrites": { "502": 503 },
                "service": SELF_SERVICE,
                "query": "/_spawngate/app-gone",
            }}),
        ));
    }
    if config.apps.is_none() {
        // Every app shares one origin in path mode. `Service-Worker-Allowed: /`
        // would let an app register a service worker over the whole site,
        // spawngate's pages and other users' apps included; without the header a
        // worker's scope stays under the app's own `/u-<slug>/` path.
        middlewares.push(entry(
            APP_HEADERS,
            &json!({ "headers": { "customResponseHeaders": { "Service-Worker-Allowed": "" } } }),
        ));
        // One strip for every user: a user router matches only `/u-<slug>` and
        // `/u-<slug>/…`, so the anchored pattern removes exactly that router's
        // prefix. Which user's check runs and which container gets the request
        // is bound by the router (its forwardAuth address and service), never by
        // this middleware.
        middlewares.push(entry(
            STRIP,
            &json!({ "stripPrefixRegex": { "regex": [
                format!("^/u-[0-9a-f]{{{}}}", crate::ids::Slug::LEN)
            ] } }),
        ));
    }
    Fixed {
        routers,
        services,
        middlewares,
    }
}

/// A user's fragment: one router set per environment.
fn render_user(config: &Config, runtime: &dyn Runtime, user: &Arc<User>) -> Fragment {
    let mut fragment = Fragment {
        routers: String::new(),
        middlewares: String::new(),
        services: String::new(),
    };
    for env in Env::all_of(user) {
        let (router, middleware, service) = render_environment(config, runtime, &env);
        for (part, add) in [
            (&mut fragment.routers, router),
            (&mut fragment.middlewares, middleware),
            (&mut fragment.services, service),
        ] {
            if !part.is_empty() {
                part.push(',');
            }
            part.push_str(&add);
        }
    }
    // Kept for the user's lifetime: no growth slack (tens of MiB at 50,000 users).
    fragment.routers.shrink_to_fit();
    fragment.middlewares.shrink_to_fit();
    fragment.services.shrink_to_fit();
    fragment
}

/// One environment's router, forwardAuth middleware and service, as JSON text.
fn render_environment(
    config: &Config,
    runtime: &dyn Runtime,
    env: &Env,
) -> (String, String, String) {
    let slug = env.slug();
    let profile = config.profiles.resolve(env.profile());
    let segment = slug.segment();
    let prefix = slug.base_path();
    let auth = format!("auth-{segment}");
    let mut chain: Vec<&str> = Vec::with_capacity(4);
    if config.docker.inject_secret {
        chain.push(APP_GONE);
    }
    chain.push(&auth);
    let entry_points = &config.traefik.entry_points;
    let router = match &config.apps {
        // Its own origin: no prefix to strip.
        Some(apps) => json!({
            "rule": format!("Host(`{}`)", apps.host(slug)),
            "entryPoints": entry_points,
            "middlewares": chain,
            "service": segment,
        }),
        None => {
            chain.push(APP_HEADERS);
            // Apps told their base path get it unchanged.
            if profile.strip_prefix {
                chain.push(STRIP);
            }
            json!({
                // `PathPrefix(/u-ab)` alone would also match `/u-abc`.
                "rule": format!("Path(`{prefix}`) || PathPrefix(`{prefix}/`)"),
                "entryPoints": entry_points,
                "middlewares": chain,
                "service": segment,
            })
        }
    };
    let router = entry(&segment, &with_tls(config, router));
    let middleware = entry(
        &auth,
        &json!({ "forwardAuth": {
            // The slug is bound here, never read from client-controlled headers.
            "address": format!("{}/auth/{segment}", config.internal_url),
            "trustForwardHeader": false,
            "preserveLocationHeader": true,
            "authResponseHeaders": AUTH_RESPONSE_HEADERS,
            // Look-alike names (`X_Spawngate_User`…) are deleted from the request too.
            "authResponseHeadersRegex": crate::headers::AUTH_RESPONSE_HEADERS_REGEX,
        }}),
    );
    let url = runtime.address(&EnvId::User(slug.clone()), env.host_port(), profile.port);
    // passHostHeader is Traefik's default (true).
    let service = entry(
        &segment,
        &json!({ "loadBalancer": { "servers": [ { "url": url } ] } }),
    );
    (router, middleware, service)
}

/// Keeps the rendered document current: on each directory change, re-renders the
/// users that changed and concatenates the document anew.
pub struct Provider {
    rendered: watch::Receiver<Bytes>,
}

impl Provider {
    pub fn start(
        config: Arc<Config>,
        mut directory: watch::Receiver<Arc<Directory>>,
        runtime: Arc<dyn Runtime>,
        metrics: Arc<Metrics>,
    ) -> Provider {
        let mut renderer = Renderer::new(&config);
        let mut render_now = move |directory: &Directory| {
            let began = std::time::Instant::now();
            renderer.update(&config, directory, runtime.as_ref());
            let bytes = renderer.document();
            let took = began.elapsed();
            metrics.provider_rendered(bytes.len(), took);
            (bytes, took)
        };
        let (first, _) = render_now(&directory.borrow_and_update().clone());
        let (tx, rx) = watch::channel(first);
        tokio::spawn(async move {
            // Ends when the store (sender) is dropped.
            while directory.changed().await.is_ok() {
                // A clone of the `Arc`: the watch's lock is not held while rendering.
                let current = directory.borrow_and_update().clone();
                let (doc, took) = render_now(&current);
                tx.send_replace(doc);
                // A burst of changes (a sign-up wave) is taken in batches: the
                // document is copied whole each time (milliseconds at tens of
                // thousands of users), Traefik reads it once a poll interval.
                let pause = (took * 4).min(std::time::Duration::from_millis(250));
                tokio::time::sleep(pause).await;
            }
        });
        Provider { rendered: rx }
    }

    /// The current document (a cheap `Bytes` clone).
    pub fn current(&self) -> Bytes {
        self.rendered.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn render(config: &Config, directory: &Directory) -> Value {
        super::render(config, directory, runtime(config).as_ref())
    }

    /// The configured runtime: it connects on first use, and rendering never does.
    fn runtime(config: &Config) -> Arc<dyn Runtime> {
        crate::runtime::connect(config).unwrap()
    }

    #[tokio::test]
    async fn renders_isolated_routes_per_user() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources("[traefik]\ncert_resolver = \"le\"", Vec::new()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = store
            .create_user("alice", None, Some((31000, 31999)))
            .await
            .unwrap();
        let doc = render(&config, &store.snapshot());
        let http = &doc["http"];
        let seg = alice.slug.segment();

        let router = &http["routers"][&seg];
        assert_eq!(
            router["rule"],
            format!("Path(`/u-{0}`) || PathPrefix(`/u-{0}/`)", alice.slug)
        );
        assert_eq!(
            router["middlewares"],
            json!([
                "spawngate-app-gone",
                format!("auth-{seg}"),
                "spawngate-app-headers",
                "spawngate-strip"
            ])
        );
        assert_eq!(
            http["middlewares"]["spawngate-app-headers"]["headers"]["customResponseHeaders"]["Service-Worker-Allowed"],
            ""
        );
        assert_eq!(
            http["middlewares"]["spawngate-app-gone"]["errors"]["statusRewrites"]["502"],
            503
        );
        assert_eq!(router["tls"]["certResolver"], "le");

        let fa = &http["middlewares"][format!("auth-{seg}")]["forwardAuth"];
        assert_eq!(fa["address"], format!("http://127.0.0.1:9090/auth/{seg}"));
        assert_eq!(fa["trustForwardHeader"], false);
        assert_eq!(fa["preserveLocationHeader"], true);
        assert_eq!(
            fa["authResponseHeaders"],
            json!([
                "X-Spawngate-User",
                "X-Spawngate-Slug",
                "X-Spawngate-Secret",
                "X-Spawngate-Access",
                "Cookie",
                "Authorization"
            ])
        );
        assert_eq!(
            fa["authResponseHeadersRegex"],
            crate::headers::AUTH_RESPONSE_HEADERS_REGEX
        );
        assert_eq!(
            http["middlewares"]["spawngate-strip"]["stripPrefixRegex"]["regex"],
            json!(["^/u-[0-9a-f]{12}"])
        );
        assert_eq!(
            http["services"][&seg]["loadBalancer"]["servers"][0]["url"],
            format!("http://127.0.0.1:{}", alice.host_port.unwrap())
        );
        assert_eq!(http["routers"]["spawngate-unknown-users"]["priority"], 1);
    }

    #[tokio::test]
    async fn network_mode_uses_container_dns_names() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources("[docker]\nmode = \"network\"", Vec::new()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bob = store.create_user("bob", None, None).await.unwrap();
        let doc = render(&config, &store.snapshot());
        assert_eq!(
            doc["http"]["services"][bob.slug.segment()]["loadBalancer"]["servers"][0]["url"],
            format!("http://spawngate-u-{}:8080", bob.slug)
        );
    }

    #[tokio::test]
    async fn empty_sections_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources("", Vec::new()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        let doc = render(&config, &store.snapshot());
        assert!(doc["http"].get("middlewares").is_none());
        assert!(doc["http"]["routers"]["spawngate"].is_object());
    }

    #[tokio::test]
    async fn re_renders_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let config = Arc::new(Config::from_sources("", Vec::new()).unwrap());
        let store = Store::open(dir.path()).unwrap();
        let provider = Provider::start(
            config.clone(),
            store.directory(),
            runtime(&config),
            Default::default(),
        );
        let empty = provider.current();
        assert_eq!(
            provider.current().as_ptr(),
            empty.as_ptr(),
            "served from cache"
        );
        store.create_user("carol", None, None).await.unwrap();
        for _ in 0..1000 {
            if provider.current() != empty {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(String::from_utf8_lossy(&provider.current()).contains("auth-u-"));
    }

    #[tokio::test]
    async fn subdomain_mode_routes_by_host_without_stripping() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources(
            "[server]\npublic_url = \"https://login.example.com\"\napps_domain = \"apps.example.com\"",
            Vec::new(),
        )
        .unwrap();
        let store = Store::open(dir.path()).unwrap();
        let alice = store.create_user("alice", None, None).await.unwrap();
        let doc = render(&config, &store.snapshot());
        let http = &doc["http"];
        let seg = alice.slug.segment();
        let router = &http["routers"][&seg];
        assert_eq!(
            router["rule"],
            format!("Host(`{}.apps.example.com`)", alice.slug)
        );
        assert_eq!(
            router["middlewares"],
            json!(["spawngate-app-gone", format!("auth-{seg}")])
        );
        assert!(http["middlewares"].get("spawngate-strip").is_none());
        assert_eq!(
            http["routers"]["spawngate"]["rule"],
            "Host(`login.example.com`) && (PathPrefix(`/_spawngate/`) || Path(`/_spawngate`))"
        );
        assert_eq!(
            http["routers"]["spawngate-handoff"]["rule"],
            "HostRegexp(`^[0-9a-f]{12}\\.apps\\.example\\.com$`) && (Path(`/_spawngate/handoff`) || PathPrefix(`/_spawngate/assets/`) || Path(`/_spawngate/api/me/progress`) || Path(`/_spawngate/api/me/environment`))"
        );
    }

    /// Fragments kept across creates, changes and deletes give the document a
    /// render from scratch gives.
    #[tokio::test]
    async fn incremental_rendering_matches_a_full_render() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_sources("", Vec::new()).unwrap();
        let runtime = runtime(&config);
        let store = Store::open(dir.path()).unwrap();
        let mut kept = Renderer::new(&config);
        let full = |store: &Store| render(&config, &store.snapshot());
        let kept_doc = |kept: &mut Renderer, store: &Store| {
            kept.update(&config, &store.snapshot(), runtime.as_ref());
            serde_json::from_slice::<Value>(&kept.document()).unwrap()
        };
        assert_eq!(kept_doc(&mut kept, &store), full(&store));
        let mut users = Vec::new();
        for i in 0..20 {
            users.push(
                store
                    .create_user(&format!("r{i}"), None, Some((32000, 32999)))
                    .await
                    .unwrap(),
            );
            if i % 7 == 0 {
                assert_eq!(kept_doc(&mut kept, &store), full(&store));
            }
        }
        for user in users.iter().step_by(3) {
            store.delete_user(user, false).await.unwrap();
        }
        store
            .modify_user(&users[1].id, |u| {
                u.host_port = Some(32999);
                Ok::<_, ()>(())
            })
            .await
            .unwrap()
            .unwrap();
        let doc = kept_doc(&mut kept, &store);
        assert_eq!(doc, full(&store));
        assert_eq!(
            doc["http"]["services"][users[1].slug.segment()]["loadBalancer"]["servers"][0]["url"],
            "http://127.0.0.1:32999"
        );
        assert!(
            doc["http"]["routers"]
                .get(users[0].slug.segment())
                .is_none()
        );
        // Every user gone: the shared middlewares go too.
        for user in users
            .iter()
            .skip(1)
            .filter(|u| store.snapshot().by_id(&u.id).is_some())
        {
            store.delete_user(user, false).await.unwrap();
        }
        let doc = kept_doc(&mut kept, &store);
        assert_eq!(doc, full(&store));
        assert!(doc["http"].get("middlewares").is_none());
    }
}
