//! The few HTML pages spawngate serves (and their JSON twins for API clients).
//! Every interpolated value goes through [`escape`].

use hyper::StatusCode;

use super::{Resp, html, json};
use crate::lifecycle::AppFailure;

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A complete page. `head_extra` is trusted markup (e.g. a refresh meta tag).
pub fn page(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · spawngate</title>{head_extra}
<link rel="stylesheet" href="/_spawngate/assets/style.css"></head>
<body><h1>{title}</h1>
{body}
</body></html>
"#,
        title = escape(title)
    )
}

/// Who is signed in, for the header of spawngate's signed-in pages.
pub struct Nav<'a> {
    pub user: &'a str,
    pub admin: bool,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: &'a str,
    /// Which entry is the current page (`dashboard` or `admin`).
    pub current: &'a str,
}

/// A signed-in page: the header (dashboard, admin for admins, sign out), a wide
/// layout, and `scripts` (names under `/_spawngate/assets/`, loaded deferred).
/// `body` is trusted markup.
pub fn shell(title: &str, nav: &Nav<'_>, body: &str, scripts: &[&str]) -> String {
    let entry = |href: &str, key: &str, label: &str| {
        let current = if nav.current == key {
            r#" aria-current="page""#
        } else {
            ""
        };
        format!(r#"<a href="{href}"{current}>{label}</a>"#)
    };
    let admin = if nav.admin {
        entry("/_spawngate/admin", "admin", "Admin")
    } else {
        String::new()
    };
    let scripts: String = scripts
        .iter()
        .map(|s| {
            format!(
                r#"<script src="/_spawngate/assets/{}" defer></script>"#,
                escape(s)
            )
        })
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · spawngate</title>
<link rel="stylesheet" href="/_spawngate/assets/style.css">{scripts}</head>
<body class="wide">
<header class="bar"><a class="brand" href="/_spawngate/">spawngate</a>
<nav aria-label="Main">{dashboard}{admin}</nav>
<form class="signout" method="post" action="/_spawngate/logout"><span class="muted">{user}</span> <input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="secondary small">Sign out</button></form>
</header>
<main>
<h1>{title}</h1>
{body}
</main>
</body></html>
"#,
        title = escape(title),
        dashboard = entry("/_spawngate/", "dashboard", "Dashboard"),
        user = escape(nav.user),
        csrf = escape(nav.csrf),
    )
}

/// A duration for people: `45 s`, `12 min`, `3 h 5 min`, `2 days`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => match (secs % 3600) / 60 {
            0 => format!("{} h", secs / 3600),
            m => format!("{} h {m} min", secs / 3600),
        },
        _ => match secs / 86400 {
            1 => "1 day".to_owned(),
            d => format!("{d} days"),
        },
    }
}

/// `at` (RFC 3339) relative to now, `3 min ago` or `in 12 min`, inside a
/// `<time>` element scripts can update; `—` when unknown.
pub fn time_ago(at: Option<&str>) -> String {
    let Some((at, unix)) = at.and_then(|a| Some((a, crate::time::parse_rfc3339(a)?))) else {
        return "—".to_owned();
    };
    let delta = crate::time::unix_now() - unix;
    let text = if delta >= 0 {
        format!("{} ago", human_duration(delta))
    } else {
        format!("in {}", human_duration(-delta))
    };
    format!(
        r#"<time datetime="{}" title="{}">{text}</time>"#,
        escape(at),
        escape(at)
    )
}

/// Bytes for people (`512 MiB`, `1.5 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Shown (with status 503) while a container is still starting after the hold.
/// The page reloads itself; the reload asks forwardAuth again.
pub fn waiting(browser: bool, retry_secs: u32) -> Resp {
    if browser {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            page(
                "Starting your environment…",
                &format!(r#"<meta http-equiv="refresh" content="{retry_secs}">"#),
                "<p>Your environment is starting. This page reloads by itself and takes you there as soon as it is ready.</p>\
                 <p class=\"muted\">Usually a few seconds.</p>",
            ),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": { "code": "starting", "message": "the environment is starting; retry shortly" } }),
        )
    }
}

