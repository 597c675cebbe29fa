//! What people see: the user dashboard, the admin page (admin users with their own
//! session), their JSON endpoints, and the error pages, in a real browser and over
//! HTTP.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, COOKIE, LOCATION};
use serde_json::{Value, json};

use crate::browser::Browser;
use crate::cli::{spawngate, stderr, stdout};
use crate::harness::{Api, Harness, Options, login_with_link, poll};

/// Creates an admin user and waits until Traefik routes their slug.
async fn admin_user(h: &Harness, name: &str) -> spawngate::accounts::UserView {
    let user = h
        .app
        .accounts
        .add_user_with("test", name, None, true)
        .await
        .unwrap();
    h.wait_router(&format!("u-{}", user.slug)).await;
    user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_uses_the_dashboard_and_an_admin_disables_a_user_from_the_admin_page() {
    // One running environment at most: a second start shows the capacity page.
    let h = Harness::start(Options::toml("[limits]\nmax_running = 1")).await;
    admin_user(&h, "alice").await;
    h.user("bob").await;
    let carol = h.user("carol").await;
    let bob = h.login("bob").await;
    assert_eq!(h.me(&bob).await["name"], "bob");

    let mut b = Browser::start().await;
    // Signs in through a link that continues to the dashboard.
    let link = h.app.accounts.login_link("alice").await.unwrap().url;
    b.navigate(&format!("{link}&next=%2F_spawngate%2F")).await;
    b.wait_for(
        20,
        "the confirm page",
        "document.querySelector('form button[type=submit]') !== null",
    )
    .await;
    b.screenshot("login.png").await;
    b.click("form button[type=submit]").await;
    b.wait_for(
        30,
        "the dashboard",
        "location.pathname === '/_spawngate/' && document.querySelector('#environment') !== null",
    )
    .await;
    let label = "document.querySelector('[data-field=label]').textContent";
    assert_eq!(b.text(label).await, "not created");

    // Starts the environment from the dashboard; the panel follows by itself.
    b.click("form[action='/_spawngate/me/environment/start'] button")
        .await;
    b.wait_for(
        60,
        "the environment to run",
        &format!("{label} === 'running' && document.querySelector('[data-field=memory]').textContent.includes('MiB')"),
    )
    .await;
    assert!(
        b.text("document.querySelector('[data-field=cull]').textContent")
            .await
            .starts_with("stops in"),
        "the idle stop is announced"
    );
    b.screenshot("dashboard.png").await;
    b.color_scheme("dark").await;
    b.screenshot("dashboard-dark.png").await;
    b.color_scheme("light").await;

    // Stops it, then starts it again.
    b.click("form[action='/_spawngate/me/environment/stop'] button")
        .await;
    b.wait_for(
        40,
        "the stop",
        &format!("location.search === '?done=stopped' && {label} === 'stopped'"),
    )
    .await;
    assert!(
        b.eval("document.querySelector('form[action$=\"/environment/stop\"] button').disabled")
            .await
            == json!(true),
        "a stopped environment cannot be stopped"
    );
    b.click("form[action='/_spawngate/me/environment/start'] button")
        .await;
    b.wait_for(60, "the restart", &format!("{label} === 'running'"))
        .await;

    // Creates a token (shown once), which works until revoked from the dashboard.
    b.eval("document.querySelector('#token-name').value = 'laptop'; true")
        .await;
    b.click("#token-name ~ button").await;
    b.wait_for(
        20,
        "the new token",
        "document.querySelector('#new-token') !== null",
    )
    .await;
    let token = b
        .text("document.querySelector('#new-token').textContent")
        .await;
    assert!(token.starts_with("spawngate_"), "{token}");
    let (status, me) = h.api(&token).get("me").await;
    assert_eq!(
        (status, me["name"].as_str()),
        (StatusCode::OK, Some("alice"))
    );
    b.open(&h.url("/_spawngate/"), "/_spawngate/").await;
    assert!(
        b.text("document.querySelector('#tokens').innerText")
            .await
            .contains("laptop")
    );
    b.click("#tokens form[action='/_spawngate/me/tokens/revoke'] button")
        .await;
    b.wait_for(
        20,
        "the revocation",
        "location.search === '?done=token-revoked'",
    )
    .await;
    assert_eq!(h.api(&token).get("me").await.0, StatusCode::UNAUTHORIZED);

    // The admin page: every user; search narrows the table.
    b.click("nav a[href='/_spawngate/admin']").await;
    b.wait_for(
        30,
        "the admin page",
        "location.pathname === '/_spawngate/admin' && document.querySelector('#users') !== null",
    )
    .await;
    let rows = "document.querySelectorAll('#users tbody tr:not([hidden])').length";
    assert_eq!(b.eval(rows).await, json!(3));
    let search = |q: &str| {
        format!(
            "(() => {{ const s = document.querySelector('#user-search'); s.value = '{q}'; s.dispatchEvent(new Event('input')); return true; }})()"
        )
    };
    b.eval(&search("bo")).await;
    assert_eq!(b.eval(rows).await, json!(1));
    b.eval(&search("")).await;
    assert_eq!(b.eval(rows).await, json!(3));
    b.screenshot("admin.png").await;

    // alice's environment holds the one place: starting carol's is refused.
    b.click("tr:has(th[data-value='carol']) form[action='/_spawngate/admin/users/start'] button")
        .await;
    b.wait_for(
        30,
        "the capacity page",
        "document.body.textContent.includes('Error 503')",
    )
    .await;
    let text = b.text("document.body.textContent").await;
    assert!(text.contains("at capacity"), "{text}");
    b.screenshot("error-503-capacity.png").await;
    b.open(&h.url("/_spawngate/admin"), "/_spawngate/admin")
        .await;

    // Disables bob: his session ends at once.
    b.click("tr:has(th[data-value='bob']) form[action='/_spawngate/admin/users/disable'] button")
        .await;
    b.wait_for(20, "the disable", "location.search === '?done=disabled'")
        .await;
    let after = h.get_with_cookie(h.url("/_spawngate/api/me"), &bob).await;
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "bob's session ended"
    );
    assert!(
        b.text("document.querySelector('tr:has(th[data-value=\"bob\"])').innerText")
            .await
            .contains("disabled")
    );
    // The audit log names the admin who did it.
    b.open(
        &h.url("/_spawngate/admin?action=user.disable"),
        "/_spawngate/admin",
    )
    .await;
    let audit = b.text("document.querySelector('#audit').innerText").await;
    // The table refreshes itself from the admin API with the admin's session.
    b.wait_for(
        20,
        "the users table to refresh",
        "Number(document.querySelector('#users').dataset.refreshed || 0) >= 1",
    )
    .await;
    assert_eq!(
        b.text(
            "document.querySelector('tr[data-user=\"bob\"] [data-field=state] .state').textContent"
        )
        .await,
        "not created"
    );
    assert!(audit.contains("alice") && audit.contains("bob"), "{audit}");

    // Error pages, in the same look.
    b.open(
        &h.url("/_spawngate/nothing-here"),
        "/_spawngate/nothing-here",
    )
    .await;
    let text = b.text("document.body.textContent").await;
    assert!(text.contains("Error 404"), "{text}");
    b.screenshot("error-404.png").await;
    let theirs = format!("/u-{}/", carol.slug);
    b.open(&h.url(&theirs), &theirs).await;
    let text = b.text("document.body.textContent").await;
    assert!(text.contains("Error 403"), "{text}");
    b.screenshot("error-403.png").await;

    // Signs out from the header.
    b.open(&h.url("/_spawngate/"), "/_spawngate/").await;
    b.click("form.signout button").await;
    b.wait_for(
        20,
        "the sign-in page",
        "location.pathname === '/_spawngate/login'",
    )
    .await;
    b.open(&h.url("/_spawngate/"), "/_spawngate/login").await;
    let cookies = b.cookies().await;
    assert!(
        !cookies
            .iter()
            .any(|c| c["name"] == h.cookie_name() && c["value"] != ""),
        "{cookies:?}"
    );
}

