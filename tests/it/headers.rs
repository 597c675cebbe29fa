//! Look-alikes of spawngate's identity headers (`X_Spawngate_User`, `x.spawngate.access`…)
//! never reach a user's container, through real Traefik, for plain requests and
//! WebSocket upgrades. The example app folds header names the CGI way
//! (`cgi_env` in `/whoami.json`, first message of `/ws?env=1`), as PHP, WSGI or
//! R's httpuv do, so a leak would show as a forged or merged value.

use std::collections::BTreeMap;
use std::process::Command;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{Harness, Options};

/// Every way to write `name` that a CGI-style server reads as `name`: each dash
/// replaced by `_`, `.`, `~` or `!`, one at a time and all together, in mixed case.
fn lookalikes(name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for sep in ["_", ".", "~", "!"] {
        out.push(name.replace('-', sep));
        out.push(name.replace('-', sep).to_ascii_uppercase());
        let first = name.replacen('-', sep, 1);
        out.push(first.to_ascii_lowercase());
        // Only the last dash replaced.
        if let Some(i) = name.rfind('-') {
            out.push(format!("{}{sep}{}", &name[..i], &name[i + 1..]));
        }
    }
    out
}

/// A raw HTTP/1.0 GET through Traefik (header names keep the exact case given; the
/// answer comes unchunked).
async fn raw_get(h: &Harness, path: &str, headers: &[(String, &str)]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", h.web_port))
        .await
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n", h.web_port);
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("Accept: application/json\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The app's CGI-style view of the request, from `/whoami.json` (chunked bodies
/// are cut down to the JSON object).
fn cgi_env_of(body: &str) -> BTreeMap<String, String> {
    let start = body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {body:?}"));
    let end = body.rfind('}').unwrap();
    let doc: serde_json::Value = serde_json::from_str(&body[start..=end]).unwrap();
    serde_json::from_value(doc["cgi_env"].clone()).unwrap()
}

/// Opens `/u-<slug>/ws?env=1` with extra headers: the app's first message, or the
/// HTTP status the upgrade was refused with.
async fn ws_env(
    h: &Harness,
    slug: &str,
    cookie: &str,
    extra: &[(&str, &str)],
) -> Result<BTreeMap<String, String>, u16> {
    let url = format!("{}/u-{slug}/ws?env=1", h.public.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", cookie.parse().unwrap());
    for (name, value) in extra {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, _)) => {
            let first = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let _ = ws.close(None).await;
            Ok(serde_json::from_str(first.to_text().unwrap()).unwrap())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket failed: {e}"),
    }
}

/// The identity the app must see: spawngate's values, nothing merged in.
fn assert_identity(env: &BTreeMap<String, String>, slug: &str) {
    assert_eq!(
        env.get("HTTP_X_SPAWNGATE_USER").map(String::as_str),
        Some("alice"),
        "{env:?}"
    );
    assert_eq!(
        env.get("HTTP_X_SPAWNGATE_SLUG").map(String::as_str),
        Some(slug),
        "{env:?}"
    );
    assert_eq!(
        env.get("HTTP_X_SPAWNGATE_ACCESS").map(String::as_str),
        Some("owner"),
        "{env:?}"
    );
    assert_eq!(
        env.get("HTTP_X_FORWARDED_PREFIX").map(String::as_str),
        Some(format!("/u-{slug}").as_str()),
        "{env:?}"
    );
}

/// `spawngate check` against this harness's Traefik.
fn check_output(h: &Harness) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spawngate"))
        .arg("check")
        .env("SPAWNGATE_SERVER_DATA_DIR", dir.path())
        .env("SPAWNGATE_SERVER_INTERNAL_URL", &h.direct)
        .env("SPAWNGATE_TRAEFIK_API_URL", &h.traefik_api)
        .env("SPAWNGATE_DOCKER_IMAGE", crate::harness::IMAGE)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookalike_identity_headers_never_reach_the_container_without_any_traefik_option() {
    let h = Harness::start(Options::default()).await;
    let alice = h.user("alice").await;
    let slug = alice.slug.clone();
    let cookie = h.login("alice").await;
    let path = format!("/u-{slug}/whoami.json");

    // The app really folds: a harmless look-alike of another header merges, and
    // spawngate's own names arrive with spawngate's values (the exact names a
    // client sends are replaced by Traefik).
    let (status, body) = raw_get(
        &h,
        &path,
        &[
            ("Cookie".into(), &cookie),
            ("X_Probe_Folded".into(), "yes"),
            ("X-Spawngate-User".into(), "mallory"),
            ("X-Spawngate-Access".into(), "owner-forged"),
            // Look-alikes of X-Forwarded-Prefix: Traefik deletes them (the regex
            // spawngate's provider puts in every forwardAuth middleware).
            ("X_Forwarded_Prefix".into(), "/evil"),
            ("x.forwarded.PREFIX".into(), "/evil"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let env = cgi_env_of(&body);
    assert_eq!(
        env.get("HTTP_X_PROBE_FOLDED").map(String::as_str),
        Some("yes")
    );
    assert_identity(&env, &slug);

    // Every look-alike of every identity header: refused before anything runs.
    for real in spawngate::headers::IDENTITY_HEADERS {
        for fake in lookalikes(real) {
            let (status, body) = raw_get(
                &h,
                &path,
                &[("Cookie".into(), &cookie), (fake.clone(), "mallory")],
            )
            .await;
            assert_eq!(status, 400, "{fake}: {body}");
            assert!(body.contains("imitates"), "{fake}: {body}");
        }
    }
    // WebSocket upgrades go through the same check.
    for real in spawngate::headers::IDENTITY_HEADERS {
        for fake in lookalikes(real) {
            assert_eq!(
                ws_env(&h, &slug, &cookie, &[(&fake, "mallory")]).await,
                Err(400),
                "{fake}"
            );
        }
    }
    let env = ws_env(
        &h,
        &slug,
        &cookie,
        &[
            ("x_forwarded_prefix", "/evil"),
            ("x-spawngate-user", "mallory"),
        ],
    )
    .await
    .unwrap();
    assert_identity(&env, &slug);

    // check says what to set in Traefik.
    let report = check_output(&h);
    assert!(
        report.contains("traefik: WARNING: entry point 'web' passes look-alike header names")
            && report.contains("entryPoints.web.http.aliasHeadersStrategy: delete"),
        "{report}"
    );
    assert!(report.contains("spawngate's routes are loaded"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_traefik_option_deletes_lookalikes_and_check_sees_it() {
    let h = Harness::start(Options {
        traefik_args: vec!["--entrypoints.web.http.aliasheadersstrategy=delete".into()],
        ..Options::default()
    })
    .await;
    let alice = h.user("alice").await;
    let slug = alice.slug.clone();
    let cookie = h.login("alice").await;
    let path = format!("/u-{slug}/whoami.json");

    // Traefik drops the look-alikes before routing: the request is served, and the
    // app sees spawngate's identity only.
    let mut headers = vec![("Cookie".to_owned(), cookie.as_str())];
    for real in spawngate::headers::IDENTITY_HEADERS {
        for fake in lookalikes(real) {
            headers.push((fake, "mallory"));
        }
    }
    let (status, body) = raw_get(&h, &path, &headers).await;
    assert_eq!(status, 200, "{body}");
    let env = cgi_env_of(&body);
    assert_identity(&env, &slug);
    assert!(
        !env.values().any(|v| v.contains("mallory")),
        "a forged value reached the app: {env:?}"
    );
    let env = ws_env(&h, &slug, &cookie, &[("x_spawngate_user", "mallory")])
        .await
        .unwrap();
    assert_identity(&env, &slug);

    let report = check_output(&h);
    assert!(
        report.contains("traefik: ok (entry point 'web' has aliasHeadersStrategy delete"),
        "{report}"
    );
}