/// Shown when the container could not be started (Docker down, image missing…).
pub fn spawn_failed(browser: bool, message: &str) -> Resp {
    if browser {
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            page(
                "Your environment could not be started",
                r#"<meta http-equiv="refresh" content="10">"#,
                &format!(
                    "<p>{}.</p><p class=\"muted\">The problem has been logged for the administrator. This page retries by itself.</p>",
                    escape(message)
                ),
            ),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": { "code": "spawn_failed", "message": message } }),
        )
    }
}

/// Shown when the user's app itself failed (exited, or never answered): its reason
/// and, for the owner, its last output, so a broken image is diagnosed at once
/// instead of waited on. `retry_secs` is what is left of spawngate's back-off;
/// the page reloads then.
pub fn app_failed(browser: bool, failure: &AppFailure, retry_secs: u64, with_logs: bool) -> Resp {
    let logs: &[String] = if with_logs { &failure.logs } else { &[] };
    if browser {
        let output = if logs.is_empty() {
            String::new()
        } else {
            format!(
                "<p>Its last output:</p><pre>{}</pre>",
                escape(&logs.join("\n"))
            )
        };
        html(
            StatusCode::SERVICE_UNAVAILABLE,
            page(
                "Your environment could not be started",
                &format!(r#"<meta http-equiv="refresh" content="{retry_secs}">"#),
                &format!(
                    "<p>{}.</p>{output}<p class=\"muted\">spawngate tries again in {retry_secs} s; this page reloads by itself then. The administrator can start it again at once.</p>",
                    escape(&failure.reason)
                ),
            ),
        )
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": {
                "code": "app_failed",
                "message": failure.reason,
                "exit_code": failure.exit_code,
                "logs": logs,
                "retry_after_secs": retry_secs,
            } }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_failure_page_escapes_output_and_logs_are_for_the_owner_only() {
        let failure = AppFailure {
            reason: "the app exited with code 3 before answering on port 8080".into(),
            exit_code: Some(3),
            logs: vec!["<script>alert(1)</script>".into()],
        };
        let body = |resp: Resp| {
            let bytes = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
                resp.into_body(),
            ))
            .unwrap()
            .unwrap()
            .to_bytes();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let page = body(app_failed(true, &failure, 5, true));
        assert!(page.contains("code 3"), "{page}");
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains(r#"content="5""#));
        let json: serde_json::Value =
            serde_json::from_str(&body(app_failed(false, &failure, 5, false))).unwrap();
        assert_eq!(json["error"]["exit_code"], 3);
        assert_eq!(json["error"]["retry_after_secs"], 5);
        assert_eq!(json["error"]["logs"], serde_json::json!([]));
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(human_duration(42), "42 s");
        assert_eq!(human_duration(125), "2 min");
        assert_eq!(human_duration(7200), "2 h");
        assert_eq!(human_duration(3 * 3600 + 300), "3 h 5 min");
        assert_eq!(human_duration(86400 * 3), "3 days");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(10 << 20), "10.0 MiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(time_ago(None), "—");
        let past = crate::time::rfc3339(crate::time::unix_now() - 120);
        assert!(time_ago(Some(&past)).contains(">2 min ago<"));
    }

    #[test]
    fn shell_shows_the_admin_entry_to_admins_only() {
        let nav = |admin| Nav {
            user: "<bob>",
            admin,
            csrf: "t",
            current: "dashboard",
        };
        let page = shell("Home", &nav(false), "", &["dashboard.js"]);
        assert!(!page.contains("/_spawngate/admin"));
        assert!(page.contains("&lt;bob&gt;") && page.contains("dashboard.js"));
        assert!(page.contains(r#"href="/_spawngate/" aria-current="page""#));
        assert!(shell("Home", &nav(true), "", &[]).contains("/_spawngate/admin"));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert!(page("<x>", "", "").contains("&lt;x&gt; · spawngate"));
    }
}
