//! Rendering of the HTML page and the `/whoami.json` document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hyper::HeaderMap;
use serde_json::json;

use crate::counter::Visits;

/// Everything the page and the JSON document show about one request.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    pub user: &'a str,
    pub slug: &'a str,
    pub base_path: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: BTreeMap<String, String>,
    pub hostname: &'a str,
    pub visits: Visits,
}

/// Request headers keyed by (lowercase) name, sorted, with repeated headers'
/// values joined by ", ". Values that are not valid UTF-8 are decoded lossily.
pub fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        // Shown to the user in pages; the container secret stays out of them.
        let value = if name.as_str().eq_ignore_ascii_case("x-spawngate-secret") {
            "(redacted)".into()
        } else {
            String::from_utf8_lossy(value.as_bytes())
        };
        out.entry(name.as_str().to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    out
}

/// The request environment a CGI/WSGI-style server would build from `headers` (as
/// [`header_map`] gives them): `HTTP_` plus the name upper-cased with every
/// character that is not a letter or digit turned into `_`, values of names that
/// fold together joined by ", ". Shows what such an app would read.
pub fn cgi_env(headers: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let folded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    b.to_ascii_uppercase() as char
                } else {
                    '_'
                }
            })
            .collect();
        out.entry(format!("HTTP_{folded}"))
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    out
}

/// Escapes text for use in HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

pub fn whoami_json(info: &RequestInfo<'_>) -> serde_json::Value {
    let mut doc = json!({
        "user": info.user,
        "slug": info.slug,
        "base_path": info.base_path,
        "path": info.path,
        "query": info.query,
        "method": info.method,
        "headers": info.headers,
        "cgi_env": cgi_env(&info.headers),
        "visits": info.visits.count,
        "hostname": info.hostname,
    });
    if let (Some(error), Some(map)) = (&info.visits.error, doc.as_object_mut()) {
        map.insert("visits_error".to_owned(), json!(error));
    }
    doc
}

fn row(out: &mut String, label: &str, value: &str) {
    let _ = writeln!(
        out,
        "<tr><th>{}</th><td><code>{}</code></td></tr>",
        escape(label),
        escape(value)
    );
}

pub fn html_page(info: &RequestInfo<'_>) -> String {
    let base = escape(info.base_path);
    let user = if info.user.is_empty() {
        "(no SPAWNGATE_USER set)"
    } else {
        info.user
    };
    let visits = match info.visits.count {
        Some(n) => n.to_string(),
        None => "unknown".to_owned(),
    };

    let mut out = String::with_capacity(4096);
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>spawngate example app: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ text-align: left; vertical-align: top; padding: .25rem .75rem; border-bottom: 1px solid #ddd; }}
td code {{ word-break: break-all; }}
.error {{ background: #fee; border: 1px solid #c33; padding: .5rem 1rem; }}
#ws-log {{ background: #f4f4f4; padding: .5rem; min-height: 3rem; white-space: pre-wrap; }}
</style>
</head>
<body data-base="{base}">
<h1>Hello, {title}!</h1>
<p>This container was started for you by spawngate.</p>
<table>
"#,
        title = escape(user),
        base = base,
    );
    row(&mut out, "SPAWNGATE_USER", info.user);
    row(&mut out, "SPAWNGATE_SLUG", info.slug);
    row(&mut out, "SPAWNGATE_BASE_PATH", info.base_path);
    row(&mut out, "method", info.method);
    row(&mut out, "path received", info.path);
    row(&mut out, "query", info.query);
    row(&mut out, "hostname", info.hostname);
    row(&mut out, "visits", &visits);
    out.push_str("</table>\n");

    if let Some(error) = &info.visits.error {
        let _ = writeln!(
            out,
            "<p class=\"error\">Visit counter problem: {}</p>",
            escape(error)
        );
    }

    let _ = write!(
        out,
        r#"<h2>Links</h2>
<ul>
<li><a href="{base}/">home (counts a visit)</a></li>
<li><a href="{base}/whoami.json">whoami.json (counts a visit)</a></li>
<li><a href="{base}/healthz">healthz</a></li>
</ul>
<h2>WebSocket echo</h2>
<form id="ws-form"><input id="ws-input" value="hello" size="40"> <button type="submit">send</button></form>
<pre id="ws-log"></pre>
<h2>Request headers</h2>
<table>
"#
    );
    for (name, value) in &info.headers {
        row(&mut out, name, value);
    }
    out.push_str(
        r#"</table>
<script>
(function () {
  var base = document.body.getAttribute("data-base") || "";
  var log = document.getElementById("ws-log");
  var input = document.getElementById("ws-input");
  var ws = null;
  function line(text) { log.textContent += text + "\n"; }
  function send() { ws.send(input.value); line("> " + input.value); }
  document.getElementById("ws-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    if (ws && ws.readyState === WebSocket.OPEN) { send(); return; }
    if (ws && ws.readyState === WebSocket.CONNECTING) { return; }
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + base + "/ws";
    ws = new WebSocket(url);
    ws.onopen = function () { line("connected to " + url); send(); };
    ws.onmessage = function (e) { line("< " + e.data); };
    ws.onclose = function (e) { line("closed (" + e.code + ")"); ws = null; };
    ws.onerror = function () { line("error"); };
  });
})();
</script>
</body>
</html>
"#,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn info<'a>(headers: BTreeMap<String, String>) -> RequestInfo<'a> {
        RequestInfo {
            user: "<script>alert('x')</script>",
            slug: "a&b",
            base_path: "/u-\"evil\"",
            method: "GET",
            path: "/<img src=x>",
            query: "q=\"1\"",
            headers,
            hostname: "host<1>",
            visits: Visits {
                count: Some(7),
                error: Some("disk <full>".to_owned()),
            },
        }
    }

    #[test]
    fn escapes_everything() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        let mut headers = BTreeMap::new();
        headers.insert("x-evil".to_owned(), "<b>\"hi\"</b>".to_owned());
        let page = html_page(&info(headers));
        for raw in [
            "<script>alert",
            "<img src=x>",
            "<b>",
            "host<1>",
            "disk <full>",
            "\"evil\"",
        ] {
            assert!(!page.contains(raw), "unescaped {raw:?} in page");
        }
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains(r#"href="/u-&quot;evil&quot;/whoami.json""#));
        assert!(page.contains("Visit counter problem: disk &lt;full&gt;"));
    }

    #[test]
    fn headers_are_sorted_lowercase_and_joined() {
        let mut map = HeaderMap::new();
        map.append("X-Zeta", HeaderValue::from_static("z"));
        map.append("accept", HeaderValue::from_static("a"));
        map.append("x-multi", HeaderValue::from_static("one"));
        map.append("X-Multi", HeaderValue::from_static("two"));
        let headers = header_map(&map);
        let keys: Vec<&str> = headers.keys().map(String::as_str).collect();
        assert_eq!(keys, ["accept", "x-multi", "x-zeta"]);
        assert_eq!(headers.get("x-multi").map(String::as_str), Some("one, two"));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let doc = whoami_json(&info(BTreeMap::new()));
        for key in [
            "user",
            "slug",
            "base_path",
            "path",
            "query",
            "method",
            "headers",
            "visits",
            "hostname",
        ] {
            assert!(doc.get(key).is_some(), "missing {key}");
        }
        assert_eq!(doc["visits"], json!(7));
        assert_eq!(doc["visits_error"], json!("disk <full>"));
    }
}