/// A signed-in client against spawngate directly: its cookie and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
}

async fn sign_in(h: &Harness, name: &str) -> Session {
    let link = h.app.accounts.login_link(name).await.unwrap().url;
    let cookie = login_with_link(&h.client, &h.direct, &link, h.cookie_name()).await;
    let me: Value = h
        .client
        .get(format!("{}/_spawngate/api/me", h.direct))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    Session {
        cookie,
        csrf: me["csrf"].as_str().unwrap().to_owned(),
    }
}

impl Session {
    /// An admin API call with this session's cookie (and its CSRF header when
    /// `csrf`).
    async fn api(
        &self,
        h: &Harness,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        csrf: bool,
    ) -> (StatusCode, Value) {
        let mut req = h
            .client
            .request(method, format!("{}/_spawngate/api/{path}", h.direct))
            .header(COOKIE, &self.cookie);
        if csrf {
            req = req.header("X-Spawngate-CSRF", &self.csrf);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn page(&self, h: &Harness, path: &str) -> reqwest::Response {
        h.client
            .get(format!("{}{path}", h.direct))
            .header(COOKIE, &self.cookie)
            .header(ACCEPT, "text/html")
            .send()
            .await
            .unwrap()
    }

    /// Posts one of the pages' forms (with this session's CSRF token unless
    /// `csrf` is false).
    async fn form(&self, h: &Harness, path: &str, csrf: bool) -> reqwest::Response {
        let token = if csrf { self.csrf.as_str() } else { "forged" };
        h.client
            .post(format!("{}{path}", h.direct))
            .header(COOKIE, &self.cookie)
            .form(&[("csrf", token)])
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sessions_use_the_admin_api_with_csrf_and_only_admins_do() {
    use reqwest::Method;
    let h = Harness::start(Options {
        with_traefik: false,
        ..Default::default()
    })
    .await;
    admin_user(&h, "alice").await;
    h.user("bob").await;
    h.user("carol").await;
    let alice = sign_in(&h, "alice").await;
    let bob = sign_in(&h, "bob").await;
    let carol = sign_in(&h, "carol").await;
    let token = Api::new(&h.client, &h.direct, admin_token(&h).await);

    // An admin's session reads the admin API...
    let (status, users) = alice.api(&h, Method::GET, "users", None, false).await;
    assert_eq!(status, StatusCode::OK, "{users}");
    assert_eq!(users["users"].as_array().unwrap().len(), 3);
    // ...but changes nothing without the session's CSRF header.
    let (status, body) = alice
        .api(&h, Method::POST, "users/bob/disable", None, false)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(token.get_ok("users/bob").await["disabled"], false);
    // Users who are not admins get nothing, CSRF or not; no session is 401.
    for csrf in [false, true] {
        let (status, _) = bob.api(&h, Method::GET, "users", None, csrf).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = bob
            .api(&h, Method::POST, "users/carol/disable", None, csrf)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _) =
        crate::harness::get_json(&h.client, &format!("{}/_spawngate/api/users", h.direct)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // With it, the change is made and audited under the admin's name.
    let (status, body) = alice
        .api(&h, Method::POST, "users/bob/disable", None, true)
        .await;
    assert_eq!(
        (status, &body["disabled"]),
        (StatusCode::OK, &json!(true)),
        "{body}"
    );
    let audit = token.get_ok("audit?limit=5").await;
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "user.disable")
        .cloned()
        .unwrap_or_else(|| panic!("no user.disable entry: {audit}"));
    assert_eq!(
        (entry["actor"].as_str(), entry["target"].as_str()),
        (Some("alice"), Some("bob"))
    );

    // The admin flag through the API (an admin token keeps working for it).
    let (status, body) = carol.api(&h, Method::GET, "users", None, false).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = token
        .call(Method::PATCH, "users/carol", Some(json!({ "admin": true })))
        .await;
    assert_eq!(
        (status, &body["admin"]),
        (StatusCode::OK, &json!(true)),
        "{body}"
    );
    let (status, _) = carol.api(&h, Method::GET, "users", None, false).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "carol's own session is an admin's now"
    );
    assert_eq!(
        carol.page(&h, "/_spawngate/admin").await.status(),
        StatusCode::OK
    );
    let (status, body) = alice
        .api(
            &h,
            Method::PATCH,
            "users/carol",
            Some(json!({ "admin": false })),
            true,
        )
        .await;
    assert_eq!(
        (status, &body["admin"]),
        (StatusCode::OK, &json!(false)),
        "{body}"
    );
    let (status, _) = carol.api(&h, Method::GET, "users", None, false).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "taken away on the next request"
    );
    let (status, body) = token
        .call(
            Method::PATCH,
            "users/carol",
            Some(json!({ "role": "root" })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = token
        .post("users", Some(json!({ "name": "dave", "admin": true })))
        .await;
    assert_eq!(
        (status, &body["admin"]),
        (StatusCode::CREATED, &json!(true)),
        "{body}"
    );

    // What the admin page's script refreshes the table with.
    let (status, overview) = alice.api(&h, Method::GET, "overview", None, false).await;
    assert_eq!(status, StatusCode::OK, "{overview}");
    let users = overview["users"].as_array().unwrap();
    assert_eq!(users.len(), 4, "{overview}");
    let dave = users.iter().find(|u| u["user"] == "dave").unwrap();
    assert_eq!(dave["environment"]["state"], "not_exists");
    assert_eq!(dave["text"]["label"], "not created");
    let (status, _) = bob.api(&h, Method::GET, "overview", None, false).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "bob is disabled: no session at all"
    );

    // The admin page: admins only; without a session, sign in first.
    let page = carol.page(&h, "/_spawngate/admin").await;
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    let text = page.text().await.unwrap();
    assert!(
        text.contains("Error 403") && text.contains("for administrators"),
        "{text}"
    );
    let anonymous = h
        .client
        .get(format!("{}/_spawngate/admin", h.direct))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::FOUND);
    assert_eq!(
        anonymous.headers()[LOCATION],
        "/_spawngate/login?next=%2F_spawngate%2Fadmin"
    );
    let page = alice.page(&h, "/_spawngate/admin").await;
    assert_eq!(page.status(), StatusCode::OK);
    let text = page.text().await.unwrap();
    assert!(
        text.contains("dave") && text.contains("Audit log"),
        "{text}"
    );
    // Its forms need the CSRF token; a non-admin's post is refused.
    let enable = |session: &Session, csrf: &str| {
        h.client
            .post(format!("{}/_spawngate/admin/users/enable", h.direct))
            .header(COOKIE, session.cookie.clone())
            .form(&[("csrf", csrf), ("user", "bob")])
            .send()
    };
    let forged = enable(&alice, "forged").await.unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let not_admin = enable(&carol, &carol.csrf).await.unwrap();
    assert_eq!(not_admin.status(), StatusCode::FORBIDDEN);
    assert_eq!(token.get_ok("users/bob").await["disabled"], true);
    let done = enable(&alice, &alice.csrf).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(done.headers()[LOCATION], "/_spawngate/admin?done=enabled");
    assert_eq!(token.get_ok("users/bob").await["disabled"], false);

    // Sharing from the dashboard (the owner) and from the admin page (an admin).
    let share = |session: &Session, path: &str, fields: &[(&str, &str)]| {
        let mut form = vec![("csrf", session.csrf.clone())];
        form.extend(fields.iter().map(|(k, v)| (*k, v.to_string())));
        h.client
            .post(format!("{}{path}", h.direct))
            .header(COOKIE, session.cookie.clone())
            .form(&form)
            .send()
    };
    let shared = share(
        &carol,
        "/_spawngate/me/shares",
        &[("user", "alice"), ("read_only", "1")],
    )
    .await
    .unwrap();
    assert_eq!(shared.headers()[LOCATION], "/_spawngate/?done=shared");
    let home = alice.page(&h, "/_spawngate/").await.text().await.unwrap();
    assert!(
        home.contains("carol's environment") && home.contains("(read-only)"),
        "{home}"
    );
    let unshared = share(&carol, "/_spawngate/me/shares/revoke", &[("user", "alice")])
        .await
        .unwrap();
    assert_eq!(unshared.headers()[LOCATION], "/_spawngate/?done=unshared");
    assert_eq!(token.get_ok("users/carol").await["shared_with"], json!([]));
    let granted = share(
        &alice,
        "/_spawngate/admin/shares",
        &[("owner", "carol"), ("user", "dave")],
    )
    .await
    .unwrap();
    assert_eq!(granted.headers()[LOCATION], "/_spawngate/admin?done=shared");
    let carol_now = token.get_ok("users/carol").await;
    assert_eq!(carol_now["shared_with"][0]["user"], "dave", "{carol_now}");
    assert_eq!(carol_now["shared_with"][0]["read_only"], false);

    // Unknown pages are a page for browsers, JSON for scripts.
    let missing = alice.page(&h, "/_spawngate/nothing").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.text().await.unwrap().contains("Error 404"));
    let (status, body) =
        crate::harness::get_json(&h.client, &format!("{}/_spawngate/nothing", h.direct)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
}

/// An admin token, minted over the control socket as `spawngate token` does.
async fn admin_token(h: &Harness) -> String {
    let socket = spawngate::server::control_socket_path(h.data_dir.path());
    let (_, body) = spawngate::control::request(
        &socket,
        reqwest::Method::POST,
        "/_spawngate/api/tokens",
        Some(&json!({ "name": "ops" })),
    )
    .await
    .unwrap()
    .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_json_follows_the_environment_started_and_stopped_from_the_page() {
    let h = Harness::start(Options::default()).await;
    h.user("alice").await;
    let alice = sign_in(&h, "alice").await;
    let view = |s: &Session| {
        let (client, url, cookie) = (
            h.client.clone(),
            format!("{}/_spawngate/api/me/dashboard", h.direct),
            s.cookie.clone(),
        );
        async move {
            let resp = client.get(url).header(COOKIE, cookie).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        }
    };
    let before = view(&alice).await;
    assert_eq!(before["environment"]["state"], "not_exists", "{before}");
    assert_eq!(before["text"]["label"], "not created");
    assert_eq!(before["logs"], json!([]));
    // A personal token reads it too; without credentials, 401.
    let (status, _) = crate::harness::get_json(
        &h.client,
        &format!("{}/_spawngate/api/me/dashboard", h.direct),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The page's start form: a forged token changes nothing.
    let forged = alice
        .form(&h, "/_spawngate/me/environment/start", false)
        .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let started = alice
        .form(&h, "/_spawngate/me/environment/start", true)
        .await;
    assert_eq!(started.status(), StatusCode::SEE_OTHER);
    let location = started.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(
        location == "/_spawngate/?done=started" || location == "/_spawngate/?done=starting",
        "{location}"
    );
    let running = poll(60, "the environment to run with stats", || async {
        let v = view(&alice).await;
        (v["environment"]["state"] == "running"
            && v["environment"]["usage"]["memory_bytes"].as_u64() > Some(0))
        .then_some(v)
    })
    .await;
    let env = &running["environment"];
    assert!(env["usage"]["cpu_percent"].is_number(), "{running}");
    assert!(
        env["usage"]["memory_limit_bytes"].as_u64() > Some(0),
        "{running}"
    );
    assert!(
        env["since"].is_string() && env["last_activity"].is_string(),
        "{running}"
    );
    assert_eq!(
        env["cull"]["action"], "stop",
        "the default idle stop: {running}"
    );
    assert!(
        running["text"]["cull"]
            .as_str()
            .unwrap()
            .starts_with("stops in")
    );
    assert!(
        running["text"]["since"]
            .as_str()
            .unwrap()
            .starts_with("since")
    );
    assert!(running["text"]["memory"].as_str().unwrap().contains(" of "));

    let stopped = alice
        .form(&h, "/_spawngate/me/environment/stop", true)
        .await;
    assert_eq!(stopped.headers()[LOCATION], "/_spawngate/?done=stopped");
    let after = view(&alice).await;
    assert_eq!(after["environment"]["state"], "stopped", "{after}");
    assert!(after["environment"]["usage"].is_null(), "{after}");
    let audit: Vec<String> = h
        .app
        .store
        .audit_entries(10)
        .unwrap()
        .into_iter()
        .filter(|e| e.actor == "alice")
        .map(|e| e.action)
        .collect();
    assert!(
        audit.contains(&"container.start".to_owned())
            && audit.contains(&"container.stop".to_owned()),
        "{audit:?}"
    );

    // The sessions list shows this one; revoking another session by its handle.
    let other = sign_in(&h, "alice").await;
    let sessions: Value = h
        .client
        .get(format!("{}/_spawngate/api/me/sessions", h.direct))
        .header(COOKIE, &alice.cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = sessions["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{sessions}");
    let theirs = list.iter().find(|s| s["current"] == false).unwrap();
    let revoked = h
        .client
        .post(format!("{}/_spawngate/me/sessions/revoke", h.direct))
        .header(COOKIE, &alice.cookie)
        .form(&[
            ("csrf", alice.csrf.as_str()),
            ("id", theirs["id"].as_str().unwrap()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        revoked.headers()[LOCATION],
        "/_spawngate/?done=session-revoked"
    );
    let gone = h
        .client
        .get(format!("{}/_spawngate/api/me", h.direct))
        .header(COOKIE, &other.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn the_admin_flag_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let add = spawngate(dir.path(), &["user", "add", "root", "--admin"], &[]);
    assert!(add.status.success(), "{}", stderr(&add));
    assert!(
        stdout(&add).starts_with("created admin user root: "),
        "{}",
        stdout(&add)
    );
    let admin_of = |name: &str| {
        let list = spawngate(dir.path(), &["user", "list", "--json"], &[]);
        let users: Value = serde_json::from_slice(&list.stdout).unwrap();
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .map(|u| u["admin"].clone())
            .unwrap()
    };
    assert_eq!(admin_of("root"), json!(true));
    assert!(
        spawngate(dir.path(), &["user", "add", "ann"], &[])
            .status
            .success()
    );
    assert_eq!(admin_of("ann"), json!(false));

    let set = spawngate(dir.path(), &["user", "set", "ann", "--admin", "true"], &[]);
    assert!(set.status.success(), "{}", stderr(&set));
    assert_eq!(stdout(&set).trim(), "user ann: admin yes, enabled");
    assert_eq!(admin_of("ann"), json!(true));
    let unset = spawngate(
        dir.path(),
        &["user", "set", "root", "--admin", "false"],
        &[],
    );
    assert!(unset.status.success(), "{}", stderr(&unset));
    assert_eq!(admin_of("root"), json!(false));
    let table = stdout(&spawngate(dir.path(), &["user", "list"], &[]));
    assert!(table.contains("ADMIN"), "{table}");

    let nothing = spawngate(dir.path(), &["user", "set", "ann"], &[]);
    assert!(!nothing.status.success());
    assert!(
        stderr(&nothing).contains("nothing to change"),
        "{}",
        stderr(&nothing)
    );
    let bad = spawngate(dir.path(), &["user", "set", "ann", "--admin", "maybe"], &[]);
    assert!(!bad.status.success());
    let unknown = spawngate(dir.path(), &["user", "set", "zed", "--admin", "true"], &[]);
    assert!(
        stderr(&unknown).contains("user not found"),
        "{}",
        stderr(&unknown)
    );
}
