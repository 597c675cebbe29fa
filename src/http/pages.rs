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
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert!(page("<x>", "", "").contains("&lt;x&gt; · spawngate"));
    }
}
